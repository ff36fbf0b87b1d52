"""rc.history and view.history: the msg_ids of every request, in submission order.

A request's msg_ids are the controller's task ids, known once it has acknowledged the
request. Holding every AsyncResult to answer that would keep every result (and its buffers)
alive for the client's life; so a finished request's entry keeps only its task ids (8 bytes
each, in one flat array) and lets its AsyncResult go. Unfinished ones are held (the client's
pending map holds them anyway). Thread-safe: one lock.
"""

import collections
import threading
from array import array


class History:
    """Append-only entries, one per request (an AsyncResult), each giving its task ids."""

    _COMPACT_FROM = 256  # held results that trigger the first compaction

    def __init__(self):
        self._lock = threading.Lock()
        self._ids = array("Q")  # task ids of compacted entries, entry after entry
        self._start = array("q")  # per entry: its first index in _ids, or -1 while held
        self._count = array("q")  # per entry: how many ids (valid when _start >= 0)
        self._held = {}  # entry index -> AsyncResult, until compacted
        self._compact_at = self._COMPACT_FROM
        self._requests = collections.OrderedDict()  # task id -> (recipe, engine or None)
        self._requests_bytes = 0

    def __len__(self):
        return len(self._start)

    def add(self, ar):
        """Records `ar`; returns its entry index."""
        with self._lock:
            index = len(self._start)
            self._start.append(-1)
            self._count.append(0)
            self._held[index] = ar
            if len(self._held) >= self._compact_at:
                self._compact_locked()
                self._compact_at = max(self._COMPACT_FROM, 2 * len(self._held))
        return index

    def finished(self, index, ar, task_ids):
        """`ar` (entry `index`) has its outcome: keep only its task ids (and its request, for
        resubmit, when small enough)."""
        with self._lock:
            if self._held.get(index) is ar:
                self._let_go_locked(index, ar, task_ids)

    def _let_go_locked(self, index, ar, task_ids):
        self._start[index] = len(self._ids)
        self._count[index] = len(task_ids)
        self._ids.extend(task_ids)
        del self._held[index]
        self._keep_requests_locked(ar, task_ids)

    def _compact_locked(self):
        # Results nobody looked at are never finished: let go of those whose replies are all
        # in. Amortised O(1) per add: a pass only once the held results have doubled.
        for index, ar in list(self._held.items()):
            if ar._finished or ar._native_ready():
                self._let_go_locked(index, ar, ar._task_ids())

    # ----- the requests kept for resubmit -----

    _REQUEST_MAX = 1 << 20  # a request larger than this is not kept
    _REQUESTS_BYTES = 64 << 20  # the most kept in all; the oldest go first

    def _keep_requests_locked(self, ar, task_ids):
        resend = ar._resend
        if not resend:
            return
        requests = self._requests
        position = 0
        for child, recipe in zip(ar._children, resend):
            n = len(child.targets)
            if recipe is not None:
                # Counted once per task id (a request to several engines is counted as many
                # times): a bound, not an exact figure.
                for task_id, engine in zip(task_ids[position:position + n], child.targets):
                    requests[task_id] = (recipe, None if ar._balanced else engine)
                    self._requests_bytes += recipe.size
            position += n
        while self._requests_bytes > self._REQUESTS_BYTES and requests:
            _, (recipe, _) = requests.popitem(last=False)
            self._requests_bytes -= recipe.size

    def pending_request(self, task_id):
        """(recipe, engine) for a task of a result still held (not finished yet), or None."""
        _, ar = self.locate(task_id)
        if ar is None or not ar._resend:
            return None
        for child, recipe in zip(ar._children, ar._resend):
            ids = child.task_ids(30.0)
            if task_id in ids:
                if recipe is None:
                    return None
                return recipe, None if ar._balanced else child.targets[ids.index(task_id)]
        return None

    def request(self, task_id):
        """(recipe, engine) of a kept request, or None."""
        with self._lock:
            return self._requests.get(task_id)

    def forget_results(self):
        """Lets go of every finished AsyncResult (their msg_ids stay)."""
        with self._lock:
            self._compact_locked()

    def entries(self, indices=None):
        """[(task ids, the AsyncResult or None)] for entry `indices` (default: all)."""
        with self._lock:
            indices = range(len(self._start)) if indices is None else list(indices)
            snapshot = []
            for i in indices:
                ar = self._held.get(i)
                if ar is not None:
                    snapshot.append((None, ar))
                else:
                    start = self._start[i]
                    snapshot.append((self._ids[start:start + self._count[i]].tolist(), None))
        # Task ids of held results may wait for the controller's acknowledgement: outside the lock.
        return [(ar._task_ids() if ids is None else ids, ar) for ids, ar in snapshot]

    def live_results(self, indices=None):
        """The AsyncResults still held, of entry `indices` (default: all)."""
        with self._lock:
            if indices is None:
                return list(self._held.values())
            return [self._held[i] for i in indices if i in self._held]

    def locate(self, task_id):
        """(found, the AsyncResult still held for `task_id` or None) for a task id."""
        with self._lock:
            held = list(self._held.values())
            compacted = task_id in self._ids
        if compacted:
            return True, None
        for ar in held:
            if task_id in ar._task_ids():
                return True, ar
        return False, None

    def task_ids(self):
        """Every task id, in submission order (ints)."""
        return [i for ids, _ in self.entries() for i in ids]

    def msg_ids(self, indices=None):
        return [str(i) for ids, _ in self.entries(indices) for i in ids]


class Request:
    """What rc.resubmit sends again: the native client's method and its arguments after the
    targets ('apply': segments; 'execute': code, display; 'apply_balanced': allowed engines,
    segments). `kind` is how the AsyncResult reads the replies."""

    __slots__ = ("method", "args", "kind", "fname", "size")

    def __init__(self, method, args, kind, fname, size):
        self.method, self.args, self.kind, self.fname, self.size = method, args, kind, fname, size

    @classmethod
    def of(cls, method, args, kind, fname, segments=()):
        """A Request, or None when its segments are too large to keep."""
        size = 256 + sum(memoryview(s).nbytes for s in segments)
        if size > History._REQUEST_MAX:
            return None
        return cls(method, args, kind, fname, size)
