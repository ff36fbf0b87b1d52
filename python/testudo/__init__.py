"""testudo: a parallel-computing cluster with security on by default.

The Python client, with ipyparallel's API:

    import testudo
    rc = testudo.Client()               # TLS 1.3, pinned controller, capability proof
    rc[:].push(dict(a=5, b=10))
    rc[::2].execute('c = a + b')
    rc[1::2].execute('c = a - b')
    rc[:]['c']                          # [15, -5, 15, -5]

Start a cluster first: `testudo cluster start -n 4` (add --daemonize to return at once), or
from Python, as with ipyparallel.Cluster:

    with testudo.Cluster(n=4) as rc:
        rc[:].apply_sync(os.getpid)
"""

from . import error
from ._asyncresult import AsyncHubResult, AsyncMapResult, AsyncResult
from ._client import Client
from ._cluster import Cluster
from ._dependency import Dependency, depend, dependent, require
from ._lbview import LoadBalancedView
from ._reference import Reference
from ._remotefunction import ParallelFunction, RemoteFunction, parallel, remote
from ._testudo import Outcome
from ._viewbase import ViewExecutor
from ._view import BroadcastView, DirectView, use_cloudpickle, use_dill, use_pickle
from .error import CompositeError, EngineError, NoEnginesRegistered, RemoteError, SealBroken, TimeoutError

__all__ = [
    "Client", "Cluster", "DirectView", "BroadcastView", "LoadBalancedView", "AsyncResult", "AsyncMapResult", "AsyncHubResult", "RemoteError", "CompositeError",
    "EngineError", "NoEnginesRegistered", "SealBroken", "TimeoutError", "Outcome", "error", "interactive",
    "use_cloudpickle", "use_pickle", "use_dill", "parallel", "remote", "ParallelFunction", "RemoteFunction",
    "Reference", "Dependency", "depend", "dependent", "require", "ViewExecutor",
    "register_joblib_backend",
]

__version__ = "0.1.0"


def interactive(f):
    """Make `f` run with the engine's namespace as its globals, like a function typed in
    __main__ (ipyparallel's @interactive)."""
    f.__module__ = "__main__"
    return f


def register_joblib_backend(name=None, make_default=False):
    """Make `joblib.Parallel(backend=name)` run on the default profile's cluster (one started
    for it when none runs), as ipyparallel's register_joblib_backend. Without `name`, under
    both 'ipyparallel' (ipyparallel's name, so its code runs unchanged) and 'testudo'."""
    from ._joblib import register
    register(name=name, make_default=make_default)


def load_ipython_extension(ipython):
    """`%load_ext testudo`: connect to the default cluster and register %px and friends."""
    from ._magics import load_ipython_extension as load
    load(ipython)
