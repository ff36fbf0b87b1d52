"""Exceptions raised by the testudo client; the same names and shapes as ipyparallel.error."""

import builtins

__all__ = [
    "TestudoError", "KernelError", "EngineError", "NoEnginesRegistered", "RemoteError",
    "CompositeError", "TimeoutError", "collect_exceptions",
]

# ipyparallel re-exports the builtin; so do we, so `except TimeoutError` works either way.
TimeoutError = builtins.TimeoutError


class TestudoError(Exception):
    """Base class of testudo's own errors."""


class KernelError(TestudoError):
    pass


class EngineError(KernelError):
    """An engine died or disconnected while running a request."""


class NoEnginesRegistered(KernelError):
    """No engines are connected to the controller (yet)."""

    def __str__(self):
        return "this operation needs engines; none are registered (start some with `testudo cluster start -n N`)"


class RemoteError(KernelError):
    """An exception raised by user code on an engine: type name, message and traceback text."""

    ename = None
    evalue = None
    traceback = None
    engine_info = None

    def __init__(self, ename, evalue, traceback, engine_info=None):
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_info = engine_info or {}
        self.args = (ename, evalue)

    def __repr__(self):
        engine_id = self.engine_info.get("engine_id", " ")
        return f"<Remote[{engine_id}]:{self.ename}({self.evalue})>"

    def __str__(self):
        return f"{self.ename}({self.evalue})"

    def render_traceback(self):
        """The remote traceback as a list of lines."""
        return (self.traceback or "No traceback available").splitlines()

    def _render_traceback_(self):
        # IPython shows this instead of the local traceback.
        return self.render_traceback()

    def print_traceback(self, excid=None):
        print("\n".join(self.render_traceback()))


class CompositeError(RemoteError):
    """Errors from several engines. `elist` holds (ename, evalue, traceback, engine_info)."""

    tb_limit = 4  # how many tracebacks str() and render_traceback() show

    def __init__(self, message, elist):
        Exception.__init__(self, message, elist)
        self.msg = message
        self.elist = elist
        self.args = [e[0] for e in elist]
        self.ename = "CompositeError"
        self.evalue = message
        self.traceback = None
        self.engine_info = {}

    @staticmethod
    def _engine_str(ei):
        if not ei:
            return "[Engine Exception]"
        return f"[{ei.get('engine_id')}:{ei.get('method')}]: "

    def __str__(self):
        s = str(self.msg)
        for en, ev, _etb, ei in self.elist[: self.tb_limit]:
            s += "\n" + self._engine_str(ei) + en + ": " + str(ev)
        if len(self.elist) > self.tb_limit:
            s += f"\n.... {len(self.elist) - self.tb_limit} more exceptions ..."
        return s

    def __repr__(self):
        return f"CompositeError({len(self.elist)})"

    def render_traceback(self, excid=None):
        lines = []
        chosen = self.elist[: self.tb_limit] if excid is None else [self._pick(excid)]
        for _en, _ev, etb, ei in chosen:
            lines.append(self._engine_str(ei))
            lines.extend((etb or "No traceback available").splitlines())
            if excid is None:
                lines.append("")
        if excid is None and len(self.elist) > self.tb_limit:
            lines.append(f"... {len(self.elist) - self.tb_limit} more exceptions ...")
        return lines

    def print_traceback(self, excid=None):
        print("\n".join(self.render_traceback(excid)))

    def _pick(self, excid):
        try:
            return self.elist[excid]
        except IndexError:
            raise IndexError(f"an exception with index {excid} does not exist") from None

    def raise_exception(self, excid=0):
        en, ev, etb, ei = self._pick(excid)
        raise RemoteError(en, ev, etb, ei)


def collect_exceptions(results, method="unspecified"):
    """Raise CompositeError if any of `results` is a RemoteError; else return them."""
    elist = []
    for r in results:
        if isinstance(r, CompositeError):
            elist.extend(r.elist)
        elif isinstance(r, RemoteError):
            elist.append((r.ename, r.evalue, r.traceback, r.engine_info))
    if elist:
        raise CompositeError(f"one or more exceptions from call to method: {method}", elist)
    return results
