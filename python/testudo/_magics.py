"""IPython magics: %px, %%px, %autopx, %pxresult, %pxconfig — as ipyparallel's.

    rc = testudo.Client(); rc.activate()     # or: %load_ext testudo
    %px import numpy as np
    %%px --targets ::2 --noblock
    a = np.ones(3)
"""

import ast
import shlex
import time

from IPython.core.magic import Magics, magics_class

from . import error
from ._outputs import StreamPrinter
from ._progress import progress

_GROUPINGS = ("type", "engine", "order")

# Options and what they set: (dest, value), or (dest, None) for an option taking a value.
_FLAGS = {
    "-t": ("targets", None), "--targets": ("targets", None),
    "-b": ("block", True), "--block": ("block", True),
    "-a": ("block", False), "--noblock": ("block", False),
    "--stream": ("stream", True), "--no-stream": ("stream", False),
    "--local": ("local", True),
    "--verbose": ("verbose", True), "--no-verbose": ("verbose", False),
    "--progress-after": ("progress_after", None),
    "-r": ("groupby", "order"), "-e": ("groupby", "engine"), "--group-outputs": ("groupby", None),
    "-o": ("save_name", None), "--out": ("save_name", None),
}
# Which options each magic takes, as ipyparallel's exec_args / output_args.
_EXEC = ("targets", "block", "stream", "local", "verbose", "progress_after")
_OUTPUT = ("groupby", "save_name")


def _parse_targets(text):
    text = text.strip()
    if text == "all":
        return "all"
    if ":" in text:
        parts = [int(p) if p else None for p in text.split(":")]
        return slice(*parts)
    value = ast.literal_eval(text)
    return list(value) if isinstance(value, (list, tuple)) else value


def _option_value(dest, text):
    if dest == "targets":
        return _parse_targets(text)
    if dest == "progress_after":
        try:
            return float(text)
        except ValueError:
            raise error.TestudoError(f"--progress-after takes seconds, not {text!r}") from None
    if dest == "groupby" and text not in _GROUPINGS:
        raise error.TestudoError(f"--group-outputs takes one of {', '.join(_GROUPINGS)}, not {text!r}")
    return text


def _parse(line, allowed):
    """Splits '--targets ::2 --noblock code...' into ({dest: value}, the code after the options).
    Options come first; a word starting with '--' that is not one of `allowed` is an error, a
    single '-' word that is not an option starts the code (`%px -x` negates x)."""
    words = shlex.split(line, posix=False) if line.lstrip().startswith("-") else []
    options = {}
    i = 0
    while i < len(words) and words[i].startswith("-"):
        word, _, inline = words[i].partition("=")
        flag = _FLAGS.get(word)
        if flag is None or flag[0] not in allowed:
            if word.startswith("--") or (flag is not None and words[i] == word):
                valid = ", ".join(w for w, (d, _) in _FLAGS.items() if d in allowed and w.startswith("--"))
                raise error.TestudoError(f"unknown %px option {word}; valid: {valid}")
            break
        dest, value = flag
        if value is not None:
            options[dest] = value
            i += 1
        elif inline or "=" in words[i]:
            options[dest] = _option_value(dest, inline)
            i += 1
        elif i + 1 < len(words):
            options[dest] = _option_value(dest, words[i + 1])
            i += 2
        else:
            raise error.TestudoError(f"%px option {word} needs a value")
    if not i:
        return options, line
    # shlex keeps quotes with posix=False, so each word is the line's own text: the code starts
    # after the last option's word.
    pos = 0
    for w in words[:i]:
        pos = line.index(w, pos) + len(w)
    return options, line[pos:].lstrip()


