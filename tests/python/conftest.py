"""Fixtures: real testudo clusters (controller + engine processes, TLS, capabilities) in a
private $TESTUDO_HOME, started with the `testudo` binary under test and stopped by pid."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTUDO_BIN = os.environ.get("TESTUDO_BIN", str(ROOT / "build" / "testudo"))


class Cluster:
    """A running cluster of `n` engines under `profile` in its own TESTUDO_HOME."""

    def __init__(self, n, profile="pytest", extra=(), before_start=None):
        self.n = n
        self.profile = profile
        self.home = tempfile.mkdtemp(prefix="testudo-pytest-")
        os.environ["TESTUDO_HOME"] = self.home
        self.env = dict(os.environ)
        if before_start is not None:
            before_start(self)  # e.g. make the owner's identity an encrypted one
        self.run("cluster", "start", "-n", str(n), "--daemonize", *extra)
        pids = json.loads(pathlib.Path(self.path("run", "cluster.json")).read_text())
        self.controller_pid = pids["controller"]
        self.engine_pids = pids["engines"]

    def path(self, *parts):
        return os.path.join(self.home, f"profile_{self.profile}", *parts)

    @property
    def client_file(self):
        return self.path("security", "controller-client.json")

    def run(self, *args, check=True, timeout=120):
        return subprocess.run([TESTUDO_BIN, "--profile", self.profile, *args], env=self.env, check=check,
                              capture_output=True, text=True, timeout=timeout)

    def client(self, **kwargs):
        import testudo
        return testudo.Client(profile=self.profile, **kwargs)

    def stop(self):
        self.run("cluster", "stop", check=False)
        for pid in [*self.engine_pids, self.controller_pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """Four engines shared by the tests of one module (tests must not kill them)."""
    c = Cluster(4)
    yield c
    c.stop()


@pytest.fixture
def rc(cluster):
    os.environ["TESTUDO_HOME"] = cluster.home
    client = cluster.client()
    client.wait_for_engines(cluster.n, timeout=30)
    yield client
    client.close()


@pytest.fixture
def sealed(cluster):
    """A client of the module's cluster that seals end to end (docs/security.md)."""
    os.environ["TESTUDO_HOME"] = cluster.home
    client = cluster.client(e2e=True)
    client.wait_for_engines(cluster.n, timeout=30)
    yield client
    client.close()


@pytest.fixture
def dview(rc):
    view = rc[:]
    view.block = True
    yield view
    view.clear(block=True)


@pytest.fixture
def own_cluster():
    """A factory for clusters a test may damage (kill engines, stop the controller)."""
    made = []

    def make(n=2, extra=()):
        c = Cluster(n, profile=f"own{len(made)}", extra=extra)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def _status_bytes(pid, field):
    """A memory field of /proc/<pid>/status (VmHWM: peak resident, VmRSS: resident), in bytes."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def peak_rss(pid=None):
    """The peak resident set of process `pid` (default: this one), in bytes."""
    return _status_bytes(pid, "VmHWM")


def current_rss(pid=None):
    """The resident set of process `pid` (default: this one), in bytes."""
    return _status_bytes(pid, "VmRSS")


def wait_until(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def pid_gone(pid):
    """True once `pid` has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def kill_processes(cluster):
    """SIGKILL every process of a damaged cluster, so its teardown need not wait for them."""
    for pid in [*cluster.engine_pids, cluster.controller_pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
