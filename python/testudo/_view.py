"""DirectView: run code on explicit engines, with ipyparallel's DirectView API."""

import builtins
import contextlib
import pickle
import types

import cloudpickle

from . import _dask, _dependency, _helpers, error
from ._asyncresult import AsyncMapResult, AsyncResult
from ._history import Request
from ._reference import Reference
from ._viewbase import ViewCommon, recorded

# Our helpers travel by value, so engines need not have testudo installed.
cloudpickle.register_pickle_by_value(_helpers)
cloudpickle.register_pickle_by_value(_dependency)
cloudpickle.register_pickle_by_value(_dask)


class _GatherResult(AsyncMapResult):
    """gather: numpy blocks are joined into one array (as ipyparallel does), anything else
    into one list."""

    def _reconstruct(self, raw):
        if raw and all(type(part).__name__ == "ndarray" for part in raw):
            import numpy
            return numpy.concatenate(raw)
        out = []
        for part in raw:
            if isinstance(part, Exception) or not hasattr(part, "__len__"):
                out.append(part)
            else:
                out.extend(part)
        return out


# What requests are pickled with: cloudpickle, or dill after use_dill() (ipyparallel's
# switch, for this process as there). Engines load either with pickle.loads.
_pickler = cloudpickle


def _set_pickler(module):
    global _pickler
    _pickler = module
    _function_cache.clear()  # its pickles were made with the other one
    _helper_pickles.clear()


def use_cloudpickle():
    """Pickle functions and values sent to engines with cloudpickle: testudo's default, which
    sends functions and classes from __main__, lambdas and closures by value."""
    _set_pickler(cloudpickle)


def use_pickle():
    """Back to the default, as ipyparallel's use_pickle() undoes use_dill(). The default here is
    cloudpickle, not ipyparallel's stdlib pickle with its own function canning: cloudpickle
    sends everything that canning does."""
    _set_pickler(cloudpickle)


def use_dill():
    """Pickle what is sent to engines with dill, which also pickles some objects cloudpickle
    cannot (open files, for one). Engines need dill installed to load it. Values travel in-band
    (dill does not give arrays out-of-band, so each is copied once more), and results still come
    back with cloudpickle. Raises ImportError when dill is not installed, as ipyparallel does."""
    import dill
    _set_pickler(dill)


def _dumps(obj):
    """Pickle protocol 5 with out-of-band buffers: [pickle, buffer, ...] without copying arrays."""
    buffers = []
    data = _pickler.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [data, *buffers]


# testudo's own helpers (map chunks...) always travel by value with cloudpickle, whatever the
# pickler: engines need not have testudo installed. function -> its pickle (bytes).
_helper_pickles = {}


def _helper_pickle(f):
    data = _helper_pickles.get(f)
    if data is None:
        data = _helper_pickles[f] = cloudpickle.dumps(f, protocol=5)
    return data


# Values of these exact types hold no functions, classes or buffers: plain pickle is enough.
_ATOMIC = frozenset({type(None), bool, int, float, complex, str, bytes})

# id(f) -> (f, what the engine would see of f, its cloudpickle or None, the pickled call
# f() or None). Holding f keeps its id from being reused while the entry exists.
_function_cache = {}
_FUNCTION_CACHE_MAX = 256
_FUNCTION_CACHE_BYTES = 64 * 1024


def _pickled_function(f):
    """cloudpickle of f, reused from the last call with the same f while nothing of f that
    reaches the engine has changed; None where f must be pickled with its call each time."""
    entry = _function_entry(f)
    return None if entry is None else entry[2]


