"""@view.remote and @view.parallel: functions that run on engines when called."""

import functools

from . import _helpers


class RemoteFunction:
    """Calling it runs f(*args, **kwargs) on the view's engines (view.apply)."""

    def __init__(self, view, f, block=None):
        self.view = view
        self.func = f
        self.block = block
        functools.update_wrapper(self, f)

    def __call__(self, *args, **kwargs):
        block = self.view.block if self.block is None else self.block
        ar = self.view.apply_async(self.func, *args, **kwargs)
        return ar.get() if block else ar


class ParallelFunction(RemoteFunction):
    """Calling it with sequences splits them across engines and calls f once per engine on
    its block; the results are concatenated. `.map(...)` applies f element-wise instead."""

    def __init__(self, view, f, dist="b", block=None):
        if dist != "b":
            raise ValueError("only the block distribution ('b') is supported")
        super().__init__(view, f, block=block)

    def __call__(self, *sequences):
        block = self.view.block if self.block is None else self.block
        ar = self.view._map(self.func, sequences, call=_helpers.call_on_partition,
                            fname=getattr(self.func, "__name__", "parallel"))
        return ar.get() if block else ar

    def map(self, *sequences):
        block = self.view.block if self.block is None else self.block
        ar = self.view._map(self.func, sequences)
        return ar.get() if block else ar
