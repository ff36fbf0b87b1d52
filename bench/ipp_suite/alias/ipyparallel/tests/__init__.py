"""setup/teardown/add_engines of ipyparallel's tests, over a testudo cluster (profile 'iptest' in
a private $TESTUDO_HOME, one per test module, as ipyparallel starts one controller per module)."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

TESTUDO_BIN = os.environ.get("TESTUDO_BIN", "testudo")
PROFILE = "iptest"

# Every engine started here, as ipyparallel's test launchers (clienttest filters them with poll()).
launchers = []
_home = None


class EngineProcess:
    """One engine process, with the part of ipyparallel's launcher interface the tests use."""

    def __init__(self, pid):
        self.pid = pid

    def poll(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return 0
        return 0 if state == "Z" else None

    def signal(self, signum):
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self):
        self.signal(signal.SIGTERM)


def _testudo(*args, timeout=120):
    return subprocess.run([TESTUDO_BIN, "--profile", PROFILE, *args], check=True, capture_output=True,
                          text=True, timeout=timeout).stdout


def setup():
    global _home
    _home = tempfile.mkdtemp(prefix="ipp-suite-")
    os.environ["TESTUDO_HOME"] = _home
    _testudo("cluster", "start", "-n", "0", "--daemonize")
    add_engines(1)


def add_engines(n=1, profile=PROFILE, total=False):
    """Start n engines (with total: as many as make n in all) and wait until they registered."""
    import testudo
    rc = testudo.Client(profile=profile)
    try:
        base = len(rc.ids)
        if total:
            n = max(n - base, 0)
        if n == 0:
            return []
        pids = [int(word) for word in _testudo("engines", "start", "-n", str(n)).split()]
        engines = [EngineProcess(pid) for pid in pids]
        launchers.extend(engines)
        rc.wait_for_engines(base + n, timeout=30)
        return engines
    finally:
        rc.close()


def teardown():
    global _home
    time.sleep(0.2)
    try:
        _testudo("cluster", "stop", timeout=60)
    except subprocess.SubprocessError as e:
        print("cluster stop:", e)
    while launchers:
        launchers.pop().signal(signal.SIGKILL)
    if _home:
        shutil.rmtree(_home, ignore_errors=True)
        _home = None
