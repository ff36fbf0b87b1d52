"""LoadBalancedView: tasks placed by the controller's scheduler, as ipyparallel's."""

import concurrent.futures
import contextlib
import time
from collections.abc import Mapping

from . import _helpers, error
from ._dependency import Dependency, dependent
from ._asyncresult import AsyncMapResult, AsyncResult, _seconds
from ._history import Request
from ._reference import Reference
from ._view import _dumps_call
from ._viewbase import ViewCommon, recorded

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


def _rule(deps):
    """(all, success, failure) of an after/follow: a Dependency's, else every task succeeded."""
    if isinstance(deps, Dependency):
        return (bool(deps.all), bool(deps.success), bool(deps.failure))
    return (True, True, False)


class LoadBalancedView(ViewCommon):
    """Tasks go to whichever engine the controller's scheduler picks (`--scheme`, default
    least-load, with a high-water mark per engine).

    Flags (set_flags / temp_flags / keyword arguments of apply and map):
      block    wait and return results instead of AsyncResults (default: the client's
               `block` when the view is made)
      retries  run a task again elsewhere if its engine dies, this many times (default 0)
      timeout  seconds the dependencies may take to be met (default: no limit)
      after    AsyncResults / msg_ids that must succeed before the task runs (a Dependency:
               all or any of them, counting successes and/or failures, as it says)
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

    def _submit(self, f, args, kwargs, flags, keep=False, dependent_f=None):
        """(the native request, whether to block, the Request for resubmit if `keep`, and for a
        `dependent_f` a function sending it again to other engines) for f(*args, **kwargs)
        under these flags (the view's where not given)."""
        if flags:
            block, retries, timeout, after, follow, targets = (flags.get(k, getattr(self, k)) for k in _FLAGS)
        else:
            block, retries, timeout, after, follow, targets = (self.block, self.retries, self.timeout, self.after,
                                                                self.follow, self.targets)
        native = self.client._native
        segments = _dumps_call(f, args, kwargs)
        if targets is None and after is None and follow is None and not retries and not timeout \
                and dependent_f is None:
            allowed = []
            child = native.apply_balanced(allowed, segments)  # the common case
        else:
            allowed = self._allowed(targets)
            options = (int(retries or 0), float(timeout or 0), _task_ids(after), _task_ids(follow), _rule(after),
                       _rule(follow))
            child = native.apply_balanced(allowed, segments, *options)
        request = again = None
        if keep:
            # Sent again without its dependencies: they were met when it ran.
            request = Request.of("apply_balanced", (allowed, segments), "pickle", getattr(f, "__name__", "apply"),
                                 segments)
        if dependent_f is not None:
            def again(engines):
                return native.apply_balanced(engines, segments, *options)
            again.allowed = allowed
        return child, block, request, again

    @recorded
    def _apply(self, f, args, kwargs, **flags):
        if not callable(f) and not isinstance(f, Reference):  # a Reference: the engine's function
            raise TypeError(f"{f!r} is not callable")
        is_dependent = isinstance(f, dependent)
        child, block, request, again = self._submit(f, args, kwargs, flags, keep=True,
                                                    dependent_f=f if is_dependent else None)
        cls = _DependentResult if is_dependent else AsyncResult
        ar = cls(self.client, (child,), getattr(f, "__name__", "apply"), "pickle", single=True, resend=[request],
                 balanced=True)
        if is_dependent:
            ar._scheduling([again])
        return ar, block

    def apply(self, __testudo_f, *args, **kwargs):
        """f(*args, **kwargs) on one engine; blocks according to `view.block`."""
        ar, block = self._apply(__testudo_f, args, kwargs)
        return ar.get() if block else ar

    def apply_async(self, __testudo_f, *args, **kwargs):
        return self._apply(__testudo_f, args, kwargs)[0]

    def apply_sync(self, __testudo_f, *args, **kwargs):
        return self._apply(__testudo_f, args, kwargs)[0].get()

    def map(self, f, *sequences, block=None, chunksize=1, ordered=True, return_exceptions=False, **flags):
        """Parallel map: one task per `chunksize` items, each placed by the scheduler. With
        `return_exceptions`, a failed chunk's RemoteError is in the result in its place."""
        if not sequences:
            raise ValueError("map needs at least one sequence")
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be a positive int")
        flags.pop("track", None)
        unknown = [k for k in flags if k not in _FLAGS]
        if unknown:
            raise TypeError(f"map() got an unexpected keyword argument {unknown[0]!r}")
        self._check_flags(flags)
        ar = self._map(f, sequences, ordered=ordered, chunksize=chunksize, flags=flags)
        ar._return_exceptions = bool(return_exceptions)
        block = self.block if block is None else block
        return ar.get() if block else ar

    @recorded
    def _map(self, f, sequences, call=_helpers.map_chunk, fname=None, ordered=True, chunksize=1, flags=None):
        """One task per `chunksize` items, each running call(f, *chunks); also the engine of
        ParallelFunction (call_on_partition: f once per chunk)."""
        if not sequences:
            raise ValueError("map needs at least one sequence")
        # Sliceable sequences are chunked in place; anything else (generators, sets, and
        # mappings, whose __getitem__ is by key, and AsyncResults, whose len() counts engines)
        # is iterated as Python's map() would.
        seqs = [s if hasattr(s, "__getitem__") and hasattr(s, "__len__") and not isinstance(s, (Mapping, AsyncResult))
                else list(s) for s in sequences]
        n = min(len(s) for s in seqs)
        children, agains = [], []
        is_dependent = isinstance(f, dependent)
        for start in range(0, n, chunksize):
            chunk = [s[start:min(start + chunksize, n)] for s in seqs]
            child, _, _, again = self._submit(call, (f, *chunk), {}, flags or {},
                                              dependent_f=f if is_dependent else None)
            children.append(child)
            agains.append(again)
        cls = _DependentMapResult if is_dependent else _LoadBalancedMapResult
        ar = cls(self.client, children, fname or getattr(f, "__name__", "map"), "pickle", ordered=ordered)
        if is_dependent:
            ar._scheduling(agains)
        return ar

    def imap(self, f, *sequences, ordered=True, max_outstanding="auto", return_exceptions=False):
        """Lazy map: an iterator that takes items from `sequences` (any iterables, infinite
        ones too) only as results come back, one task per item, with at most
        `max_outstanding` tasks unfinished at once ('auto': one per engine of the view; 0: no
        limit). `ordered=False` yields each result as soon as it is done. With
        `return_exceptions`, a failed task yields its RemoteError instead of raising it."""
        if not sequences:
            raise ValueError("imap needs at least one sequence")
        if max_outstanding == "auto":
            max_outstanding = len(self)
        if not isinstance(max_outstanding, int) or isinstance(max_outstanding, bool) or max_outstanding < 0:
            raise ValueError("max_outstanding must be 'auto' or an int >= 0")
        return self._imap(f, zip(*sequences), ordered, max_outstanding, return_exceptions)

    def _imap(self, f, items, ordered, max_outstanding, return_exceptions):
        # ipyparallel's order of events, which callers see through view.history: submit one
        # task per item; after each, yield what is ready (ordered: the oldest only), and when
        # max_outstanding tasks are held, wait for one (ordered: the oldest) before the next.
        outstanding = []  # submission order

        def value(ar):
            return ar.get(return_exceptions=return_exceptions)

        def take_ready(block):
            if ordered:
                return [outstanding.pop(0)] if block or outstanding[0].ready() else []
            if block:
                concurrent.futures.wait(outstanding, return_when=concurrent.futures.FIRST_COMPLETED)
            done = [ar for ar in outstanding if ar.ready()]
            for ar in done:
                outstanding.remove(ar)
            return done

        def full():
            # Only tasks still running count (ordered); results done but not yet yielded hold no engine.
            running = sum(not ar.ready() for ar in outstanding) if ordered else len(outstanding)
            return max_outstanding != 0 and running >= max_outstanding

        for args in items:
            outstanding.append(self._apply(f, args, {}, block=False)[0])
            for ar in take_ready(block=full()):
                yield value(ar)
            if max_outstanding != 0 and len(outstanding) >= max_outstanding:
                for ar in take_ready(block=True):
                    yield value(ar)
        while outstanding:
            for ar in take_ready(block=True):
                yield value(ar)

    def __len__(self):
        """How many engines this view may use: its targets, else every engine of the client."""
        if self.targets is None:
            return len(self.client)
        return len(self._allowed(self.targets))

    def remote(self, block=None, **flags):
        """Decorator: calling the function runs it as one task (apply)."""
        from ._remotefunction import remote
        return remote(self, block=block, **flags)

    def parallel(self, dist="b", block=None, **flags):
        """Decorator: calling the function on sequences runs it once per element, each call
        on a one-element part of each sequence, as ipyparallel; `f.map(seq)` maps element-wise."""
        from ._remotefunction import parallel
        return parallel(self, dist=dist, block=block, **flags)

    def register_joblib_backend(self, name=None, make_default=False):
        """Make `joblib.Parallel(backend=name)` run its batches as tasks of this view (without
        `name`: as 'ipyparallel' and 'testudo')."""
        from ._joblib import register
        register(name=name, make_default=make_default, view=self)

    def map_async(self, f, *sequences, **kwargs):
        kwargs["block"] = False
        return self.map(f, *sequences, **kwargs)

    def map_sync(self, f, *sequences, **kwargs):
        kwargs["block"] = True
        return self.map(f, *sequences, **kwargs)


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
                        if not self._return_exceptions:
                            raise value
                        yield value
                    else:
                        yield from value
        time.sleep(0)


class _DependentScheduling:
    """For results of `dependent` functions on a LoadBalancedView: a task whose engine said
    UnmetDependency is sent again to an engine of the view that has not tried it (a new
    msg_id), and fails with ImpossibleDependency once every one has, as ipyparallel's
    scheduler does. Checked whenever the result is looked at (ready, wait, get; the client's
    dispatcher for watched results)."""

    def _scheduling(self, agains):
        self._agains = agains  # per child: engines -> a new native request
        self._tried = [set() for _ in agains]  # per child: engines that said UnmetDependency
        # Per child: the native request whose answer was looked at already. The object, not its
        # id(): a request sent again replaces one that is then freed, and could reuse its id.
        self._settled = [None] * len(agains)
        self._impossible = set()  # task ids failed as ImpossibleDependency

    def _reschedule(self):
        """Looks at the children that answered since the last call (sending those with an unmet
        dependency again); returns whether there was any."""
        looked = False
        for i, child in enumerate(self._children):
            if self._settled[i] is child or not child.ready():
                continue
            looked = True
            self._settled[i] = child
            engine_id, task_id, ok = child.outcome()[0][:3]
            if ok or child.replies()[0].ename != "UnmetDependency":
                continue
            self._tried[i].add(engine_id)
            allowed = self._agains[i].allowed or self._client.ids
            left = sorted(set(allowed) - self._tried[i])
            if not left:
                self._impossible.add(task_id)
                continue
            new = self._agains[i](left)
            self._children[i] = new
            self._task_id_cache = None
            self._client._untrack([child])
            self._client._track([new], self)
            if self._watched:
                new.watch()
        return looked

    def ready(self):
        if self._finished:
            return True
        with self._finish_lock:
            # Done once every child has answered and each answer was looked at: a child may
            # answer between a look and the check, so look again until a look finds nothing new.
            while True:
                self._reschedule()
                if not all(c.ready() for c in self._children):
                    return False
                if not self._reschedule():
                    break
        self._finish()
        return True

    def wait(self, timeout=-1):
        deadline = time.monotonic() + _seconds(timeout)
        while not self.ready():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for child in self._children:
                if not child.ready():
                    child.wait(min(left, 0.05))
                    break
        return True

    def _error(self, reply):
        if reply.task_id in self._impossible:
            tried = sorted(self._tried[0] if len(self._tried) == 1 else set().union(*self._tried))
            return error._RAISED[error.ImpossibleDependency](
                f"task {reply.task_id}: its dependency is unmet on every engine it may use (tried {tried})",
                {"engine_id": reply.engine_id, "method": self._fname}, error.Outcome.DEPENDENCY_FAILED)
        return super()._error(reply)


class _DependentResult(_DependentScheduling, AsyncResult):
    pass


class _DependentMapResult(_DependentScheduling, _LoadBalancedMapResult):
    pass
