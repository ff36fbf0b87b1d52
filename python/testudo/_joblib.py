"""joblib's parallel backend over a LoadBalancedView (ipyparallel's client/_joblib.py):
`joblib.Parallel(backend='ipyparallel')` (or 'testudo') after testudo.register_joblib_backend() or
view.register_joblib_backend(). Engines need joblib importable: joblib's batches of calls are
pickled by reference to it."""

from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend


class TestudoBackend(AutoBatchingMixin, ParallelBackendBase):
    """Each batch of calls is one load-balanced task; as many run at once as the view has
    engines. Without a view: a client of the default profile's cluster, or a cluster started
    for it (and stopped by terminate) when none runs."""

    def __init__(self, view=None, **kwargs):
        super().__init__(**kwargs)
        self._cluster = None
        self._client_owner = view is None
        if view is None:
            from ._client import Client
            try:
                client = Client()
            except FileNotFoundError:
                from ._cluster import Cluster
                self._cluster = Cluster()
                client = self._cluster.start_and_connect_sync()
            client.wait_for_engines(1, timeout=60)
            view = client.load_balanced_view()
        self._view = view

    def effective_n_jobs(self, n_jobs):
        """A view runs len(view) tasks at a time."""
        return len(self._view)

    def apply_async(self, func, callback=None):
        future = self._view.apply_async(func)
        if callback:
            future.add_done_callback(lambda f: callback(f.result()))
        return future

    def terminate(self):
        """Closes the client and stops the cluster if this backend made them."""
        if self._client_owner:
            self._view.client.close()
        if self._cluster is not None:
            self._cluster.stop_cluster_sync()
            self._cluster = None


def register(name=None, make_default=False, view=None):
    """Register the backend under `name` (None: 'ipyparallel' and 'testudo') with joblib, for
    `view` or the default cluster."""
    if view is None:
        factory = TestudoBackend
    else:
        def factory(**kwargs):
            return TestudoBackend(view=view, **kwargs)
    for each in ("ipyparallel", "testudo") if name is None else (name,):
        register_parallel_backend(each, factory, make_default=make_default)
