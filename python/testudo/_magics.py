"""IPython magics: %px, %%px, %autopx, %pxresult, %pxconfig — as ipyparallel's.

    rc = testudo.Client(); rc.activate()     # or: %load_ext testudo
    %px import numpy as np
    %%px --targets ::2 --noblock
    a = np.ones(3)
"""

import ast
import shlex

from IPython.core.magic import Magics, magics_class

from . import error


def _parse_targets(text):
    text = text.strip()
    if text == "all":
        return "all"
    if ":" in text:
        parts = [int(p) if p else None for p in text.split(":")]
        return slice(*parts)
    value = ast.literal_eval(text)
    return list(value) if isinstance(value, (list, tuple)) else value


@magics_class
class ParallelMagics(Magics):
    """Magics bound to one DirectView, with an optional name suffix."""

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

    def _options(self, line):
        """Splits '--targets ::2 --noblock code...' into options and code."""
        words = shlex.split(line, posix=False) if line.strip().startswith("--") else []
        targets, block, consumed = None, None, 0
        i = 0
        while i < len(words) and words[i].startswith("--"):
            w = words[i]
            if w in ("-t", "--targets") and i + 1 < len(words):
                targets = _parse_targets(words[i + 1])
                i += 2
            elif w.startswith("--targets="):
                targets = _parse_targets(w.split("=", 1)[1])
                i += 1
            elif w == "--block":
                block, i = True, i + 1
            elif w == "--noblock":
                block, i = False, i + 1
            else:
                raise error.TestudoError(f"unknown %px option {w}; valid: --targets T, --block, --noblock")
        consumed = sum(len(w) + 1 for w in words[:i])
        return targets, block, line[consumed:] if words else line

    def px(self, line="", cell=None):
        """Run code on the engines: %px code, or %%px [--targets T] [--block|--noblock] above a cell."""
        targets, block, rest = self._options(line)
        code = cell if cell is not None else rest
        return self._run(code, targets, block)

    def _run(self, code, targets=None, block=None):
        block = self.view.block if block is None else block
        ar = self.view.execute(code, silent=False, targets=targets, block=False)
        self.last_result = ar
        if not block:
            return ar
        try:
            ar.get()
        except error.RemoteError:
            # As ipyparallel: the remote error is raised, so IPython shows it (through
            # _render_traceback_) and marks the cell failed; outputs so far come first.
            ar.display_outputs()
            raise
        ar.display_outputs()  # streams, then each execute result as Out[engine:count]
        return None

    def pxresult(self, line=""):
        """Show the outputs of the last %px run."""
        if self.last_result is None:
            raise error.TestudoError("no %px result yet")
        self.last_result.wait()
        self.last_result.display_outputs()

    def pxconfig(self, line=""):
        """%pxconfig [--targets T] [--block|--noblock]: change the defaults of %px."""
        targets, block, _ = self._options(line)
        if targets is not None:
            self.view.targets = targets
        if block is not None:
            self.view.block = block

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
