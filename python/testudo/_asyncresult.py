"""AsyncResult: the pending outcome of a request to one or more engines.

A concurrent.futures.Future, as in ipyparallel, so `asyncio.wrap_future(ar)` and
`await asyncio.wrap_future(ar)` work, plus ipyparallel's get/wait/ready/metadata API.
"""

import concurrent.futures
import pickle
import sys
import threading
import time

from . import _testudo, error

_ANY_ENGINE = _testudo.ANY_ENGINE
_FINISHED = concurrent.futures._base.FINISHED

_FOREVER = 365 * 24 * 3600.0


def _seconds(timeout):
    """ipyparallel's convention: None or a negative timeout waits forever."""
    if timeout is None or timeout < 0:
        return _FOREVER
    return float(timeout)


class _Metadata(dict):
    """One engine's metadata; keys are attributes too (ar.metadata[0].engine_id)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class AsyncResult(concurrent.futures.Future):
    # Live output is rare: one lock for every result's _live list instead of one each.
    _live_lock = threading.Lock()

    """Result of execute/apply/push/pull/map on one or more engines.

    `children` are native requests; their targets, in order, make up this result's
    targets. `kind` says how to turn one engine's reply into a value: 'none' (execute, push),
    'pickle' (pull, apply), 'execute' (execute with a displayed result). `watch`: have the
    client's dispatcher thread complete the Future as soon as the replies are in, even before
    anything observes it (see _watch; not needed by any caller here).
    """

    _finished = False
    _watched = False

    def __init__(self, client, children, fname, kind, single=False, submitted=None, transform=None, watch=False):
        super().__init__()
        self._transform = transform  # applied to each engine's value
        self._client = client
        self._children = list(children)
        self._fname = fname
        self._kind = kind
        self._single = single
        self._submitted = submitted if submitted is not None else time.time()
        self._finish_lock = threading.RLock()  # RLock: done-callbacks may call get()
        self._finished = False
        self._raw = None  # per target: value or RemoteError, once finished
        self._metadata = None
        self._received = None
        self._task_id_cache = None
        self._live = []  # (engine, stream, text) chunks received while running, not yet shown
        self.owner = True
        client._track(self._children, self)
        if watch:
            self._watch()

    def _watch(self):
        """Has the client's dispatcher thread complete this Future as soon as the replies are
        in. Needed only once something observes the Future without calling into this object:
        a done-callback (asyncio.wrap_future too) or a waiter of concurrent.futures.wait /
        as_completed. Everything else (get, wait, ready, done, result...) finishes the result
        in the calling thread, straight from the native result: no dispatcher wake-up and no
        GIL hand-off for the common cases."""
        if not self._watched:
            self._watched = True
            self._client._track(self._children, self)  # the dispatcher finds it there
            for child in self._children:
                child.watch()

    def _native_ready(self):
        return all(c.ready() for c in self._children)

    # concurrent.futures.wait/as_completed append their waiter to _waiters while holding
    # _condition: that is the moment to ask the dispatcher to complete this Future (it waits
    # for _condition, so it notifies the waiter just appended).
    @property
    def _waiters(self):
        if not self._finished and not self._watched:
            self._watch()
        return self.__dict__["_waiter_list"]

    @_waiters.setter
    def _waiters(self, value):
        self.__dict__["_waiter_list"] = value

    def add_done_callback(self, fn):
        super().add_done_callback(fn)
        # Done already (natively): finish here, which calls fn in this thread, as a Future
        # that is done does. Otherwise the dispatcher completes it when the replies come.
        if not self.ready():
            self._watch()

    # ----- ipyparallel API -----

    @property
    def msg_ids(self):
        """The controller's task ids (as strings), one per engine in target order: handles for
        rc.get_result(), rc.result_status(), dependencies (after/follow) and abort — also from
        another process of the same user (same ~/.testudo/identity)."""
        return [str(i) for i in self._task_ids()]

    def _task_ids(self):
        if self._task_id_cache is None:
            self._task_id_cache = [i for c in self._children for i in c.task_ids(30.0)]
        return self._task_id_cache

    @property
    def targets(self):
        """Engine ids, in result order (None for a load-balanced task not placed yet)."""
        if self._finished:
            return [m["engine_id"] for m in self._metadata]
        return [None if t == _ANY_ENGINE else t for c in self._children for t in c.targets]

    def __repr__(self):
        state = "finished" if self.ready() else "pending"
        return f"<{type(self).__name__}({self._fname}): {state}>"

    def ready(self):
        """True once every engine has answered."""
        if not self._finished and all(c.ready() for c in self._children):
            self._finish()
        return self._finished

    def wait(self, timeout=-1):
        """Waits until done or `timeout` seconds pass; returns whether it is done."""
        if self._state == _FINISHED:  # set after the outcome, unlike _finished
            return True
        children = self._children
        if len(children) == 1 and children[0].ready():  # no clock, no GIL release
            self._finish()
            return True
        deadline = time.monotonic() + _seconds(timeout)
        for child in self._children:
            left = max(0.0, deadline - time.monotonic())
            if not child.wait(left):
                return False
        self._finish()
        return True

    def get(self, timeout=None, return_exceptions=False):
        """The result: a list with one value per engine, or one value for a single engine.

        Raises TimeoutError if not done within `timeout` seconds, RemoteError (one engine)
        or CompositeError (several) if the remote code raised.
        """
        if not self.wait(-1 if timeout is None else timeout):
            raise error.TimeoutError("Result not ready.")
        if return_exceptions:
            return self._reconstruct(self._raw)
        return concurrent.futures.Future.result(self, 0)

    def successful(self):
        """Whether the request succeeded everywhere (asserts that it is done)."""
        if not self.ready():
            raise AssertionError("result not ready")
        return concurrent.futures.Future.exception(self, 0) is None

    def get_dict(self, timeout=-1):
        """{engine_id: result}; needs one result per engine."""
        results = self.get(timeout)
        targets = self.targets
        if self._single:
            results = [results]
        if len(set(targets)) != len(targets):
            raise ValueError("cannot build a dict: an engine ran several of these requests")
        return dict(zip(targets, results))

    @property
    def r(self):
        return self.get()

    @property
    def result_dict(self):
        return self.get_dict()

    @property
    def metadata(self):
        """Per engine: engine_id, submitted, started, completed, received, stdout, stderr, status."""
        if not self.ready():
            return [_Metadata(engine_id=t, submitted=self._submitted, started=None, completed=None,
                              received=None, stdout="", stderr="", status="pending") for t in self.targets]
        md = self._metadata
        return md[0] if self._single else md

    @property
    def stdout(self):
        md = self.metadata
        return md["stdout"] if self._single else [m["stdout"] for m in md]

    @property
    def stderr(self):
        md = self.metadata
        return md["stderr"] if self._single else [m["stderr"] for m in md]

    @property
    def progress(self):
        """How many engines have answered so far."""
        return sum(len(c.targets) for c in self._children if c.ready())

    def __len__(self):
        return len(self.targets)

    @property
    def elapsed(self):
        """Seconds since submission (until completion once done)."""
        if self.ready() and self._received is not None:
            return self._received - self._submitted
        return time.time() - self._submitted

    @property
    def wall_time(self):
        """Seconds from submission until the last engine finished (raises if not done)."""
        if not self.ready():
            raise error.TimeoutError("Result not ready.")
        completed = [m["completed"] for m in self._metadata_list() if m["completed"]]
        return (max(completed) if completed else self._received) - self._submitted

    @property
    def serial_time(self):
        """Sum over engines of the time each spent running this request."""
        if not self.ready():
            raise error.TimeoutError("Result not ready.")
        return sum(m["completed"] - m["started"] for m in self._metadata_list() if m["started"])

    def _live_output(self, engine, stream, text):
        with self._live_lock:
            self._live.append((engine, stream, text))

    def take_live_output(self):
        """Output chunks (engine_id, 'stdout'|'stderr', text) that arrived while the request
        ran, since the last call. The whole output is in `stdout`/`stderr` once done."""
        with self._live_lock:
            chunks, self._live = self._live, []
        return chunks

    def wait_interactive(self, interval=0.1, timeout=-1, file=None):
        """Waits, showing the engines' output as it is written and a live progress line
        ('3/4 tasks finished after 2 s')."""
        out = file or sys.stdout
        deadline = time.monotonic() + _seconds(timeout)
        n = len(self)
        while not self.ready() and time.monotonic() < deadline:
            self.wait(interval)
            chunks = self.take_live_output()
            if chunks:
                out.write("\r" + " " * 60 + "\r")
                for engine, stream, text in chunks:
                    for line in text.splitlines():
                        out.write(f"[{stream}:{engine}] {line}\n")
            out.write(f"\r{self.progress:4d}/{n} tasks finished after {int(self.elapsed):4d} s")
            out.flush()
        out.write(f"\r{self.progress:4d}/{n} tasks finished after {int(self.elapsed):4d} s\ndone\n")
        out.flush()

    def display_outputs(self, groupby="type", result_only=False):
        """Prints each engine's stdout and stderr ('[stdout:0] ...'), as ipyparallel does."""
        self._check_ready()
        if result_only:
            return
        for m in self._metadata_list():
            for stream, dest in (("stdout", sys.stdout), ("stderr", sys.stderr)):
                text = m[stream]
                if text:
                    dest.write(f"[{stream}:{m['engine_id']}] " + text + ("" if text.endswith("\n") else "\n"))
        sys.stdout.flush()

    def abort(self):
        """Abort this request's tasks that have not started yet."""
        return self._client.abort([self])

    def __iter__(self):
        results = self.get()
        yield from ([results] if self._single else results)

    # ----- concurrent.futures.Future: block on the native result, not on a thread -----

    def result(self, timeout=None):
        self.wait(-1 if timeout is None else timeout)
        return super().result(0) if self._finished else super().result(timeout)

    def exception(self, timeout=None):
        self.wait(-1 if timeout is None else timeout)
        return super().exception(0) if self._finished else super().exception(timeout)

    def done(self):
        return self.ready() or super().done()

    # ----- internals -----

    def _check_ready(self):
        if not self.ready():
            raise error.TimeoutError("Result not ready.")

    def _metadata_list(self):
        return self._metadata or []

    def _value(self, reply):
        if self._kind == "pickle":
            segments = reply.value
            if not segments:
                return None
            value = pickle.loads(segments[0], buffers=segments[1:])
            return self._transform(value) if self._transform else value
        if self._kind == "execute":
            return reply.value[0].tobytes().decode("utf-8", "replace") if reply.value else None
        return None

    def _error(self, reply):
        info = {"engine_id": reply.engine_id, "method": self._fname}
        if reply.code == "remote_error":
            return error.RemoteError(reply.ename, reply.evalue, reply.traceback, info)
        if reply.code == "unavailable":
            # The controller's own report that this engine died is final, even if the
            # connection was lost later, before the other engines' replies came in.
            engine_died = reply.message.startswith(f"engine {reply.engine_id} died")
            if not engine_died and not self._client._native_connected():
                return error.RemoteError("ConnectionError", reply.message, "", info)
            return error.RemoteError("EngineError", reply.message, "", info)
        if reply.code == "not_found":
            return error.RemoteError("IndexError" if "engine" in reply.message else "KeyError", reply.message, "", info)
        if reply.code == "lost":
            return error.RemoteError("TaskLost", reply.message, "", info)
        if reply.code == "aborted":
            return error.RemoteError("TaskAborted", reply.message, "", info)
        if reply.code == "dependency_failed":
            return error.RemoteError("ImpossibleDependency", reply.message, "", info)
        if reply.code == "dependency_timeout":
            return error.RemoteError("DependencyTimeout", reply.message, "", info)
        return error.RemoteError("TestudoError", f"{reply.code}: {reply.message}", "", info)

    def _finish(self):
        """Builds the values once every child is ready; safe from any thread, runs once."""
        with self._finish_lock:
            if self._finished:
                return
            raw, metadata = [], []
            now = time.time()
            RemoteError = error.RemoteError
            for child in self._children:
                for reply in child.replies():
                    engine_id, ok, started, completed, stdout, stderr = reply.summary
                    try:
                        value = self._value(reply) if ok else self._error(reply)
                    except Exception as exc:  # a result that cannot be unpickled here
                        value = RemoteError(type(exc).__name__, str(exc), "",
                                            {"engine_id": engine_id, "method": self._fname})
                    raw.append(value)
                    failed = isinstance(value, RemoteError)
                    metadata.append(_Metadata(
                        engine_id=engine_id, submitted=self._submitted,
                        started=started or None, completed=completed or None,
                        received=now, stdout=stdout, stderr=stderr,
                        status="error" if failed or not ok else "ok",
                        error=value if failed else None))
            self._raw = raw
            self._metadata = metadata
            self._received = now
            self._finished = True
            self._client._untrack(self._children)
            # Inside the lock: whoever sees _finished must also see the Future's outcome.
            try:
                if self._single:
                    if isinstance(raw[0], Exception):
                        raise raw[0]
                else:
                    error.collect_exceptions(raw, self._fname)
            except Exception as exc:
                self.set_exception(exc)
            else:
                self.set_result(self._reconstruct(raw))

    def _reconstruct(self, raw):
        return raw[0] if self._single else raw


class AsyncHubResult(AsyncResult):
    """Results fetched from the controller's task store by task id (rc.get_result); each is
    decoded as its original request's kind."""

    def __init__(self, client, child, kinds, single=False, watch=False):
        self._kinds = kinds  # task id -> "apply", "pull", "execute", ...
        super().__init__(client, [child], "get_result", "pickle", single=single, watch=watch)
        self._task_id_cache = list(kinds)

    def _value(self, reply):
        kind = self._kinds.get(reply.task_id, "")
        if kind in ("apply", "pull"):
            segments = reply.value
            return pickle.loads(segments[0], buffers=segments[1:]) if segments else None
        if kind == "execute" and reply.value:
            return reply.value[0].tobytes().decode("utf-8", "replace")
        return None


class AsyncMapResult(AsyncResult):
    """A map or gather: each engine returns a list, and the result is their concatenation."""

    def _reconstruct(self, raw):
        out = []
        for part in raw:
            if isinstance(part, Exception):
                out.append(part)
            else:
                out.extend(part)
        return out

    def __iter__(self):
        yield from self.get()
