"""testudo.Cluster: start, grow, shrink and stop a cluster from Python, shaped like
ipyparallel.Cluster. It drives the `testudo` command (cluster start / engines start|stop /
cluster stop), so a cluster started here is the same as one started in a shell, and
`testudo --profile P status` sees it.

    import testudo
    with testudo.Cluster(n=4) as rc:          # controller + 4 engines, a connected client
        rc[:].apply_sync(os.getpid)
    # everything stopped here

    cluster = testudo.Cluster(n=2)
    rc = cluster.start_and_connect_sync()
    cluster.start_engines_sync(2)             # grow to 4
    cluster.stop_cluster_sync()

Every method has a blocking form with a `_sync` suffix and an awaitable form without it, as in
ipyparallel. Engines run on this machine (each its own process, or the ranks of one mpiexec:
engines="mpi"), on other hosts over SSH (engines="ssh") or as a batch job (engines="slurm" or
"pbs"); the controller here or on another host over SSH (controller="ssh").
"""

import asyncio
import atexit
import os
import random
import shutil
import string
import subprocess
import time
import weakref

_live_clusters = weakref.WeakSet()


@atexit.register
def _stop_clusters_at_exit():
    for cluster in list(_live_clusters):
        if cluster.shutdown_atexit and cluster.running:
            try:
                cluster.stop_cluster_sync()
            except Exception:  # noqa: BLE001 - at exit, a cluster already gone is fine
                pass


def _find_program():
    program = os.environ.get("TESTUDO_BIN") or shutil.which("testudo")
    if not program:
        raise FileNotFoundError("the `testudo` command was not found on PATH (scripts/setup installs it into "
                                "/usr/local/bin; or set TESTUDO_BIN to its path)")
    return program


def _testudo_home():
    return os.environ.get("TESTUDO_HOME") or os.path.join(os.path.expanduser("~"), ".testudo")


