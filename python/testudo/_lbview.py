"""LoadBalancedView: tasks placed by the controller's scheduler, as ipyparallel's."""

import contextlib
import time
from collections.abc import Mapping

from . import _helpers, error
from ._asyncresult import AsyncMapResult, AsyncResult
from ._view import _dumps_call

_FLAGS = ("block", "retries", "timeout", "after", "follow", "targets")
# `track` too, as ipyparallel's views take it: every result tracks its buffers here (see
# DirectView.push), so it changes nothing.
_ALL_FLAGS = (*_FLAGS, "track")


def _checked_task_id(number, given):
    """A task id as the controller numbers them (0 to 2**64 - 1), or a clear ValueError."""
    if not 0 <= number < 2**64:
        raise ValueError(f"not a testudo msg_id: {given!r} (task ids are whole numbers from 0)")
    return number


def _task_ids(deps):
    """Task ids from AsyncResults, msg_ids (str or int) or lists of them."""
    if deps is None:
        return []
    if isinstance(deps, (AsyncResult, str, int)):
        deps = [deps]
    ids = []
    for d in deps:
        if isinstance(d, AsyncResult):
            ids.extend(d._task_ids())
        elif isinstance(d, str):
            try:
                ids.append(_checked_task_id(int(d), d))
            except ValueError:
                raise ValueError(f"not a testudo msg_id: {d!r}") from None
        elif isinstance(d, int) and not isinstance(d, bool):
            ids.append(_checked_task_id(d, d))
        elif isinstance(d, (list, tuple, set)):
            ids.extend(_task_ids(list(d)))
        else:
            raise TypeError(f"dependencies are AsyncResults or msg_ids, not {type(d).__name__}")
    return list(dict.fromkeys(ids))


