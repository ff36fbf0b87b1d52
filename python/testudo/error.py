"""Exceptions raised by the testudo client; the same names and shapes as ipyparallel.error.

Every request ends with one Outcome (testudo.Outcome, include/testudo/outcome.h).
OUTCOME_EXCEPTIONS below says which exception each one raises; docs/tasks.md has the same
table with when each happens. As in ipyparallel, a result that did not succeed is a
RemoteError whose `ename` names the exception (so CompositeError gathers those of several
engines); here it is also an instance of that exception, so `except error.EngineError`,
`except error.ImpossibleDependency` or `except KeyError` catch it too. Its `outcome`
attribute holds the Outcome.

A local timeout of the waiting side (`ar.get(timeout=...)`) is not an outcome: it raises the
builtin TimeoutError, never DependencyTimeout (which is not a TimeoutError).
"""

import builtins

from ._testudo import Outcome

__all__ = [
    "TestudoError", "KernelError", "EngineError", "NoEnginesRegistered", "RemoteError",
    "CompositeError", "TimeoutError", "collect_exceptions", "TaskAborted", "TaskTimeout",
    "UnmetDependency", "ImpossibleDependency", "DependencyTimeout", "InvalidDependency",
    "TaskRejectError", "TaskLost", "ControllerError", "MessageTooLarge", "MalformedReply", "SealBroken",
    "Outcome", "OUTCOME_EXCEPTIONS", "outcome_error",
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


class TaskAborted(KernelError):
    """The task was aborted (rc.abort / ar.abort) before it ran."""


class TaskTimeout(KernelError):
    """ipyparallel's error for a task whose `timeout` passed before it could run. Here that
    is a DependencyTimeout, which is also a TaskTimeout."""


class UnmetDependency(KernelError):
    pass


class ImpossibleDependency(UnmetDependency):
    """A dependency failed, or no engine may run the task: it can never run."""


class DependencyTimeout(ImpossibleDependency, TaskTimeout):
    """The task's `timeout` passed before its dependencies were met. Also a TaskTimeout, the
    class ipyparallel raises then, so `except error.TaskTimeout` written for it catches this."""


class InvalidDependency(ImpossibleDependency):
    """An `after`/`follow` dependency names no task of yours."""


class TaskRejectError(KernelError):
    """For user code to raise on an engine that cannot run the task (as in ipyparallel); it
    comes back as a RemoteError with ename 'TaskRejectError'. testudo's `retries` run a task
    again only when its engine dies, not after this error."""


class TaskLost(KernelError):
    """The controller stopped before the task finished; it may or may not have run."""


class ControllerError(TestudoError):
    """The controller failed doing the request (its task store or trust directory)."""


class MessageTooLarge(TestudoError, ValueError):
    """The request is larger than the protocol allows; it was not sent."""


class MalformedReply(TestudoError):
    """A reply arrived that could not be decoded."""


class SealBroken(TestudoError, PermissionError):
    """End-to-end sealing did not hold: a sealed request could not be sealed for its engine
    (one this client cannot verify), or its reply was not sealed, did not open, or was sealed
    for another request -- the controller or a relay altered, replayed or forged it."""


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


# outcome -> the documented exception it raises (docs/tasks.md, "Outcomes and errors").
OUTCOME_EXCEPTIONS = {
    Outcome.PYTHON_ERROR: RemoteError,  # ename, evalue, traceback: the user's exception
    Outcome.NO_SUCH_ENGINE: IndexError,
    Outcome.ENGINE_DIED: EngineError,
    Outcome.NOT_ALLOWED: PermissionError,
    Outcome.SHUTTING_DOWN: EngineError,
    Outcome.ABORTED: TaskAborted,
    Outcome.DEPENDENCY_FAILED: ImpossibleDependency,
    Outcome.DEPENDENCY_TIMEOUT: DependencyTimeout,
    Outcome.UNREACHABLE: ImpossibleDependency,
    Outcome.NO_SUCH_TASK: KeyError,
    Outcome.LOST: TaskLost,
    Outcome.AWAITING_TRUST: PermissionError,
    Outcome.TOO_LARGE: MessageTooLarge,
    Outcome.INVALID_REQUEST: ValueError,
    Outcome.NOT_FOUND: KeyError,
    Outcome.CONTROLLER_FAILED: ControllerError,
    Outcome.CONNECTION_LOST: ConnectionError,
    Outcome.MALFORMED_REPLY: MalformedReply,
    Outcome.SEAL_BROKEN: SealBroken,
}


def _remote_class(documented):
    """The class raised for an outcome documented as `documented`: a RemoteError whose ename
    is that exception's name, and an instance of it."""

    class Remote(RemoteError, documented):
        def __init__(self, evalue, engine_info=None, outcome=None):
            RemoteError.__init__(self, documented.__name__, evalue, "", engine_info)
            self.outcome = outcome

        __str__ = RemoteError.__str__

    Remote.__name__ = Remote.__qualname__ = documented.__name__
    Remote.__module__ = __name__
    return Remote


_RAISED = {documented: _remote_class(documented)
           for documented in {*OUTCOME_EXCEPTIONS.values(), InvalidDependency} if documented is not RemoteError}

# The controller words a dependency_failed outcome for a dependency it does not know this
# way (src/controller/scheduler.cc, Scheduler::submit); ipyparallel tells that case apart as
# InvalidDependency, which is an ImpossibleDependency, so `except` clauses for either work.
_UNKNOWN_DEPENDENCY = "unknown dependency "


def outcome_error(outcome, message, engine_info=None, reply=None):
    """The exception for a request that ended with `outcome` (not OK): for PYTHON_ERROR the
    user's exception as a RemoteError (from `reply`'s ename, evalue and traceback), for every
    other outcome OUTCOME_EXCEPTIONS[outcome] as a RemoteError, `message` its evalue."""
    if outcome == Outcome.PYTHON_ERROR:
        if reply is None:
            err = RemoteError("RemoteError", message, "", engine_info)
        else:
            err = RemoteError(reply.ename, reply.evalue, reply.traceback, engine_info)
        err.outcome = outcome
        return err
    documented = OUTCOME_EXCEPTIONS.get(outcome)
    if documented is None:
        raise ValueError(f"no exception for outcome {outcome!r}")
    if outcome == Outcome.DEPENDENCY_FAILED and message.startswith(_UNKNOWN_DEPENDENCY):
        documented = InvalidDependency
    return _RAISED[documented](message, engine_info, outcome)
