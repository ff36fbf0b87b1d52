"""@view.remote and @view.parallel (and testudo.remote / testudo.parallel): functions that run
on engines when called."""

import functools

from . import _helpers


def _check_flags(view, flags):
    # An unknown or bad flag fails when the decorator is made, not at the first call.
    with view.temp_flags(**flags):
        pass


def remote(view, block=None, **flags):
    """Decorator: calling the function runs it on `view`'s engines (view.apply). `flags` are
    view flags (view.temp_flags) set for each call."""
    _check_flags(view, flags)

    def remote_function(f):
        return RemoteFunction(view, f, block=block, **flags)
    return remote_function


def parallel(view, dist="b", block=None, ordered=True, **flags):
    """Decorator: calling the function on sequences splits them across `view`'s engines and
    calls it once per part; `f.map(...)` applies it element-wise."""
    if dist != "b":
        raise ValueError("only the block distribution ('b') is supported")
    _check_flags(view, flags)

    def parallel_function(f):
        return ParallelFunction(view, f, dist=dist, block=block, ordered=ordered, **flags)
    return parallel_function


class RemoteFunction:
    """Calling it runs f(*args, **kwargs) on the view's engines (view.apply)."""

    def __init__(self, view, f, block=None, **flags):
        _check_flags(view, flags)
        self.view = view
        self.func = f
        self.block = block
        self.flags = flags
        functools.update_wrapper(self, f)
        if getattr(f, "__doc__", None):
            self.__doc__ = f"{type(self).__name__} wrapping:\n{f.__doc__}"  # as ipyparallel's

    def _block(self):
        return self.view.block if self.block is None else self.block

    def __call__(self, *args, **kwargs):
        block = self._block()
        with self.view.temp_flags(**self.flags):
            ar = self.view.apply_async(self.func, *args, **kwargs)
        return ar.get() if block else ar


class ParallelFunction(RemoteFunction):
    """Calling it with sequences splits them across engines and calls f once per part (one
    part per engine on a DirectView, one per element on a LoadBalancedView, as ipyparallel);
    the results are concatenated. `.map(...)` applies f element-wise instead."""

    def __init__(self, view, f, dist="b", block=None, ordered=True, **flags):
        if dist != "b":
            raise ValueError("only the block distribution ('b') is supported")
        super().__init__(view, f, block=block, **flags)
        self.dist = dist
        self.ordered = ordered

    def __call__(self, *sequences):
        block = self._block()
        with self.view.temp_flags(**self.flags):
            ar = self.view._map(self.func, sequences, call=_helpers.call_on_partition,
                                fname=getattr(self.func, "__name__", "parallel"), ordered=self.ordered)
        return ar.get() if block else ar

    def map(self, *sequences):
        block = self._block()
        with self.view.temp_flags(**self.flags):
            ar = self.view._map(self.func, sequences, ordered=self.ordered)
        return ar.get() if block else ar