@magics_class
class ParallelMagics(Magics):
    """Magics bound to one DirectView, with an optional name suffix. Not thread-safe: IPython
    runs them on its one thread."""

    # ipyparallel's defaults, changed by %pxconfig: no "Parallel execution on engine(s)" line,
    # a progress bar once a blocking %px has run for 2 s. Output is shown once done, grouped
    # (ipyparallel streams it by default: --stream or %pxconfig --stream does that here).
    verbose = False
    stream_output = False
    progress_after_seconds = 2.0

    def __init__(self, shell, view, suffix=""):
        self.view = view
        self.suffix = suffix
        self.last_result = None
        self.autopx = False
        self._transformer = None
        super().__init__(shell)
        # Registered under suffixed names (e.g. %px2) as ipyparallel does.
        for kind, table in (("line", {"px": self.px, "pxresult": self.pxresult, "pxconfig": self.pxconfig,
                                      "autopx": self.autopx_magic}),
                            ("cell", {"px": self.px})):
            for name, fn in table.items():
                self.magics[kind][name + suffix] = fn

    def px(self, line="", cell=None):
        """Run code on the engines: %px [options] code, or %%px [options] above a cell.

        Options (as ipyparallel's): -t/--targets T (not changing the default), -b/--block,
        -a/--noblock, --stream/--no-stream (show output as it is written), --local (run the
        cell here too), --verbose/--no-verbose, --progress-after SECONDS (-1: never),
        --group-outputs=type|engine|order (-r: order, -e: engine), -o/--out NAME (store the
        AsyncResult in NAME)."""
        options, rest = _parse(line, _EXEC + _OUTPUT)
        code = cell if cell is not None else rest
        return self._run(code, **options)

    def _run(self, code, targets=None, block=None, stream=None, local=False, verbose=None, progress_after=None,
             groupby="type", save_name=None):
        block = self.view.block if block is None else block
        stream = self.stream_output if stream is None else stream
        progress_after = self.progress_after_seconds if progress_after is None else progress_after
        if self.verbose if verbose is None else verbose:
            # --local submits without blocking and waits after the local run, as ipyparallel.
            kind = "Parallel" if block and not local else "Async parallel"
            print(f"{kind} execution on engine(s): {_describe(self.view.targets if targets is None else targets)}")
        ar = self.view.execute(code, silent=False, targets=targets, block=False)
        self.last_result = ar
        if save_name:
            self.shell.user_ns[save_name] = ar
        if local:
            self.shell.run_cell(code)
        if not block:
            return ar
        streamed = self._wait(ar, stream, progress_after)
        try:
            ar.get()
        except error.RemoteError:
            # As ipyparallel: the remote error is raised, so IPython shows it (through
            # _render_traceback_) and marks the cell failed; outputs so far come first.
            self._show(ar, streamed, groupby)
            raise
        self._show(ar, streamed, groupby)  # streams, then each execute result as Out[engine:count]
        return None

    def _wait(self, ar, stream, progress_after):
        """Waits for `ar`: with `stream`, printing output as it arrives ('[stdout:0] ...');
        after `progress_after` seconds (not when negative), under a progress bar. Returns the
        printer and what it printed, {(engine, stream name): text}, or None without `stream`."""
        if not stream and progress_after < 0:
            ar.wait()
            return None
        printer, printed = StreamPrinter(), {}
        bar = None
        start = time.monotonic()
        while not ar.wait(0.05 if stream or bar is not None else max(0.0, start + progress_after - time.monotonic())):
            if stream:
                chunks = ar.take_live_output()
                if chunks and bar is not None:
                    bar.clear()
                for engine, name, text in chunks:
                    printer.show(text, f"[{name}:{engine}] ", file=_stream_file(name))
                    printed[engine, name] = printed.get((engine, name), "") + text
            if bar is None and 0 <= progress_after <= time.monotonic() - start:
                bar = progress(len(ar), "%px")
            if bar is not None:
                bar.update(ar.progress, ar.elapsed)
        if bar is not None:
            bar.close(ar.progress, ar.elapsed, True)
        return (printer, printed) if stream else None

    def _show(self, ar, streamed, groupby):
        if streamed is None:
            ar.display_outputs(groupby)
            return
        # What the engines wrote that had not arrived as it was written: the rest of each
        # engine's whole output, then the execute results.
        printer, printed = streamed
        metadata = ar.metadata if isinstance(ar.metadata, list) else [ar.metadata]
        for m in metadata:
            for name in ("stdout", "stderr"):
                whole, shown = m[name], printed.get((m["engine_id"], name), "")
                rest = whole[len(shown):] if whole.startswith(shown) else ""
                printer.show(rest, f"[{name}:{m['engine_id']}] ", file=_stream_file(name))
        ar.display_outputs(groupby, result_only=True)

    def pxresult(self, line=""):
        """Show the outputs of the last %px run: %pxresult [--group-outputs=type|engine|order]
        [-o/--out NAME]."""
        options, _ = _parse(line, _OUTPUT)
        if self.last_result is None:
            raise error.TestudoError("no %px result yet")
        if options.get("save_name"):
            self.shell.user_ns[options["save_name"]] = self.last_result
        self.last_result.wait()
        self.last_result.display_outputs(options.get("groupby", "type"))

    def pxconfig(self, line=""):
        """%pxconfig [-t/--targets T] [--block|--noblock] [--stream|--no-stream]
        [--verbose|--no-verbose] [--progress-after SECONDS]: change the defaults of %px."""
        options, _ = _parse(line, _EXEC)
        targets = options.get("targets")
        if targets is not None:
            if isinstance(targets, slice):
                targets = self.view.client.ids[targets]  # as ipyparallel: the engines there now
            self.view.targets = targets
        if options.get("block") is not None:
            self.view.block = options["block"]
        if options.get("verbose") is not None:
            self.verbose = options["verbose"]
        if options.get("stream") is not None:
            self.stream_output = options["stream"]
        if options.get("progress_after") is not None:
            self.progress_after_seconds = options["progress_after"]

    def autopx_magic(self, line=""):
        """Toggle: send every following cell to the engines until %autopx again."""
        if self.autopx:
            self.shell.input_transformers_post.remove(self._transformer)
            self.autopx = False
            print("%autopx disabled")
            return
        name = "autopx" + self.suffix

        def transformer(lines):
            source = "".join(lines)
            stripped = source.strip()
            if stripped in (f"%{name}", f"get_ipython().run_line_magic('{name}', '')"):
                return lines
            return [f"get_ipython().run_cell_magic('px{self.suffix}', '', {source!r})\n"]

        self._transformer = transformer
        self.shell.input_transformers_post.append(transformer)
        self.autopx = True
        print("%autopx enabled")


def _describe(targets):
    """Targets as ipyparallel's verbose line shows them: a long list shortened."""
    if isinstance(targets, list) and len(targets) > 10:
        return str(targets[:4])[:-1] + ", ..., " + str(targets[-4:])[1:]
    return str(targets)


def _stream_file(name):
    import sys
    return sys.stderr if name == "stderr" else sys.stdout


def activate(view, suffix=""):
    from IPython import get_ipython

    ip = get_ipython()
    if ip is None:
        raise RuntimeError("activate() needs a running IPython (a notebook or the ipython shell)")
    magics = ParallelMagics(ip, view, suffix)
    ip.magics_manager.register(magics)
    return magics


def load_ipython_extension(ipython):
    from ._client import Client

    client = Client()
    client.activate()
