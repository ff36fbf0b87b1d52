"""A full disk under the task store (docs/tasks.md "A full disk"; docs/threat-model.md F2):
the controller keeps answering results from memory, says so once (not at the flush rate),
and when it stops before the disk has room again, every task id a client got answers its
result or `lost` after the restart — never "no task N".

The store's directory is a real 4 MiB tmpfs, so these tests need root (mount); they are
skipped otherwise."""

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import testudo
from conftest import TESTUDO_BIN, Cluster, kill_processes, pid_gone, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs for the task store")


class FullDiskCluster(Cluster):
    """A cluster whose profile's state/ (the task store) is a 4 MiB tmpfs."""

    def __init__(self, n, profile):
        self.n = n
        self.profile = profile
        self.home = tempfile.mkdtemp(prefix="testudo-pytest-")
        os.environ["TESTUDO_HOME"] = self.home
        self.env = dict(os.environ)
        self.state = self.path("state")
        os.mkdir(self.path(), 0o700)  # the profile refuses group/other access
        os.mkdir(self.state, 0o700)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", self.state],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            shutil.rmtree(self.home, ignore_errors=True)
            pytest.skip(f"cannot mount a tmpfs (no mount rights here?): {mounted.stderr.strip()}")
        self.mounted = True
        self.controller_pid, self.engine_pids = None, []
        try:
            self.run("cluster", "start", "-n", str(n), "--daemonize", "--reuse")
            pids = json.loads(pathlib.Path(self.path("run", "cluster.json")).read_text())
        except BaseException:
            self.stop()  # the fixture never sees a cluster that did not start: unmount here
            raise
        self.controller_pid = pids["controller"]
        self.engine_pids = pids["engines"]

    def fill(self):
        """Fills the tmpfs to the last byte."""
        self.filler = os.path.join(self.state, "filler")
        with open(self.filler, "wb", buffering=0) as f:
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e

    def free(self):
        os.remove(self.filler)

    def stop(self):
        if self.controller_pid is not None:
            kill_processes(self)
        if self.mounted:
            subprocess.run(["umount", "-l", self.state], check=False)
            self.mounted = False
        if self.controller_pid is not None:
            super().stop()
        else:
            shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def full_disk_cluster():
    made = []

    def make(n=2):
        c = FullDiskCluster(n, profile=f"full{len(made)}")
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def store_error_lines(c):
    with open(c.path("log", "controller.log"), errors="replace") as f:
        return [line for line in f if "store:" in line and ("ERROR" in line or "failed" in line)]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_controller_stopped_on_a_full_disk_never_forgets_a_task_id(full_disk_cluster, stop_signal):
    c = full_disk_cluster(2)
    rc = c.client()
    rc.wait_for_engines(2, timeout=30)
    lview = rc.load_balanced_view()
    before = [lview.apply_async(lambda i: i * i, i) for i in range(20)]
    assert [ar.get(timeout=30) for ar in before] == [i * i for i in range(20)]
    ids_before = [ar.msg_ids[0] for ar in before]
    # Committed before the disk fills (a flush runs every 20 ms; a read flushes too).
    assert len(rc.result_status(ids_before)["completed"]) == 20
    time.sleep(0.2)

    c.fill()
    during = [lview.apply_async(lambda i: -i, i) for i in range(40)]
    assert [ar.get(timeout=30) for ar in during] == [-i for i in range(40)]
    ids_during = [ar.msg_ids[0] for ar in during]
    time.sleep(1)  # ~50 failed flushes

    # Another connection asks for the finished tasks whose records are only in memory: it is
    # answered at once, from memory.
    other = c.client()
    started = time.monotonic()
    values = other.get_result(ids_during, block=False).get(timeout=10)
    assert values == [-i for i in range(40)]
    assert time.monotonic() - started < 5
    assert sorted(other.result_status(ids_during)["completed"]) == sorted(map(str, ids_during))
    other.close()
    # The failing disk is said once, not at the flush rate.
    assert 1 <= len(store_error_lines(c)) <= 3, store_error_lines(c)

    os.kill(c.controller_pid, stop_signal)
    assert wait_until(lambda: pid_gone(c.controller_pid), timeout=30)
    rc.close()
    c.free()

    log = open(c.path("log", "controller-restarted.log"), "w")
    restarted = subprocess.Popen([TESTUDO_BIN, "--profile", c.profile, "controller", "--reuse"], env=c.env,
                                 stdout=log, stderr=log, start_new_session=True)
    c.controller_pid = restarted.pid
    try:
        after = None

        def connected():
            nonlocal after
            try:
                after = c.client()
                return True
            except (ConnectionError, OSError, TimeoutError):
                return False
        assert wait_until(connected, timeout=60, interval=0.2)
        values = after.get_result(ids_before + ids_during, block=False).get(timeout=30, return_exceptions=True)
        assert values[:20] == [i * i for i in range(20)]
        lost = 0
        for i, v in enumerate(values[20:]):
            if isinstance(v, testudo.error.TaskLost):
                assert v.outcome == testudo.Outcome.LOST and "may or may not have run" in v.evalue
                lost += 1
            else:
                # Recorded before the disk was full to the last page (SQLite reuses its WAL).
                assert v == -i, f"task {ids_during[i]}: {v!r}"
        assert lost > 0  # the disk was full: some records were in memory only when it stopped
        status = after.result_status(ids_before + ids_during)  # KeyError for an unknown id
        assert len(status["completed"]) == 60
        if stop_signal == signal.SIGKILL:  # a SIGTERMed controller sent its engines away
            after.wait_for_engines(2, timeout=60)
            assert after[:].apply_sync(lambda: "new work") == ["new work"] * 2
        print(f"{lost} of 40 tasks finished on the full disk read as lost")
        after.close()
    finally:
        restarted.kill()
        restarted.wait()


def test_a_large_result_the_disk_cannot_hold_is_an_error_and_frees_its_space(full_disk_cluster):
    """A reply spooled to the store's file (docs/protocol.md "Relaying a large reply") meets a
    disk too small for it: the client is told why, the task reads as failed with the reason,
    the half-written file's space comes back at once, and the same engine serves on."""
    c = full_disk_cluster(1)
    rc = c.client()
    try:
        rc.wait_for_engines(1, timeout=30)
        before = os.statvfs(c.state)
        ar = rc[0].apply_async(lambda: b"r" * (32 << 20))  # over 16 MiB: spooled; over the 4 MiB disk
        with pytest.raises(Exception) as raised:
            ar.get(timeout=60)
        assert "could not be stored by the controller" in str(raised.value), repr(raised.value)
        assert "disk full" in str(raised.value) or "No space" in str(raised.value), repr(raised.value)
        after = os.statvfs(c.state)
        assert after.f_bfree * after.f_frsize >= before.f_bfree * before.f_frsize - (1 << 20), \
            "the half-written result still holds the disk"
        assert not [n for n in os.listdir(os.path.join(c.state, "tasks.sqlite.results")) if n.endswith(".tmp")]
        # Recorded as failed with the reason, for a later get_result too.
        rc2 = c.client()
        try:
            with pytest.raises(Exception) as again:
                rc2.get_result(ar.msg_ids[0]).get(timeout=30)
            assert "could not be stored" in str(again.value), repr(again.value)
        finally:
            rc2.close()
        assert rc[0].apply_sync(lambda: 6 * 7) == 42
    finally:
        rc.close()
