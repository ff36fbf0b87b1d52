"""ExecuteReply: one engine's answer to execute(), as ipyparallel's (its attributes, repr and
rich display), and the decoder of the reply segment an engine sends for it."""

import json
import sys

from . import error

# Rich types ipyparallel's ExecuteReply shows through IPython.utils.capture.RichOutput.
_RICH = {
    "_repr_html_": "text/html",
    "_repr_latex_": "text/latex",
    "_repr_json_": "application/json",
    "_repr_javascript_": "application/javascript",
    "_repr_png_": "image/png",
    "_repr_jpeg_": "image/jpeg",
    "_repr_svg_": "image/svg+xml",
    "_repr_markdown_": "text/markdown",
}


def decode(segments):
    """(execution_count, execute_result or None) from an execute reply's segments: one JSON
    document from the engine, {"execution_count": n, "data": {mime: value}, "metadata": {}}.
    Raises MalformedReply for anything else (bytes from the network are checked, never trusted)."""
    if len(segments) != 1:
        raise error.MalformedReply(f"an execute reply has one segment, not {len(segments)}")
    try:
        doc = json.loads(bytes(segments[0]))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise error.MalformedReply(f"an execute reply is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise error.MalformedReply("an execute reply is not a JSON object")
    count = doc.get("execution_count")
    if type(count) is not int or count < 0:
        raise error.MalformedReply("an execute reply has no valid execution_count")
    if "data" not in doc:
        return count, None
    data, metadata = doc["data"], doc.get("metadata", {})
    if not isinstance(data, dict) or not isinstance(metadata, dict):
        raise error.MalformedReply("an execute reply's data and metadata must be JSON objects")
    return count, {"data": data, "metadata": metadata, "execution_count": count}


class ExecuteReply:
    """What execute() returns per engine, as ipyparallel's: `execution_count`, `metadata` (the
    engine's metadata dict: engine_id, stdout, stderr, execute_result...), whose keys are
    also items and attributes (reply.stdout, reply['engine_id']), `data` (mime type -> value
    of the displayed result), and IPython's rich display (`Out[engine:count]: ...`)."""

    def __init__(self, msg_id, content, metadata):
        self.msg_id = msg_id
        self._content = content
        self.execution_count = content["execution_count"]
        self.metadata = metadata

    @property
    def source(self):
        execute_result = self.metadata["execute_result"]
        if execute_result:
            return execute_result.get("source", "")
        return None

    @property
    def data(self):
        execute_result = self.metadata["execute_result"]
        return execute_result.get("data", {}) if execute_result else {}

    @property
    def _metadata(self):
        execute_result = self.metadata["execute_result"]
        return execute_result.get("metadata", {}) if execute_result else {}

    def display(self):
        from IPython.display import publish_display_data
        publish_display_data(self.data, self._metadata)

    def _repr_mime_(self, mime):
        if mime not in self.data:
            return None
        data = self.data[mime]
        if mime in self._metadata:
            return data, self._metadata[mime]
        return data

    def _repr_mimebundle_(self, *args, **kwargs):
        # The displayed value's own metadata (per mime type, as Jupyter reads it), not the
        # engine's: that holds floats and exceptions a notebook has no use for.
        data = self.data
        if "text/plain" in data:
            data = data.copy()
            data["text/plain"] = self._plaintext()
        return data, self._metadata

    def __getitem__(self, key):
        return self.metadata[key]

    def __getattr__(self, key):
        # Through __dict__: while unpickling or copying there is no metadata yet.
        metadata = self.__dict__.get("metadata")
        if key.startswith("__") or metadata is None or key not in metadata:
            raise AttributeError(key)
        return metadata[key]

    def __repr__(self):
        execute_result = self.metadata["execute_result"] or {"data": {}}
        text_out = execute_result["data"].get("text/plain", "")
        if len(text_out) > 32:
            text_out = text_out[:29] + "..."
        return "<ExecuteReply[%i]: %s>" % (self.execution_count, text_out)

    def _plaintext(self):
        execute_result = self.metadata["execute_result"] or {"data": {}}
        text_out = execute_result["data"].get("text/plain", "")
        if not text_out:
            return ""
        out = normal = ""
        ip = _get_ipython()
        if ip is not None and ip.colors != "NoColor":
            from IPython.utils.coloransi import TermColors
            out, normal = TermColors.Red, TermColors.Normal
        if "\n" in text_out and not text_out.startswith("\n"):
            text_out = "\n" + text_out  # a multi-line repr starts on its own line
        return "".join([out, "Out[%i:%i]: " % (self.metadata["engine_id"], self.execution_count), normal, text_out])

    def _repr_pretty_(self, p, cycle):
        p.text(self._plaintext())


def _rich(mime):
    def method(self):
        return self._repr_mime_(mime)
    return method


for _name, _mime in _RICH.items():
    setattr(ExecuteReply, _name, _rich(_mime))


def _get_ipython():
    """The running IPython shell, or None, without importing IPython when it is not loaded."""
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython
    return get_ipython()