class Cluster:
    """A controller and engines on this machine, started and stopped from Python.

    n: engines to start with start_cluster() (default: the number of cores).
    profile: the testudo profile holding the cluster's files; default: a new profile
        "cluster-<cluster_id>" that is removed again when the cluster stops cleanly.
    controller_ip, controller_location, controller_args: the controller's --ip, --location
        and further `testudo cluster start` options (e.g. ["--trust", "learn"]).
    engines: "local" (a process per engine), "mpi" (one `mpiexec -n N` whose ranks are the
        engines; user code can use mpi4py; mpiexec and mpi_args, e.g. ["--oversubscribe"], go
        to mpiexec) or "ssh" (engines on `hosts`, {"node1": 4, "node2": 4}, through the ssh
        client; ssh_args go to ssh, e.g. ["-F", "ssh_config"]; remote_testudo and remote_dir as
        `testudo engines start --help` says). For ssh the controller must listen where the hosts
        reach it: controller_ip="0.0.0.0" (and controller_location). "slurm" or "pbs": one
        batch job (sbatch/qsub) whose tasks are the engines; batch_template, queue and
        batch_args as `testudo engines start --help` says.
    controller: "local" (this machine) or "ssh": on controller_host ("[user@]host") over SSH,
        owned by you (only your client certificate and the engines' go there; see
        `testudo cluster start --help`), listening on every interface there unless
        controller_ip says otherwise; ssh_args and remote_testudo apply, controller_dir is where
        its files go there.
    engine_args: further `testudo engines start` options for every engine (e.g. ["--tag", "gpu=1"]).
    auto_restart: an engine that dies is started again (a new engine id; at most 5 times in
        60 s), as `testudo cluster start --restart-engines`.
    engine_timeout: seconds to wait for engines to register.
    shutdown_atexit: stop the cluster when this Python process exits (default True).
    """

    def __init__(self, n=None, *, profile=None, cluster_id=None, engines="local", controller_ip=None,
                 controller_location=None, controller_args=(), engine_args=(), engine_timeout=60,
                 shutdown_atexit=True, log_level=None, mpiexec=None, mpi_args=(), hosts=None, ssh_args=(),
                 remote_testudo=None, remote_dir=None, auto_restart=False, batch_template=None, queue=None,
                 batch_args=(), controller="local", controller_host=None, controller_dir=None):
        if controller not in ("local", "ssh"):
            raise ValueError(f"testudo.Cluster(controller={controller!r}): the controller runs 'local' (here) or "
                             "'ssh' (on controller_host)")
        if (controller == "ssh") != bool(controller_host):
            raise ValueError("testudo.Cluster: controller='ssh' goes with controller_host='[user@]host'")
        self.controller_launcher = controller
        self.controller_host = controller_host
        self.controller_dir = controller_dir
        if engines not in ("local", "mpi", "ssh", "slurm", "pbs"):
            raise ValueError(f"testudo.Cluster(engines={engines!r}): engines start 'local' (a process each), "
                             "'mpi' (one mpiexec), 'ssh' (on hosts), 'slurm' or 'pbs' (a batch job)")
        if engines == "ssh" and not hosts:
            raise ValueError("testudo.Cluster(engines='ssh') needs hosts, e.g. hosts={'node1': 4, 'node2': 4}")
        self.engine_launcher = engines
        self.mpiexec = mpiexec
        self.mpi_args = list(mpi_args)
        # {"node1": 4, "user@node2": 2}, or "node1:4,node2" as on the command line
        self.hosts = hosts if isinstance(hosts, (str, type(None))) else ",".join(f"{h}:{k}" for h, k in hosts.items())
        self.ssh_args = list(ssh_args)
        self.remote_testudo = remote_testudo
        self.remote_dir = remote_dir
        self.auto_restart = auto_restart
        self.batch_template = batch_template
        self.queue = queue
        self.batch_args = list(batch_args)
        self.n = n
        self.cluster_id = cluster_id or (
            f"{int(time.time())}-{''.join(random.choice(string.ascii_lowercase + string.digits) for _ in range(4))}")
        self._own_profile = profile is None
        self.profile = profile or f"cluster-{self.cluster_id}"
        self.controller_ip = controller_ip
        self.controller_location = controller_location
        self.controller_args = list(controller_args)
        self.engine_args = list(engine_args)
        self.engine_timeout = engine_timeout
        self.shutdown_atexit = shutdown_atexit
        self.log_level = log_level
        self.engines = {}  # engine set id -> [pids], as ipyparallel's Cluster.engines
        self._engine_counts = {}  # engine set id -> engines in it (an mpi set has one pid)
        self.running = False
        self._context_client = None
        _live_clusters.add(self)

    def __repr__(self):
        state = f"{sum(self._engine_counts.values())} engines" if self.running else "stopped"
        return f"<testudo.Cluster(profile={self.profile!r}, {state})>"

    @property
    def profile_dir(self):
        return os.path.join(_testudo_home(), f"profile_{self.profile}")

    # ----- the testudo command -----

    def _run(self, *args, timeout=None):
        argv = [_find_program(), "--profile", self.profile]
        if self.log_level:
            argv += ["--log-level", self.log_level]
        proc = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            raise RuntimeError(f"`testudo {' '.join(args)}` failed: {why}")
        return proc.stdout

    # ----- controller -----

    def start_controller_sync(self):
        """Start the controller (no engines). Returns self."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        args = ["cluster", "start", "-n", "0", "--daemonize", "--timeout", str(self.engine_timeout)]
        if self.controller_ip:
            args += ["--ip", self.controller_ip]
        if self.controller_location:
            args += ["--location", self.controller_location]
        if self.controller_launcher == "ssh":
            args += ["--controller", "ssh", "--controller-host", self.controller_host,
                     *[f"--ssh-option={arg}" for arg in self.ssh_args]]
            if self.remote_testudo:
                args += ["--remote-testudo", self.remote_testudo]
            if self.controller_dir:
                args += ["--controller-dir", self.controller_dir]
        self._run(*args, *self.controller_args, timeout=self.engine_timeout + 30)
        self.running = True
        return self

    def stop_controller_sync(self):
        """Stop the controller and every engine of the cluster."""
        self.stop_cluster_sync()

    # ----- engines -----

    def _default_n(self):
        """Engines to start when not told: n, else what the hosts hold (ssh), else the cores."""
        if self.n is not None:
            return self.n
        if self.engine_launcher == "ssh":
            return sum(int(part.rpartition(":")[2]) if ":" in part else 1 for part in self.hosts.split(","))
        return os.cpu_count() or 1

    def _new_engine_set_id(self):
        base = engine_set_id = str(int(time.time()))
        i = 1
        while engine_set_id in self.engines:
            engine_set_id = f"{base}-{i}"
            i += 1
        return engine_set_id

    def start_engines_sync(self, n=None, engine_set_id=None):
        """Start n more engines (default: self.n, else what hosts holds, else the cores) and wait until they
        have registered. Returns the engine set id, for stop_engines()."""
        if not self.running:
            raise RuntimeError(f"{self!r} is not running: start_controller() or start_cluster() first")
        n = n if n is not None else self._default_n()
        engine_set_id = engine_set_id or self._new_engine_set_id()
        launcher = ["--engines", self.engine_launcher] + (["--restart-engines"] if self.auto_restart else [])
        if self.engine_launcher == "mpi":
            launcher += [f"--mpi-arg={arg}" for arg in self.mpi_args]
            if self.mpiexec:
                launcher += ["--mpiexec", self.mpiexec]
        if self.engine_launcher == "ssh":
            launcher += ["--hosts", self.hosts, *[f"--ssh-option={arg}" for arg in self.ssh_args]]
            if self.remote_testudo:
                launcher += ["--remote-testudo", self.remote_testudo]
            if self.remote_dir:
                launcher += ["--remote-dir", self.remote_dir]
        if self.engine_launcher in ("slurm", "pbs"):
            if self.batch_template:
                launcher += ["--batch-template", self.batch_template]
            if self.queue:
                launcher += ["--queue", self.queue]
            launcher += [f"--batch-arg={arg}" for arg in self.batch_args]
        out = self._run("engines", "start", "-n", str(n), "--timeout", str(self.engine_timeout), *launcher,
                        *self.engine_args, timeout=self.engine_timeout + 30)
        # The processes of the set (one per engine, the one mpiexec, an ssh session per host), or
        # "job:<id>" for a batch job (slurm, pbs).
        self.engines[engine_set_id] = [int(word) if word.isdigit() else word for word in out.split()]
        self._engine_counts[engine_set_id] = n
        return engine_set_id

    def stop_engines_sync(self, engine_set_id=None):
        """Stop one engine set, or all engines when engine_set_id is None."""
        if engine_set_id is None:
            if self.running:
                self._run("engines", "stop")
            self.engines.clear()
            self._engine_counts.clear()
            return
        members = self.engines.pop(engine_set_id)
        self._engine_counts.pop(engine_set_id, None)
        pids = [str(m) for m in members if isinstance(m, int)]
        jobs = [m.split(":", 1)[1] for m in members if isinstance(m, str) and m.startswith("job:")]
        if pids or jobs:
            self._run("engines", "stop", *(["--pids", ",".join(pids)] if pids else []),
                      *(["--jobs", ",".join(jobs)] if jobs else []))

    def stop_engine_sync(self, engine_id):
        """Stop one engine by its engine id (rc.ids)."""
        self._run("engines", "stop", "--ids", str(engine_id))
        self._forget_dead_engines()

    def restart_engines_sync(self, engine_set_id=None):
        """Stop and start again an engine set (or every set): the same number of new engines."""
        for set_id in [engine_set_id] if engine_set_id is not None else list(self.engines):
            n = self._engine_counts.get(set_id, len(self.engines[set_id]))
            self.stop_engines_sync(set_id)
            self.start_engines_sync(n, engine_set_id=set_id)

    def signal_engines_sync(self, signum, engine_set_id=None):
        """Send signal `signum` (e.g. signal.SIGINT) to the engines of a set, or to all."""
        sets = [engine_set_id] if engine_set_id is not None else list(self.engines)
        for set_id in sets:
            for pid in self.engines[set_id]:
                if not isinstance(pid, int):
                    continue  # a batch job: no process of ours to signal
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

    def signal_engine_sync(self, signum, engine_id):
        """Send signal `signum` to the engine with this engine id."""
        os.kill(self._pid_of(engine_id), signum)

    def _engine_table(self):
        rows = self._run("engines", "list").splitlines()[1:]
        return [row.split() for row in rows]

    def _pid_of(self, engine_id):
        for row in self._engine_table():
            if len(row) >= 2 and row[1] == str(engine_id):
                return int(row[0])
        raise KeyError(f"engine {engine_id} was not started by {self!r}")

    def _forget_dead_engines(self):
        alive = {int(row[0]) for row in self._engine_table() if len(row) >= 3 and row[2] != "exited"}
        for set_id in list(self.engines):
            self.engines[set_id] = [p for p in self.engines[set_id] if p in alive]

    # ----- the whole cluster -----

    def start_cluster_sync(self, n=None):
        """Start the controller and n engines (default: self.n). Returns self."""
        self.start_controller_sync()
        try:
            count = n if n is not None else self._default_n()
            if count:
                self.start_engines_sync(count)
        except BaseException:
            self.stop_cluster_sync()
            raise
        return self

    def connect_client_sync(self, **client_kwargs):
        """A testudo.Client connected to this cluster. Should its connection file name an SSH
        gateway (controller_args=["--ssh-server", ...]), the cluster's ssh_args apply to the tunnel."""
        from ._client import Client
        if self.ssh_args:
            client_kwargs.setdefault("ssh_args", self.ssh_args)
        return Client(profile=self.profile, **client_kwargs)

    def start_and_connect_sync(self, n=None):
        """start_cluster(n), then a connected client once all n engines are ready."""
        self.start_cluster_sync(n)
        client = self.connect_client_sync()
        count = sum(self._engine_counts.values())
        if count:
            client.wait_for_engines(count, timeout=self.engine_timeout)
        return client

    def stop_cluster_sync(self):
        """Stop the engines and the controller. A profile this Cluster made is removed."""
        if self._context_client is not None:
            self._context_client.close()
            self._context_client = None
        if self.running:
            self._run("cluster", "stop", timeout=60)
            self.running = False
        self.engines.clear()
        self._engine_counts.clear()
        if self._own_profile:
            shutil.rmtree(self.profile_dir, ignore_errors=True)

    # ----- context managers -----

    def __enter__(self):
        self._context_client = self.start_and_connect_sync()
        return self._context_client

    def __exit__(self, *exc):
        self.stop_cluster_sync()

    async def __aenter__(self):
        self._context_client = await self.start_and_connect()
        return self._context_client

    async def __aexit__(self, *exc):
        await self.stop_cluster()


def _awaitable(name):
    sync = getattr(Cluster, name + "_sync")

    async def method(self, *args, **kwargs):
        return await asyncio.to_thread(sync, self, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = sync.__doc__
    return method


# ipyparallel's spelling in some versions and in the issue tracker: add_engines.
Cluster.add_engines_sync = Cluster.start_engines_sync

for _name in ("add_engines", "start_controller", "stop_controller", "start_engines", "stop_engines", "stop_engine",
              "restart_engines", "signal_engines", "signal_engine", "start_cluster", "connect_client",
              "start_and_connect", "stop_cluster"):
    setattr(Cluster, _name, _awaitable(_name))
