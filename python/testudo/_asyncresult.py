"""AsyncResult: the pending outcome of a request to one or more engines.

A concurrent.futures.Future, as in ipyparallel, so `asyncio.wrap_future(ar)` and
`await asyncio.wrap_future(ar)` work, plus ipyparallel's get/wait/ready/metadata API.
"""

import _thread
import concurrent.futures
import datetime
import pickle
import threading
import time
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, LOGGER, PENDING

from . import _execute_reply, _outputs, _testudo, error
from ._execute_reply import ExecuteReply
from ._metadata import METADATA_ATTRIBUTES, outcome_metadata, pending_metadata, stamp

_ANY_ENGINE = _testudo.ANY_ENGINE
_FINISHED = FINISHED
_CANCELLED = (CANCELLED, CANCELLED_AND_NOTIFIED)
_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
_loads = pickle.loads
# Guards the lazy creation of a result's Condition (rare: concurrent.futures.wait, as_completed,
# cancel); the Condition itself is over the result's own lock.
_condition_lock = threading.Lock()

_FOREVER = 365 * 24 * 3600.0


def _seconds(timeout):
    """ipyparallel's convention: None or a negative timeout waits forever."""
    if timeout is None or timeout < 0:
        return _FOREVER
    return float(timeout)


class AsyncResult(concurrent.futures.Future):
    # Live output is rare: one lock for every result's _live list instead of one each.
    _live_lock = threading.Lock()

    # Cost per task: every object a pending result keeps alive is one more for the garbage
    # collector to traverse, again and again while 10,000 results are in flight (that, not
    # the allocations, was most of the cost). So a result holds only itself, its children
    # list and an untracked lock; the rest starts as these class-level defaults and is made
    # on first use: Future's Condition (_condition), its waiter and callback lists, the live
    # output list and the metadata dicts. Future.__init__ is not called for that reason; its
    # fields are these defaults.
    _state = PENDING
    _result = None
    _exception = None
    _done_callbacks = ()
    _waiter_list = None
    _cond = None
    _live = ()
    _raw = None  # per target: value or RemoteError, once finished
    _outcomes = None  # per target: (engine_id, task_id, ok, started, completed, stdout, stderr)
    _md = None  # per target: Metadata, built from _outcomes when first read
    _return_exceptions = False  # get()'s default (map(..., return_exceptions=True) sets it)
    _received = None
    _task_id_cache = None
    _transform = None
    _resend = None  # per child: the _history.Request to send again (rc.resubmit), or None
    _balanced = False  # placed by the scheduler (resubmit lets it place the task again)
    _history_index = None  # this result's entry in the client's history
    _in_history = True
    owner = True

    """Result of execute/apply/push/pull/map on one or more engines.

    `children` are native requests; their targets, in order, make up this result's
    targets. `kind` says how to turn one engine's reply into a value: 'none' (push, clear),
    'pickle' (pull, apply), 'execute' (an ExecuteReply). `watch`: have the
    client's dispatcher thread complete the Future as soon as the replies are in, even before
    anything observes it (see _watch; not needed by any caller here).
    """

    _finished = False
    _watched = False

    def __init__(self, client, children, fname, kind, single=False, submitted=None, transform=None, watch=False,
                 resend=None, balanced=False):
        # Not super().__init__(): see the class attributes above.
        if transform is not None:
            self._transform = transform  # applied to each engine's value
        if resend is not None:
            self._resend = resend
        if balanced:
            self._balanced = True
        self._client = client
        self._children = list(children)
        self._fname = fname
        self._kind = kind
        self._single = single
        if submitted is None:
            # When the native client was handed the request (before sealing and sending), so
            # never after an engine started it; else now.
            submitted = min((getattr(c, "submitted", 0) or time.time() for c in children), default=time.time())
        self._submitted = submitted
        # The one lock of this result: _finish, and Future's Condition when one is made.
        # Reentrant: code run under the Condition (concurrent.futures) may call ready().
        self._finish_lock = _thread.RLock()
        client._track(self._children, self)
        if self._in_history:
            history = getattr(client, "_history", None)  # None: a test's fake client
            if history is not None:
                self._history_index = history.add(self)
        if watch:
            self._watch()

    @property
    def _condition(self):
        """Future's Condition, made on first use, over this result's own lock (so holding it
        also keeps _finish out, as Future's own lock would keep set_result out)."""
        cond = self._cond
        if cond is None:
            with _condition_lock:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition(self._finish_lock)
        return cond

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
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        return waiters

    @_waiters.setter
    def _waiters(self, value):
        self._waiter_list = value

    def add_done_callback(self, fn):
        with self._finish_lock:
            pending = self._state not in _DONE
            if pending:
                if not self._done_callbacks:
                    self._done_callbacks = []
                self._done_callbacks.append(fn)
        if not pending:
            try:
                fn(self)
            except Exception:
                LOGGER.exception("exception calling callback for %r", self)
            return
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
            return [o[0] for o in self._outcomes]
        return [None if t == _ANY_ENGINE else t for c in self._children for t in c.targets]

    def __repr__(self):
        state = "finished" if self.ready() else "pending"
        return f"<{type(self).__name__}({self._fname}): {state}>"

    def ready(self):
        """True once every engine has answered."""
        if self._finished:
            return True
        for child in self._children:
            if not child.ready():
                return False
        self._finish()
        return True

    def wait(self, timeout=-1):
        """Waits until done or `timeout` seconds pass; returns whether it is done."""
        if self._finished:
            return True
        children = self._children
        if len(children) == 1 and children[0].ready():  # no clock, no GIL release
            self._finish()
            return True
        deadline = time.monotonic() + _seconds(timeout)
        for child in children:
            left = max(0.0, deadline - time.monotonic())
            if not child.wait(left):
                return False
        self._finish()
        return True

    def get(self, timeout=None, return_exceptions=None):
        """The result: a list with one value per engine, or one value for a single engine.

        Raises TimeoutError if not done within `timeout` seconds, RemoteError (one engine)
        or CompositeError (several) if the remote code raised; with `return_exceptions` (by
        default as the map that made it said), the RemoteErrors are in the list instead.
        """
        if not self._finished and not self.wait(-1 if timeout is None else timeout):
            raise error.TimeoutError("Result not ready.")
        if self._return_exceptions if return_exceptions is None else return_exceptions:
            return self._reconstruct(self._raw)
        return self._outcome()

    def successful(self):
        """Whether the request succeeded everywhere (asserts that it is done)."""
        if not self.ready():
            raise AssertionError("result not ready")
        if self._state in _CANCELLED:
            raise concurrent.futures.CancelledError()
        return self._exception is None

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
        """Per engine: msg_id, engine_id, submitted, started, completed, received, stdout,
        stderr, status, error, execute_result, outputs, data (ipyparallel's keys that testudo
        has). The times are timezone-aware UTC datetimes, as ipyparallel's (None until known)."""
        if self.ready():
            md = self._metadata
        else:
            md = [pending_metadata(None, t, self._submitted) for t in self.targets]
        return md[0] if self._single else md

    @property
    def _metadata(self):
        """Per target Metadata once finished (None before), built on first use."""
        md = self._md
        if md is None and self._finished:
            with self._finish_lock:
                md = self._md
                if md is None:
                    md = self._md = self._build_metadata()
        return md

    def _build_metadata(self):
        received, RemoteError = self._received, error.RemoteError
        md = []
        for outcome, value in zip(self._outcomes, self._raw):
            if isinstance(value, ExecuteReply):
                md.append(value.metadata)  # one dict, as in ipyparallel: reply.metadata is ar.metadata[i]
                continue
            m = outcome_metadata(outcome, self._submitted_of(outcome[1]), received)
            if isinstance(value, RemoteError):
                m["status"], m["error"] = "error", value
            md.append(m)
        return md

    @property
    def execute_result(self):
        """Per engine, IPython's execute_result of an execute(silent=False) whose code ends in an
        expression ({'data': {mime: value}, 'metadata': {}, 'execution_count': n}), else None."""
        md = self.metadata
        return md["execute_result"] if self._single else [m["execute_result"] for m in md]

    @property
    def outputs(self):
        """Per engine, the display_data outputs published while the request ran: always empty,
        as an engine has no IPython display publisher (display() prints its text to stdout)."""
        md = self.metadata
        return md["outputs"] if self._single else [m["outputs"] for m in md]

    @property
    def data(self):
        """Per engine, what the task published with ipyparallel's `publish_data`: always empty
        dicts, as testudo's engines have no data publisher."""
        md = self.metadata
        return md["data"] if self._single else [m["data"] for m in md]

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

    # The times below are kept as seconds since 1970 (the outcomes' started/completed,
    # _submitted, _received); metadata shows them as datetimes.

    @property
    def elapsed(self):
        """Seconds since submission (until completion once done), a float."""
        if self.ready() and self._received is not None:
            return self._received - self._start_time()
        return time.time() - self._submitted

    @property
    def wall_time(self):
        """Seconds from submission until the last engine finished, a float (raises if not done)."""
        if not self.ready():
            raise error.TimeoutError("Result not ready.")
        completed = [o[4] for o in self._outcomes if o[4]]
        return (max(completed) if completed else self._received) - self._start_time()

    def _start_time(self):
        """When the request left, for a finished result. The client notes its own time once the
        request is handed to its network thread, which under load can be after an engine already
        started it: the earlier of the two."""
        return min([self._submitted] + [o[3] for o in self._outcomes if o[3]])

    @property
    def serial_time(self):
        """Sum over engines of the seconds each spent running this request, a float."""
        if not self.ready():
            raise error.TimeoutError("Result not ready.")
        return sum(o[4] - o[3] for o in self._outcomes if o[3] and o[4])

    def timedelta(self, start, end, start_key=min, end_key=max):
        """Seconds (a float) between two sets of metadata times, as ipyparallel's:
        ar.timedelta(ar.submitted, ar.received) is from the earliest of `start` to the latest of
        `end` (`start_key` / `end_key` choose another). Each is a datetime or a list of them;
        None entries (a time not known yet) are left out."""
        if not isinstance(start, datetime.datetime):
            start = start_key([t for t in start if t is not None])
        if not isinstance(end, datetime.datetime):
            end = end_key([t for t in end if t is not None])
        return (end - start).total_seconds()

    def _live_output(self, engine, stream, text):
        with self._live_lock:
            if not self._live:
                self._live = []
            self._live.append((engine, stream, text))

    def take_live_output(self):
        """Output chunks (engine_id, 'stdout'|'stderr', text) that arrived while the request
        ran, since the last call. The whole output is in `stdout`/`stderr` once done."""
        with self._live_lock:
            chunks, self._live = list(self._live), ()
        return chunks

    def wait_interactive(self, interval=0.1, timeout=-1, file=None, widget=None):
        """Waits, showing a progress bar ('|#####-----|  50%   2/4 tasks finished after 1 s')
        and the engines' output as it is written ('[stdout:0] ...' lines). The bar is redrawn in
        place on stderr (or `file`, which then gets the output lines too; otherwise they go to
        stdout); in a Jupyter kernel it is an ipywidgets bar when ipywidgets imports
        (widget=True/False chooses). Returns when done or after `timeout` seconds."""
        _outputs.wait_interactive(self, interval, time.monotonic() + _seconds(timeout), file, widget)

    def display_outputs(self, groupby="type", result_only=False):
        """Republishes the engines' outputs, as ipyparallel does: a single-engine result's stdout
        and stderr as they are; several engines' under '[stdout:0]' headers, grouped by
        `groupby` — 'type' (every stdout, then every stderr), 'engine' (each engine's streams
        together) or 'order' (as 'type'). Inside IPython, execute results are displayed too
        (Out[engine:count]); `result_only` shows only those."""
        self._check_ready()
        _outputs.display_outputs(self, groupby, result_only)

    # ipyparallel's message tracking (track=True): when the request's own buffers (pushed
    # arrays, arguments) may be changed again. testudo sends them without a copy and holds them
    # until the request has finished, so that is the moment, whatever `track` was.
    @property
    def sent(self):
        """Whether testudo is done with this request's buffers (once it has finished), so
        arrays sent without a copy may be changed again."""
        return self.ready()

    def wait_for_output(self, timeout=-1):
        """Whether every engine's output (stdout, stderr, outputs, data) has arrived, after
        waiting up to `timeout` seconds: output comes with each engine's reply, so that is
        when the result is done."""
        return self.wait(timeout)

    def wait_for_send(self, timeout=-1):
        """Waits until `sent`; raises TimeoutError if that takes more than `timeout` seconds."""
        if not self.wait(timeout):
            raise error.TimeoutError("Still waiting to be sent")

    def abort(self):
        """Abort this request's tasks that have not started yet."""
        return self._client.abort([self])

    def __iter__(self):
        results = self.get()
        yield from ([results] if self._single else results)

    def __getitem__(self, key):
        """ar['engine_id'] (a str): that metadata key, per engine (one value for a single
        engine), without waiting; ar[0] / ar[1:3]: the finished result, indexed, as ipyparallel."""
        if isinstance(key, str):
            md = self.metadata
            return md[key] if self._single else [m[key] for m in md]
        if isinstance(key, (int, slice)):
            self._check_ready()
            return self.get()[key]
        raise TypeError(f"invalid key type {type(key).__name__!r}: must be int, slice or str")

    def __getattr__(self, key):
        # Only for names not found otherwise: the metadata times and status, per engine.
        if key in METADATA_ATTRIBUTES:
            return self[key]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    @property
    def engine_id(self):
        """The engine that ran it (a list, one per engine, unless single); for a
        load-balanced task not yet done, None, as the scheduler has not said where it runs."""
        return self["engine_id"]

    # ----- concurrent.futures.Future: block on the native result, not on a thread -----

    def result(self, timeout=None):
        if not self._finished and not self.wait(-1 if timeout is None else timeout):
            if self._state in _CANCELLED:
                raise concurrent.futures.CancelledError()
            raise concurrent.futures.TimeoutError()
        return self._outcome()

    def exception(self, timeout=None):
        if not self._finished and not self.wait(-1 if timeout is None else timeout):
            if self._state in _CANCELLED:
                raise concurrent.futures.CancelledError()
            raise concurrent.futures.TimeoutError()
        if self._state in _CANCELLED:
            raise concurrent.futures.CancelledError()
        return self._exception

    def done(self):
        return self.ready() or self._state in _DONE

    def _outcome(self):
        """The Future's value once finished, or raises its exception (or CancelledError)."""
        exc = self._exception
        if exc is not None:
            try:
                raise exc
            finally:
                exc = None  # no cycle through the traceback
        if self._state in _CANCELLED:
            raise concurrent.futures.CancelledError()
        return self._result

    # ----- internals -----

    def _check_ready(self):
        if not self.ready():
            raise error.TimeoutError("Result not ready.")

    def _metadata_list(self):
        return self._metadata or []

    def _value(self, segments, outcome):
        """One engine's value from its reply's segments; `outcome` is the reply's
        (engine_id, task_id, ok, started, completed, stdout, stderr)."""
        if self._kind == "pickle":
            if not segments:
                return None
            value = _loads(segments[0], buffers=segments[1:]) if len(segments) > 1 else _loads(segments[0])
            return self._transform(value) if self._transform else value
        if self._kind == "execute":
            return self._execute_reply(segments, outcome)
        return None

    def _execute_reply(self, segments, outcome):
        count, execute_result = _execute_reply.decode(segments)
        md = outcome_metadata(outcome, self._submitted_of(outcome[1]), None)
        md["execute_result"] = execute_result
        return ExecuteReply(md["msg_id"], {"status": "ok", "execution_count": count}, md)

    def _submitted_of(self, task_id):
        """When task `task_id` was submitted (seconds since 1970)."""
        return self._submitted

    def _error(self, reply):
        """The exception for one engine's reply that did not succeed: by its outcome, through
        error.OUTCOME_EXCEPTIONS (a Python error raised by user code is a RemoteError)."""
        info = {"engine_id": reply.engine_id, "method": self._method_of(reply.task_id)}
        return error.outcome_error(reply.outcome, reply.message, info, reply)

    def _method_of(self, task_id):
        """What the request did, as errors name it ('[0:apply]')."""
        return self._fname

    def _finish(self):
        """Builds the values once every child is ready; safe from any thread, runs once."""
        with self._finish_lock:
            if self._finished:
                return
            raw, outcomes = [], []
            for child in self._children:
                replies = None  # Reply objects, only to describe an error
                for i, outcome in enumerate(child.outcome()):
                    try:
                        if outcome[2]:
                            value = self._value(outcome[7], outcome)
                        else:
                            if replies is None:
                                replies = child.replies()
                            value = self._error(replies[i])
                    except Exception as exc:  # a result that cannot be unpickled here
                        value = error.RemoteError(type(exc).__name__, str(exc), "",
                                                  {"engine_id": outcome[0], "method": self._fname})
                    raw.append(value)
                    outcomes.append(outcome[:7])  # not the segments: the value may be large
            self._raw = raw
            self._outcomes = outcomes
            self._received = received = time.time()
            for value in raw:
                if isinstance(value, ExecuteReply):
                    value.metadata["received"] = stamp(received)
            self._client._untrack(self._children)
            if self._history_index is not None:
                self._client._history.finished(self._history_index, self, [o[1] for o in outcomes])
            # Inside the lock, before _finished: whoever sees _finished sees the outcome.
            if self._state not in _CANCELLED:  # a cancel() that came first stands
                exc = None
                try:
                    if self._single:
                        if isinstance(raw[0], Exception):
                            raise raw[0]
                    else:
                        error.collect_exceptions(raw, self._fname)
                    self._result = self._reconstruct(raw)
                except Exception as e:
                    exc = self._exception = e
                self._state = FINISHED
                waiters = self._waiter_list
                if waiters:
                    for waiter in waiters:
                        if exc is None:
                            waiter.add_result(self)
                        else:
                            waiter.add_exception(self)
                if self._cond is not None:
                    self._cond.notify_all()
            self._finished = True
        if self._done_callbacks:
            self._invoke_callbacks()  # Future's: each callback once, errors logged

    def _reconstruct(self, raw):
        return raw[0] if self._single else raw


class AsyncHubResult(AsyncResult):
    """Results fetched from the controller's task store by task id (rc.get_result); each is
    decoded as its original request's kind."""

    _in_history = False  # no new request: rc.history is what was submitted

    def __init__(self, client, child, kinds, single=False, watch=False, submitted=None):
        self._kinds = kinds  # task id -> "apply", "pull", "execute", ...
        # task id -> when it was submitted, from the controller's records (seconds since 1970)
        self._submitted_at = submitted or {}
        first = min((t for t in self._submitted_at.values() if t), default=None)
        super().__init__(client, [child], "get_result", "pickle", single=single, watch=watch, submitted=first)
        self._task_id_cache = list(kinds)

    def _submitted_of(self, task_id):
        return self._submitted_at.get(task_id) or self._submitted

    def _method_of(self, task_id):
        return self._kinds.get(task_id) or self._fname  # the original request's, not 'get_result'

    def _value(self, segments, outcome):
        kind = self._kinds.get(outcome[1], "")
        if kind in ("apply", "pull"):
            return pickle.loads(segments[0], buffers=segments[1:]) if segments else None
        if kind == "execute":
            return self._execute_reply(segments, outcome)
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
