"""The three systems under comparison, behind one small interface.

Each peer class starts a local cluster of N engines/workers with the strongest security the
system offers out of the box, and exposes the client operations the workloads need. A peer
runs alone in its own Python process (bench/peer_run.py), so the client libraries, their
threads and event loops never share a process.

    start(n)            -> seconds from "start the cluster" to "all n engines ready"
    stop()
    apply_rt()          one trivial call on engine 0, blocking
    execute_rt()        one trivial `execute` on engine 0, blocking (None: not offered)
    submit_lb(f)        a future for f() placed by the peer's load balancer
    submit_direct(f,i)  a future for f() on engine i % n
    wait_all(futures)   block until every future is done (results fetched)
    push(arr)/pull()    move an array to / from engine 0 under the name `a`
    scatter(arr)/gather()  split an array across all engines / put it back together
    controller_pids() / engine_pids()  for resident-memory readings (None: not obtainable)
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _noop():
    return None


# The trivial task. peer_run.py replaces it with a function defined in its __main__, which
# every peer's serializer (cloudpickle) sends by value; this module is not importable on
# the engines.
NOOP = _noop


class Peer:
    name = "?"
    has_execute = True

    def __init__(self):
        self.notes = []   # configuration facts worth printing beside the numbers
        self.n = 0

    def execute_rt(self):
        return None

    def controller_pids(self):
        return None

    def engine_pids(self):
        return None


class _IpyparallelApi:
    """Workload operations for peers with ipyparallel's client API (testudo shares it by
    design). Needs self.rc, self.views (one DirectView per engine), self.dview, self.lview,
    self.n, and _forget_results() to drop cached or stored results."""

    def _adopt_views(self, n):
        """The views every workload uses, over the first n engines of self.rc."""
        self.ids = sorted(self.rc.ids)[:n]
        self.lview = self.rc.load_balanced_view()
        self.views = [self.rc[i] for i in self.ids]
        self.dview = self.rc[self.ids]

    def _close_client(self):
        if self.rc is not None:
            try:
                self.rc.close()
            except Exception:
                pass
            self.rc = None

    def apply_rt(self):
        return self.views[0].apply_sync(NOOP)

    def execute_rt(self):
        self.views[0].execute("pass", block=True)
        return True

    def submit_lb(self, f):
        return self.lview.apply_async(f)

    def submit_direct(self, f, i):
        return self.views[i % self.n].apply_async(f)

    def wait_all(self, futures):
        for ar in futures:
            ar.get()

    def push(self, arr):
        self.views[0].push({"a": arr}, block=True)

    def pull(self):
        return self.views[0].pull("a", block=True)

    def clear(self):
        self.dview.execute("a = None; b = None", block=True)
        self._forget_results()

    def scatter(self, arr):
        self.dview.scatter("b", arr, block=True)

    def gather(self):
        return self.dview.gather("b", block=True)


# --------------------------------------------------------------------------------------
class Testudo(_IpyparallelApi, Peer):
    """build/testudo cluster start -n N --daemonize, in a private TESTUDO_HOME."""

    name = "testudo"
    cluster_args = []  # extra `cluster start` options (bench/probe.py --cluster-args)
    client_args = {}   # extra testudo.Client options (bench/probe.py --no-e2e: {"e2e": False})

    def __init__(self):
        super().__init__()
        self.exe = os.path.join(REPO, "build", "testudo")
        self.home = tempfile.mkdtemp(prefix="testudo-bench-")
        os.chmod(self.home, 0o700)
        self.env = dict(os.environ, TESTUDO_HOME=self.home)
        os.environ["TESTUDO_HOME"] = self.home  # the Python client resolves the profile from it
        sys.path.insert(0, os.path.join(REPO, "build", "python"))
        import testudo  # noqa: F401  (fails early, before any process is started)
        self.rc = None
        self.procs = None
        self.notes.append("TLS 1.3 (mutual) on every hop, capability HMAC proofs; "
                          "controller store-and-forwards every message")

    def _cli(self, *args, timeout=120):
        return subprocess.run([self.exe, "--profile", "bench", "--log-level", "warning", *args],
                              env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)

    def start(self, n):
        import testudo
        self.n = n
        t0 = time.perf_counter()
        r = self._cli("cluster", "start", "-n", str(n), "--daemonize", *self.cluster_args)
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"testudo cluster start failed ({r.returncode}):\n{r.stdout}")
        with open(os.path.join(self.home, "profile_bench", "run", "cluster.json")) as f:
            self.procs = json.load(f)
        self.rc = testudo.Client(os.path.join(self.home, "profile_bench", "security",
                                              "controller-client.json"), profile="bench", **self.client_args)
        self.rc.wait_for_engines(n, timeout=30)
        self._adopt_views(n)
        return elapsed

    def stop(self):
        self._close_client()
        try:
            self._cli("cluster", "stop", timeout=30)
        except Exception:
            pass
        if self.procs:  # fallback: nothing of ours may survive a benchmark
            for pid in [self.procs.get("controller")] + list(self.procs.get("engines", [])):
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            self.procs = None

    def cleanup(self):
        shutil.rmtree(self.home, ignore_errors=True)

    def _forget_results(self):
        self.rc.purge_results("all")  # the controller records every result; drop the big ones

    def controller_pids(self):
        return [self.procs["controller"]]

    def engine_pids(self):
        return list(self.procs["engines"])

    def purge(self):
        return self.rc.purge_results("all")


# --------------------------------------------------------------------------------------
class Ipyparallel(_IpyparallelApi, Peer):
    """ipyparallel.Cluster(n=N) in a private IPython profile directory (HMAC-signed messages)."""

    name = "ipyparallel"

    def __init__(self):
        super().__init__()
        import ipyparallel
        from IPython.core.profiledir import ProfileDir
        self.ipp = ipyparallel
        self.tmp = tempfile.mkdtemp(prefix="ipp-bench-")
        self.profile_dir = ProfileDir.create_profile_dir(os.path.join(self.tmp, "profile_bench")).location
        self.cluster = None
        self.rc = None
        self.notes.append(f"ipyparallel {ipyparallel.__version__}: HMAC-SHA256 signed messages "
                          "(default session key), no encryption, loopback only")

    def start(self, n):
        self.n = n
        self.cluster = self.ipp.Cluster(n=n, profile_dir=self.profile_dir, cluster_id="bench",
                                        log_level=40, delay=0)
        t0 = time.perf_counter()
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(n, timeout=60)
        elapsed = time.perf_counter() - t0
        self._adopt_views(n)
        return elapsed

    def stop(self):
        self._close_client()
        if self.cluster is not None:
            pids = (self.controller_pids() or []) + (self.engine_pids() or [])
            try:
                self.cluster.stop_cluster_sync()
            except Exception:
                pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self.cluster = None

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _forget_results(self):
        try:
            self.rc.purge_everything()  # the hub and the client cache results; drop the big ones
        except Exception:
            pass

    def controller_pids(self):
        try:
            return [self.cluster.controller.pid]
        except Exception:
            return None

    def engine_pids(self):
        try:
            pids = []
            for es in self.cluster.engines.values():
                pids += [l.pid for l in es.launchers.values()]
            return pids or None
        except Exception:
            return None


# --------------------------------------------------------------------------------------
class Dask(Peer):
    """distributed.LocalCluster(n_workers=N, threads_per_worker=1, processes=True),
    with TLS from Security.temporary() when that works here."""

    name = "dask"
    has_execute = False

    def __init__(self):
        super().__init__()
        import distributed
        self.distributed = distributed
        self.cluster = None
        self.client = None
        self.security = None
        try:
            from distributed.security import Security
            self.security = Security.temporary()
        except Exception as exc:  # cryptography missing or too old
            self.notes.append(f"Security.temporary() failed ({exc!r}): running WITHOUT TLS")
        self.workers = []

    def start(self, n):
        import dask
        d = self.distributed
        self.n = n
        # Workers must not spill or pause on the 1 GB arrays; no dashboard (bokeh may be absent).
        dask.config.set({"distributed.worker.memory.target": False,
                         "distributed.worker.memory.spill": False,
                         "distributed.worker.memory.pause": False,
                         "distributed.worker.memory.terminate": False,
                         "distributed.comm.timeouts.connect": "60s"})
        kw = dict(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                  memory_limit=0, silence_logs=40)
        t0 = time.perf_counter()
        if self.security is not None:
            try:
                self.cluster = d.LocalCluster(security=self.security, **kw)
                self.notes.append(f"distributed {d.__version__}: TLS (Security.temporary(), "
                                  "mutual, self-signed) on every connection; scheduler runs "
                                  "inside the client process (LocalCluster)")
            except Exception as exc:
                self.notes.append(f"LocalCluster with Security.temporary() failed ({exc!r}): "
                                  "running WITHOUT TLS")
                self.security = None
                t0 = time.perf_counter()
        if self.cluster is None:
            self.cluster = d.LocalCluster(**kw)
            if not any("WITHOUT TLS" in x for x in self.notes):
                self.notes.append("running WITHOUT TLS")
        self.client = d.Client(self.cluster, security=self.security) if self.security \
            else d.Client(self.cluster)
        self.client.wait_for_workers(n)
        elapsed = time.perf_counter() - t0
        self.workers = sorted(self.client.scheduler_info()["workers"])[:n]
        return elapsed

    def stop(self):
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
        if self.cluster is not None:
            try:
                self.cluster.close()
            except Exception:
                pass
            self.cluster = None

    def cleanup(self):
        pass

    def apply_rt(self):
        return self.client.submit(NOOP, pure=False, workers=[self.workers[0]]).result()

    def submit_lb(self, f):
        return self.client.submit(f, pure=False)

    def submit_direct(self, f, i):
        return self.client.submit(f, pure=False, workers=[self.workers[i % self.n]])

    def wait_all(self, futures):
        self.client.gather(futures)

    def push(self, arr):
        self._a = self.client.scatter(arr, workers=[self.workers[0]], hash=False)

    def pull(self):
        return self._a.result()

    def clear(self):
        self._a = None
        self._b = None

    def scatter(self, arr):
        import numpy as np
        parts = np.array_split(arr, self.n)
        self._b = [self.client.scatter(p, workers=[w], hash=False)
                   for p, w in zip(parts, self.workers)]

    def gather(self):
        import numpy as np
        return np.concatenate(self.client.gather(self._b))

    def controller_pids(self):
        return None  # LocalCluster's scheduler lives in the client process

    def engine_pids(self):
        pids = self.client.run(os.getpid)
        return [pids[w] for w in self.workers]


PEERS = {"testudo": Testudo, "ipyparallel": Ipyparallel, "dask": Dask}