def _function_entry(f):
    """_function_cache's entry for f, made or renewed as needed; None where f must be
    pickled with its call each time (see _pickled_function).

    Only plain functions of __main__ without closure cells, attributes, annotations or
    keyword-only defaults, whose defaults are atomic values: everything the engine keeps of
    such a function is immutable (its globals are replaced by the engine's namespace there,
    see _interactive in the engine), so a pickle made earlier loads as the same function."""
    if (type(f) is not types.FunctionType or f.__module__ != "__main__" or f.__closure__ is not None
            or f.__dict__ or f.__kwdefaults__ or f.__annotations__):
        return None
    defaults = f.__defaults__
    entry = _function_cache.get(id(f))
    if entry is not None and entry[0] is f:
        seen = entry[1]
        if (seen[0] is f.__code__ and seen[1] is defaults and seen[2] is f.__name__ and seen[3] is f.__qualname__
                and seen[4] is f.__doc__):
            return entry if entry[2] is not None else None
    if defaults and any(type(d) not in _ATOMIC for d in defaults):
        return None
    seen = (f.__code__, defaults, f.__name__, f.__qualname__, f.__doc__)
    buffers = []
    data = _pickler.dumps(f, protocol=5, buffer_callback=buffers.append)
    if buffers or len(data) > _FUNCTION_CACHE_BYTES:
        data = None  # e.g. an array among its globals: keep it out-of-band, and the cache small
    if len(_function_cache) >= _FUNCTION_CACHE_MAX:
        _function_cache.clear()
    call = None if data is None else pickle.dumps((data, (), {}), protocol=5)
    entry = _function_cache[id(f)] = (f, seen, data, call)
    return entry if data is not None else None


def _dumps_call(f, args, kwargs):
    """_dumps((f, args, kwargs)) for apply, cheaper for the common case: f may travel as its
    cached pickle (bytes, which the engine loads: engine_support.py.inc, apply), and atomic
    arguments need no cloudpickle."""
    if _pickler is not cloudpickle and getattr(f, "__module__", None) == _helpers.__name__:
        return _dumps((_helper_pickle(f), tuple(args), dict(kwargs)))
    entry = _function_entry(f)
    if entry is None:
        return _dumps((f, tuple(args), dict(kwargs)))
    if not args and not kwargs:
        return [entry[3]]  # f(): the same bytes each time
    data = entry[2]
    args = tuple(args)
    kwargs = dict(kwargs)
    for a in args:
        if type(a) not in _ATOMIC:
            return _dumps((data, args, kwargs))
    for v in kwargs.values():
        if type(v) not in _ATOMIC:
            return _dumps((data, args, kwargs))
    return [pickle.dumps((data, args, kwargs), protocol=5)]


def _partition(seq, index, parts):
    """ipyparallel's block distribution: contiguous, sizes differ by at most one."""
    n = len(seq)
    base, extra = divmod(n, parts)
    low = index * base + min(index, extra)
    high = low + base + (1 if index < extra else 0)
    return seq[low:high]


