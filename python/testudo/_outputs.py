"""Showing what engines printed: a finished result's outputs republished as ipyparallel does
(display_outputs, %px), and wait_interactive's progress bar with the output lines that arrive
while a request runs."""

import sys
import time

from . import _execute_reply


class StreamPrinter:
    """ipyparallel's stream republishing: a header ('[stdout:0] ') on its own line before the
    text, repeated only when it changes, and a line break before a header when the previous
    text did not end with one."""

    def __init__(self):
        self._last_prefix = ""
        self._trailing_newline = True

    def show(self, text, prefix="", file=None):
        if not text:
            return
        file = sys.stdout if file is None else file
        if prefix:
            if prefix == self._last_prefix:
                prefix = ""
            else:
                self._last_prefix = prefix
        pre = "\n" if prefix and not self._trailing_newline else ""
        sep = "\n" if prefix else ""
        self._trailing_newline = text.endswith("\n")
        print(f"{pre}{prefix}{sep}{text}", file=file, end="")


def _display(value):
    from IPython.display import display
    display(value)


def display_outputs(ar, groupby, result_only):
    """AsyncResult.display_outputs for a finished `ar`."""
    if groupby not in ("type", "engine", "order"):
        raise ValueError(f"groupby must be one of 'type', 'engine', 'order', not {groupby!r}")
    printer = StreamPrinter()
    ip = _execute_reply._get_ipython()
    md = ar._metadata_list()
    if ar._single:
        if not result_only:
            printer.show(md[0]["stdout"])
            printer.show(md[0]["stderr"], file=sys.stderr)
        if ip is not None and md[0]["execute_result"] is not None:
            _display(ar._raw[0])
        return
    if groupby == "engine":
        for m, value in zip(md, ar._raw):
            eid = m["engine_id"]
            if not result_only:
                printer.show(m["stdout"], f"[stdout:{eid}] ")
                printer.show(m["stderr"], f"[stderr:{eid}] ", file=sys.stderr)
            if ip is not None and m["execute_result"] is not None:
                print(f"[output:{eid}]")
                _display(value)
        return
    if not result_only:
        for m in md:
            printer.show(m["stdout"], f"[stdout:{m['engine_id']}] ")
        for m in md:
            printer.show(m["stderr"], f"[stderr:{m['engine_id']}] ", file=sys.stderr)
    if ip is not None:
        for m, value in zip(md, ar._raw):
            if m["execute_result"] is not None:
                _display(value)


def wait_interactive(ar, interval, deadline, file, widget):
    """AsyncResult.wait_interactive until `deadline` (time.monotonic())."""
    from ._progress import progress
    bar = progress(len(ar), ar._fname, file=file, widget=widget)
    out = sys.stdout if file is None else file
    bar.update(ar.progress, ar.elapsed)
    while not ar.ready() and time.monotonic() < deadline:
        ar.wait(min(interval, max(0.0, deadline - time.monotonic())))
        chunks = ar.take_live_output()
        if chunks:
            bar.clear()
            for engine, stream, text in chunks:
                for line in text.splitlines():
                    out.write(f"[{stream}:{engine}] {line}\n")
            out.flush()
        bar.update(ar.progress, ar.elapsed)
    bar.close(ar.progress, ar.elapsed, ar.ready())
