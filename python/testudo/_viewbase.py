"""What DirectView and LoadBalancedView share: their own history of requests, and ipyparallel's
View methods that go through the client (get_result, abort, shutdown, queue_status,
purge_results, executor)."""

import concurrent.futures
import functools
import warnings


def recorded(method):
    """For a view method that sends requests: the client's history entries it added belong to
    this view's history too (as ipyparallel's save_ids; another thread sending through the
    same client at the same moment may land in it as well)."""
    @functools.wraps(method)
    def send(self, *args, **kwargs):
        history = self.client._history
        start = len(history)
        try:
            return method(self, *args, **kwargs)
        finally:
            end = len(history)
            if end > start:
                self._add_entries(history, start, end)
    return send


class ViewExecutor(concurrent.futures.Executor):
    """A concurrent.futures.Executor over a view (view.executor, rc.executor()): submit is
    view.apply_async, map is a generator over view.imap, shutdown waits for this view's
    requests but leaves the engines running (as ipyparallel's)."""

    def __init__(self, view):
        self.view = view
        self._max_workers = len(view)

    def submit(self, fn, /, *args, **kwargs):
        return self.view.apply_async(fn, *args, **kwargs)

    def map(self, func, *iterables, timeout=None, chunksize=1):
        if timeout is not None:
            warnings.warn("timeout unsupported in ViewExecutor.map")
        # Not `yield from` here: Executor.map's errors (a bad argument) come at the call.
        iterator = self.view.imap(func, *iterables)
        return (r for r in iterator)

    def shutdown(self, wait=True, *, cancel_futures=False):
        if cancel_futures:
            self.view.abort()
        if wait:
            self.view.wait()


class ViewCommon:
    """Mixin: needs `client` and `targets`."""

    _entries = ()  # [(client history, first entry, end)] of the requests sent through this view
    _executor = None

    def _add_entries(self, history, start, end):
        entries = self._entries
        if not entries:
            entries = self._entries = []
        if entries and entries[-1][0] is history and entries[-1][2] == start:
            entries[-1] = (history, entries[-1][1], end)
        else:
            entries.append((history, start, end))

    def _live_results(self):
        return [ar for history, start, end in self._entries for ar in history.live_results(range(start, end))]

    @property
    def history(self):
        """msg_ids of the requests sent through this view, in order."""
        return [i for history, start, end in self._entries for i in history.msg_ids(range(start, end))]

    @property
    def outstanding(self):
        """msg_ids of this view's requests still waiting for replies."""
        return {i for ar in self._live_results() if not ar.ready() for i in ar.msg_ids}

    @property
    def results(self):
        """The client's results (rc.results), as in ipyparallel: shared by every view."""
        return self.client.results

    @property
    def executor(self):
        """A concurrent.futures.Executor running on this view."""
        if self._executor is None:
            self._executor = ViewExecutor(self)
        return self._executor

    def _view_targets(self, targets):
        targets = self.targets if targets is None or (isinstance(targets, str) and targets == "all") else targets
        return "all" if targets is None else targets

    def spin(self):
        """Nothing to do: results arrive on the client's own thread (ipyparallel's spin
        flushes its sockets)."""

    def wait(self, jobs=None, timeout=-1):
        """Wait for `jobs` (default: this view's outstanding requests); True if all finished."""
        if jobs is None:
            jobs = self._live_results()
        return self.client.wait(jobs, timeout)

    def wait_interactive(self, jobs=None, interval=1.0, timeout=-1):
        """rc.wait_interactive for `jobs` (default: this view's outstanding requests)."""
        if jobs is None:
            jobs = self._live_results()
        return self.client.wait_interactive(jobs, interval, timeout)

    def get_result(self, indices_or_msg_ids=None, block=None, owner=False):
        """rc.get_result, where ints index this view's history (default: its last msg_id)."""
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        if isinstance(indices_or_msg_ids, int):
            indices_or_msg_ids = self.history[indices_or_msg_ids]
        elif isinstance(indices_or_msg_ids, (list, tuple, set)):
            history = None
            ids = []
            for i in indices_or_msg_ids:
                if isinstance(i, int) and not isinstance(i, bool):
                    history = self.history if history is None else history
                    i = history[i]
                ids.append(i)
            indices_or_msg_ids = ids
        return self.client.get_result(indices_or_msg_ids, block=self.block if block is None else block, owner=owner)

    def abort(self, jobs=None, targets=None, block=None):
        """Abort queued tasks: `jobs` (default: this view's outstanding ones). Running tasks go
        on (see rc.interrupt). Returns how many were aborted."""
        if jobs is None:
            jobs = self._live_results()
        return self.client.abort(jobs)

    def queue_status(self, targets=None, verbose=False):
        """rc.queue_status for this view's engines."""
        return self.client.queue_status(self._view_targets(targets), verbose=verbose)

    def purge_results(self, jobs=(), targets=()):
        """rc.purge_results; targets None or 'all' are this view's engines."""
        if targets is None or (isinstance(targets, str) and targets == "all"):
            targets = self._view_targets(None)
        return self.client.purge_results(jobs=jobs, targets=targets)

    def shutdown(self, targets=None, restart=False, hub=False, block=None):
        """Stop this view's engines (or `targets`); hub=True stops the whole cluster."""
        return self.client.shutdown(self._view_targets(targets), restart=restart, hub=hub,
                                    block=self.block if block is None else block)