class DirectView(ViewCommon):
    """Engines chosen explicitly: `rc[:]`, `rc[::2]`, `rc[3]`, `rc[[0, 2]]`.

    `block` (default: the client's `block` when the view is made, False unless set) makes
    methods wait and return results instead of AsyncResults. A view whose targets is an int
    returns single values instead of lists.
    """

    def __init__(self, client, targets="all", block=None):
        self.client = client
        self._targets = targets
        self.block = client.block if block is None else block
        self.track = False  # ipyparallel's flag; every result tracks its buffers here (see push)

    # ----- targets and flags -----

    @property
    def targets(self):
        return self._targets

    @targets.setter
    def targets(self, value):
        self._targets = value

    def _resolve(self, targets=None):
        """(list of engine ids, single?) for `targets` or this view's targets."""
        targets = self._targets if targets is None else targets
        return self.client._build_targets(targets), isinstance(targets, int)

    def __repr__(self):
        t = self._targets if isinstance(self._targets, (int, str)) else list(self._targets)
        return f"<DirectView {t}>"

    def __len__(self):
        ids, single = self._resolve()
        return 1 if single else len(ids)

    @staticmethod
    def _check_flags(kwargs):
        for key in kwargs:
            if key not in ("block", "track"):
                raise KeyError(f"invalid flag {key!r}; valid flags: block, track")

    def set_flags(self, **kwargs):
        """Set view flags: block, track."""
        self._check_flags(kwargs)  # all or nothing: a bad flag changes none
        for key, value in kwargs.items():
            setattr(self, key, value)

    @contextlib.contextmanager
    def temp_flags(self, **kwargs):
        """Flags set only inside a `with` block."""
        self._check_flags(kwargs)  # an unknown flag is a KeyError, not an AttributeError
        saved = {k: getattr(self, k) for k in kwargs}
        self.set_flags(**kwargs)
        try:
            yield
        finally:
            self.set_flags(**saved)

    def _finish(self, ar, block):
        block = self.block if block is None else block
        return ar.get() if block else ar

    # ----- execute / run -----

    @recorded
    def execute(self, code, silent=True, targets=None, block=None):
        """Run `code` in each engine's namespace. Returns the AsyncResult (waited for if blocking).

        Each engine's value is an ExecuteReply, as in ipyparallel; with silent=False a trailing
        expression's value is its `execute_result` (IPython's Out[...]: reply.data holds
        'text/plain' and any richer types).
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be str, not {type(code).__name__}")
        ids, single = self._resolve(targets)
        child = self.client._native.execute(ids, code, not silent)
        request = Request.of("execute", (code, not silent), "execute", "execute")
        ar = AsyncResult(self.client, [child], "execute", "execute", single=single, resend=[request])
        if self.block if block is None else block:
            ar.get()  # as ipyparallel: a blocking execute raises the engines' errors
        return ar

    def run(self, filename, targets=None, block=None):
        """Execute the contents of a local file on the engines."""
        with open(filename) as f:
            return self.execute(f.read() + "\n", targets=targets, block=block)

    # ----- apply -----

    @recorded
    def _apply(self, f, args, kwargs, targets=None):
        if not callable(f) and not isinstance(f, Reference):  # a Reference: the engine's function
            raise TypeError(f"{f!r} is not callable")
        ids, single = self._resolve(targets)
        segments = _dumps_call(f, args, kwargs)
        child = self.client._native.apply(ids, segments)
        fname = getattr(f, "__name__", "apply")
        return AsyncResult(self.client, [child], fname, "pickle", single=single,
                           resend=[Request.of("apply", (segments,), "pickle", fname, segments)])

    def apply(self, __testudo_f, *args, **kwargs):
        """f(*args, **kwargs) on every target; blocks according to `view.block`."""
        return self._finish(self._apply(__testudo_f, args, kwargs), None)

    def apply_async(self, __testudo_f, *args, **kwargs):
        return self._apply(__testudo_f, args, kwargs)

    def apply_sync(self, __testudo_f, *args, **kwargs):
        return self._apply(__testudo_f, args, kwargs).get()

    # ----- map -----

    def map(self, f, *sequences, block=None, track=False, return_exceptions=False):
        """Parallel map: the sequences are split in contiguous blocks, one per engine. (`track`:
        see push.) With `return_exceptions`, an engine's RemoteError takes the place of its
        block in the result instead of being raised."""
        ar = self._map(f, sequences)
        ar._return_exceptions = bool(return_exceptions)
        return self._finish(ar, block)

    def map_async(self, f, *sequences, **kwargs):
        kwargs["block"] = False
        return self.map(f, *sequences, **kwargs)

    def imap(self, f, *sequences, **kwargs):
        """An iterator over map_async's results (the whole map is sent at once)."""
        return iter(self.map_async(f, *sequences, **kwargs))

    def map_sync(self, f, *sequences, **kwargs):
        kwargs["block"] = True
        return self.map(f, *sequences, **kwargs)

    @recorded
    def _map(self, f, sequences, call=_helpers.map_chunk, fname=None, ordered=True):
        # `ordered` is for ParallelFunction on either view: a DirectView's parts come back in order.
        if not sequences:
            raise ValueError("map needs at least one sequence")
        # An AsyncResult indexes its results but its len() counts engines: iterate it instead.
        seqs = [s if hasattr(s, "__getitem__") and hasattr(s, "__len__") and not isinstance(s, AsyncResult)
                else list(s) for s in sequences]
        n = min(len(s) for s in seqs)
        ids, _ = self._resolve()
        if not ids:
            raise error.NoEnginesRegistered()
        parts = min(len(ids), n) or 1
        children = []
        for i in range(parts):
            chunks = [_partition(s[:n] if len(s) != n else s, i, parts) for s in seqs]
            children.append(self.client._native.apply([ids[i]], _dumps_call(call, (f, *chunks), {})))
        return AsyncMapResult(self.client, children, fname or getattr(f, "__name__", "map"), "pickle")

    # ----- namespace: push / pull / scatter / gather -----

    @recorded
    def push(self, ns, targets=None, block=None, track=None):
        """Update the engines' namespaces with the dict `ns` (values pickled, arrays out-of-band).

        Arrays are sent from their own memory, without a copy: change them only once
        `ar.sent` (`ar.wait_for_send()`). Every result here tracks that, so `track` (ipyparallel's
        switch for it) changes nothing."""
        if not isinstance(ns, dict):
            raise TypeError(f"Must be a dict, not {type(ns).__name__}")
        for key in ns:
            if not isinstance(key, str):
                raise TypeError(f"keys must be str, not {type(key).__name__}")
        ids, single = self._resolve(targets)
        child = self.client._native.push(ids, _dumps(ns))
        return self._finish(AsyncResult(self.client, [child], "push", "none", single=single), block)

    def update(self, ns):
        """Same as push(ns)."""
        return self.push(ns)

    @recorded
    def pull(self, names, targets=None, block=None):
        """Values of `names` (a str, or a list of str) from each engine."""
        if isinstance(names, str):
            name_list, transform = [names], None
        elif isinstance(names, (list, tuple, set)):
            name_list = list(names)
            for key in name_list:
                if not isinstance(key, str):
                    raise TypeError(f"keys must be str, not type {type(key).__name__!r}")
            # The engine returns a bare value for one name; a list was asked for.
            transform = (lambda v: [v]) if len(name_list) == 1 else None
        else:
            raise TypeError(f"names must be strs, not {names!r}")
        ids, single = self._resolve(targets)
        child = self.client._native.pull(ids, name_list)
        ar = AsyncResult(self.client, [child], "pull", "pickle", single=single, transform=transform)
        return self._finish(ar, block)

    def get(self, key_s):
        """Blocking pull."""
        return self.pull(key_s, block=True)

    def __getitem__(self, key):
        return self.get(key)

    def __setitem__(self, key, value):
        self.update({key: value})

    @recorded
    def scatter(self, key, seq, dist="b", flatten=False, targets=None, block=None, track=None):
        """Split `seq` in contiguous blocks and push one block to each engine as `key`."""
        if dist != "b":
            raise ValueError("only the block distribution ('b') is supported")
        ids, _ = self._resolve(targets)
        if not ids:
            raise error.NoEnginesRegistered()
        children = []
        for i, engine in enumerate(ids):
            part = _partition(seq, i, len(ids))
            value = part[0] if flatten and len(part) == 1 else part
            children.append(self.client._native.push([engine], _dumps({key: value})))
        ar = AsyncResult(self.client, children, "scatter", "none")
        if self.block if block is None else block:
            ar.get()
            return None
        return ar

    @recorded
    def gather(self, key, dist="b", targets=None, block=None):
        """Concatenate `key` from each engine, in engine order (the inverse of scatter)."""
        if dist != "b":
            raise ValueError("only the block distribution ('b') is supported")
        ids, _ = self._resolve(targets)
        children = [self.client._native.pull([engine], [key]) for engine in ids]
        ar = _GatherResult(self.client, children, "gather", "pickle")
        return self._finish(ar, block)

    @recorded
    def clear(self, targets=None, block=None):
        """Remove every user variable from the engines' namespaces."""
        code = ("for __testudo_name in [n for n in list(globals()) if not n.startswith('__')]:\n"
                "    del globals()[__testudo_name]\n")
        ids, single = self._resolve(targets)
        ar = AsyncResult(self.client, [self.client._native.execute(ids, code, False)], "clear", "none", single=single)
        return self._finish(ar, block)

    # ----- imports, decorators, waiting -----

    @property
    def importer(self):
        """sync_imports(local=True), for `with view.importer: import numpy`."""
        return self.sync_imports(True)

    @contextlib.contextmanager
    def sync_imports(self, local=True, quiet=False):
        """Imports inside this `with` block also happen on the engines.

            with view.sync_imports():
                import numpy
        """
        local_import = builtins.__import__
        pending = []
        done = set()

        def view_import(name, globals=None, locals=None, fromlist=(), level=0):
            # Every absolute import written inside the block, in any module (not only
            # __main__, as ipyparallel); imports those imports make are skipped.
            key = (name, tuple(fromlist or ()))
            if level <= 0 and not pending_inner and key not in done:
                done.add(key)
                statement = (f"from {name} import {', '.join(fromlist)}" if fromlist else f"import {name}")
                if not quiet:
                    print(f"importing {','.join(fromlist) + ' from ' if fromlist else ''}{name} on engine(s)")
                pending.append(self.execute(statement, block=False))
            if local:
                pending_inner.append(1)
                try:
                    return local_import(name, globals, locals, fromlist, level)
                finally:
                    pending_inner.pop()
            return None

        pending_inner = []
        builtins.__import__ = view_import
        try:
            yield
        finally:
            builtins.__import__ = local_import
        for ar in pending:
            ar.get()

    def remote(self, block=None, **flags):
        """Decorator: calling the function runs it on this view's engines (apply)."""
        from ._remotefunction import remote
        return remote(self, block=block, **flags)

    def parallel(self, dist="b", block=None, **flags):
        """Decorator: calling the function on a sequence splits it across engines;
        `f.map(seq)` maps element-wise."""
        from ._remotefunction import parallel
        return parallel(self, dist=dist, block=block, **flags)

    def activate(self, suffix=""):
        """Register the %px magics (with `suffix`) for this view in IPython."""
        from ._magics import activate
        activate(self, suffix)

    # ipyparallel's view methods: the switch for this process (testudo.use_dill() ...), and the
    # engines import the pickler, so one missing there fails now rather than at the next call.

    def use_cloudpickle(self):
        """testudo.use_cloudpickle(); returns the engines' `import cloudpickle` (an AsyncResult)."""
        use_cloudpickle()
        return self._import_on_engines("cloudpickle", "use_cloudpickle")

    def use_pickle(self):
        """testudo.use_pickle() (back to cloudpickle, the default here)."""
        use_pickle()
        return self._import_on_engines("cloudpickle", "use_pickle")

    def use_dill(self):
        """testudo.use_dill(); returns the engines' `import dill` (an AsyncResult)."""
        use_dill()
        return self._import_on_engines("dill", "use_dill")


    @recorded
    def _import_on_engines(self, module, fname):
        # None per engine, as ipyparallel's view.use_dill() (an apply) gives, not ExecuteReplies.
        ids, single = self._resolve()
        ar = AsyncResult(self.client, [self.client._native.execute(ids, f"import {module}", False)], fname, "none",
                         single=single)
        if self.block:
            ar.get()
        return ar


class BroadcastView(DirectView):
    """ipyparallel's BroadcastView: one request fanned out by the controller to every target,
    one reply per engine. Every multi-engine request of a DirectView already travels this way
    here, so it behaves as a DirectView."""

    def __repr__(self):
        return super().__repr__().replace("DirectView", "BroadcastView", 1)
