"""Function dependencies, as ipyparallel's (controller/dependency.py): @require, @depend,
dependent and Dependency.

A `dependent` function checks its condition on the engine before it runs and raises
UnmetDependency when the condition is false. For a load-balanced task the client then sends it
again to an engine of the view that has not tried it yet, and fails it with
ImpossibleDependency once every engine has (_DependentScheduling, below): ipyparallel's
scheduler does the same in the controller. On a DirectView the UnmetDependency is the result.

This module travels by value (cloudpickle), so engines need not have testudo installed.
"""

import sys
import threading
from types import ModuleType

# In the client: thread id -> the globals of the dependent function being called there, where
# @require imports. A plain dict: this module's globals travel by value with its functions.
_calling = {}


class UnmetDependency(Exception):
    """Raised on the engine when a dependent function's condition does not hold; the client
    reads it by name (error.UnmetDependency)."""


def _engine():
    """The engine's helper module (it holds the namespace), or None in the client."""
    return sys.modules.get("_testudo_engine")


def _namespace():
    engine = _engine()
    if engine is not None:
        return engine._ns
    return _calling.get(threading.get_ident()) or sys.modules["__main__"].__dict__


def _interactive(f):
    """On an engine, f with the engine's namespace as globals when f comes from __main__ (what
    the engine does for the function of an apply; a dependent's inner functions need it too)."""
    engine = _engine()
    return engine._interactive(f) if engine is not None else f


class depend:
    """Decorator: `@depend(df, *args, **kwargs)` makes a function run only where
    df(*args, **kwargs) does not return False (and does not raise UnmetDependency)."""

    def __init__(self, _wrapped_f, *args, **kwargs):
        self.f = _wrapped_f
        self.args = args
        self.kwargs = kwargs

    def __call__(self, f):
        return dependent(f, self.f, *self.args, **self.kwargs)


class dependent:
    """A function that runs only where its dependency function `df(*dargs, **dkwargs)` holds.
    An object rather than a closure, so that it pickles."""

    def __init__(self, _wrapped_f, _wrapped_df, *dargs, **dkwargs):
        self.f = _wrapped_f
        self.__name__ = getattr(_wrapped_f, "__name__", "f")
        self.df = _wrapped_df
        self.dargs = dargs
        self.dkwargs = dkwargs

    def check_dependency(self):
        thread = threading.get_ident()
        saved = _calling.get(thread)
        if _engine() is None:
            _calling[thread] = getattr(self.f, "__globals__", None)
        try:
            met = _interactive(self.df)(*self.dargs, **self.dkwargs)
        finally:
            if saved is None:
                _calling.pop(thread, None)
            else:
                _calling[thread] = saved
        if met is False:
            raise UnmetDependency(f"{getattr(self.df, '__name__', 'dependency')} returned False")

    def __call__(self, *args, **kwargs):
        self.check_dependency()
        return _interactive(self.f)(*args, **kwargs)


def _require(*modules, **mapping):
    """The dependency of @require: imports `modules` into the engine's namespace (the client's
    __main__ when called here) and puts `mapping` there; an ImportError is an unmet dependency."""
    namespace = _namespace()
    for name in modules:
        try:
            exec(f"import {name}", namespace)
        except ImportError:
            raise UnmetDependency(name) from None
    for name, obj in mapping.items():
        namespace[name] = _interactive(obj)
    return True


def require(*objects, **mapping):
    """Decorator: the function runs only where these modules import (they are imported into
    the engine's namespace first); functions given are put there under their names, other
    objects by keyword (`@require('numpy', helper, scale=2)`)."""
    names = []
    for obj in objects:
        if isinstance(obj, ModuleType):
            obj = obj.__name__
        if isinstance(obj, str):
            names.append(obj)
        elif hasattr(obj, "__name__"):
            mapping[obj.__name__] = obj
        else:
            raise TypeError(f"Objects other than modules and functions must be passed by kwarg, but got: {type(obj)}")
    return depend(_require, *names, **mapping)


class Dependency(set):
    """A set of msg_ids a task depends on (for `after` / `follow`), as ipyparallel's: `all`
    (every one, or any one), `success` and `failure` (which outcomes count as met). The
    controller applies them: a task waits until its dependencies are met and fails with
    ImpossibleDependency once they no longer can be; with `follow` it runs where the tasks
    that count ran."""

    all = True
    success = True
    failure = True

    def __init__(self, dependencies=(), all=True, success=True, failure=False):
        if isinstance(dependencies, dict):
            all = dependencies.get("all", True)
            success = dependencies.get("success", success)
            failure = dependencies.get("failure", failure)
            dependencies = dependencies.get("dependencies", [])
        if isinstance(dependencies, str) or hasattr(dependencies, "msg_ids"):
            dependencies = [dependencies]
        ids = []
        for d in dependencies:
            if isinstance(d, str):
                ids.append(d)
            elif hasattr(d, "msg_ids"):  # an AsyncResult
                ids.extend(d.msg_ids)
            else:
                raise TypeError(f"invalid dependency type: {type(d)!r}")
        set.__init__(self, ids)
        self.all = all
        if not (success or failure):
            raise ValueError("Must depend on at least one of successes or failures!")
        self.success = success
        self.failure = failure

    def check(self, completed, failed=None):
        """Whether the dependency is met, given the msg_ids completed (and failed)."""
        if len(self) == 0:
            return True
        against = set()
        if self.success:
            against = set(completed)
        if failed is not None and self.failure:
            against = against.union(failed)
        return self.issubset(against) if self.all else not self.isdisjoint(against)

    def unreachable(self, completed, failed=None):
        """Whether the dependency can no longer be met."""
        if len(self) == 0:
            return False
        against = set()
        if not self.success:
            against = set(completed)
        if failed is not None and not self.failure:
            against = against.union(failed)
        return not self.isdisjoint(against) if self.all else self.issubset(against)

    def as_dict(self):
        return dict(dependencies=list(self), all=self.all, success=self.success, failure=self.failure)