class LoadBalancedView:
    """Tasks go to whichever engine the controller's scheduler picks (`--scheme`, default
    least-load, with a high-water mark per engine).

    Flags (set_flags / temp_flags / keyword arguments of apply and map):
      block    wait and return results instead of AsyncResults (default: the client's
               `block` when the view is made)
      retries  run a task again elsewhere if its engine dies, this many times (default 0)
      timeout  seconds the dependencies may take to be met (default: no limit)
      after    AsyncResults / msg_ids that must succeed before the task runs
      follow   ... and on whose engine it must run
      targets  engines the scheduler may use (default: all)
      track    accepted; every result here says when its buffers were sent (ar.sent)
    """

    def __init__(self, client, targets=None, **flags):
        self.client = client
        self.block = client.block
        self.retries = 0
        self.timeout = None
        self.after = None
        self.follow = None
        self.targets = targets
        self.track = False
        self.set_flags(**flags)

    def __repr__(self):
        return f"<LoadBalancedView {self.targets if self.targets is not None else 'None'}>"

    @staticmethod
    def _check_flags(kwargs):
        for key, value in kwargs.items():
            if key not in _ALL_FLAGS:
                raise KeyError(f"invalid flag {key!r}; valid flags: {', '.join(_ALL_FLAGS)}")
            if key == "retries" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError("retries must be a non-negative int")
            if key == "timeout" and value is not None and value < 0:
                raise ValueError("timeout must be None or >= 0")

    def set_flags(self, **kwargs):
        self._check_flags(kwargs)  # all or nothing: a bad flag changes none
        for key, value in kwargs.items():
            setattr(self, key, value)

    @contextlib.contextmanager
    def temp_flags(self, **kwargs):
        self._check_flags(kwargs)  # an unknown flag is a KeyError, not an AttributeError
        saved = {k: getattr(self, k) for k in kwargs}
        self.set_flags(**kwargs)
        try:
            yield
        finally:
            self.set_flags(**saved)

    def _allowed(self, targets):
        targets = self.targets if targets is None else targets
        return [] if targets is None else self.client._build_targets(targets)

    def _submit(self, f, args, kwargs, flags):
        """(the native request, whether to block) for f(*args, **kwargs) under these flags
        (the view's where not given)."""
        if flags:
            block, retries, timeout, after, follow, targets = (flags.get(k, getattr(self, k)) for k in _FLAGS)
        else:
            block, retries, timeout, after, follow, targets = (self.block, self.retries, self.timeout, self.after,
                                                                self.follow, self.targets)
        native = self.client._native
        if targets is None and after is None and follow is None and not retries and not timeout:
            return native.apply_balanced([], _dumps_call(f, args, kwargs)), block  # the common case
        child = native.apply_balanced(
            self._allowed(targets), _dumps_call(f, args, kwargs), int(retries or 0), float(timeout or 0),
            _task_ids(after), _task_ids(follow))
        return child, block

    def _apply(self, f, args, kwargs, **flags):
        if not callable(f):
            raise TypeError(f"{f!r} is not callable")
        child, block = self._submit(f, args, kwargs, flags)
        return AsyncResult(self.client, (child,), getattr(f, "__name__", "apply"), "pickle", single=True), block

    def apply(self, __testudo_f, *args, **kwargs):
        """f(*args, **kwargs) on one engine; blocks according to `view.block`."""
        ar, block = self._apply(__testudo_f, args, kwargs)
        return ar.get() if block else ar

    def apply_async(self, __testudo_f, *args, **kwargs):
        return self._apply(__testudo_f, args, kwargs)[0]

    def apply_sync(self, __testudo_f, *args, **kwargs):
        return self._apply(__testudo_f, args, kwargs)[0].get()

    def map(self, f, *sequences, block=None, chunksize=1, ordered=True, **flags):
        """Parallel map: one task per `chunksize` items, each placed by the scheduler."""
        if not sequences:
            raise ValueError("map needs at least one sequence")
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be a positive int")
        flags.pop("track", None)
        unknown = [k for k in flags if k not in _FLAGS]
        if unknown:
            raise TypeError(f"map() got an unexpected keyword argument {unknown[0]!r}")
        self._check_flags(flags)
        # Sliceable sequences are chunked in place; anything else (generators, sets, and
        # mappings, whose __getitem__ is by key) is iterated as Python's map() would.
        seqs = [s if hasattr(s, "__getitem__") and hasattr(s, "__len__") and not isinstance(s, Mapping)
                else list(s) for s in sequences]
        n = min(len(s) for s in seqs)
        children = []
        for start in range(0, n, chunksize):
            chunk = [s[start:min(start + chunksize, n)] for s in seqs]
            child, _ = self._submit(_helpers.map_chunk, (f, *chunk), {}, flags)
            children.append(child)
        ar = _LoadBalancedMapResult(self.client, children, getattr(f, "__name__", "map"), "pickle", ordered=ordered)
        block = self.block if block is None else block
        return ar.get() if block else ar

    def map_async(self, f, *sequences, **kwargs):
        kwargs["block"] = False
        return self.map(f, *sequences, **kwargs)

    def map_sync(self, f, *sequences, **kwargs):
        kwargs["block"] = True
        return self.map(f, *sequences, **kwargs)

    def abort(self, jobs=None, targets=None, block=None):
        """Abort queued tasks (default: every outstanding one of this client)."""
        return self.client.abort(jobs)

    def wait(self, jobs=None, timeout=-1):
        return self.client.wait(jobs, timeout)


class _LoadBalancedMapResult(AsyncMapResult):
    """A map over scheduler-placed chunks; iterating an unordered one yields as chunks finish."""

    def __init__(self, client, children, fname, kind, ordered=True):
        super().__init__(client, children, fname, kind)
        self._ordered = ordered

    def __iter__(self):
        if self._ordered:
            yield from self.get()
            return
        pending = list(self._children)
        while pending:
            done = [c for c in pending if c.ready()]
            if not done:
                pending[0].wait(0.01)
                continue
            for child in done:
                pending.remove(child)
                for reply in child.replies():
                    value = self._value(reply.value, (reply.engine_id, reply.task_id)) if reply.ok else self._error(reply)
                    if isinstance(value, Exception):
                        raise value
                    yield from value
        time.sleep(0)
