"""testudo.Cluster, shaped like ipyparallel.Cluster: start and connect, a context manager,
growing and shrinking the engine set, signals, restart, and clean stops. Real processes."""

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import testudo
from conftest import TESTUDO_BIN, pid_gone, wait_until


@pytest.fixture(autouse=True)
def private_home(monkeypatch):
    home = tempfile.mkdtemp(prefix="testudo-pytest-cluster-")
    monkeypatch.setenv("TESTUDO_HOME", home)
    monkeypatch.setenv("TESTUDO_BIN", TESTUDO_BIN)
    yield home
    subprocess.run(["rm", "-rf", home], check=False)


def _pids(rc):
    return sorted(rc[:].apply_sync(os.getpid))


def test_context_manager_starts_connects_and_stops_everything(private_home):
    cluster = testudo.Cluster(n=2)
    with cluster as rc:
        assert len(rc.ids) == 2
        pids = _pids(rc)
        assert sorted(p for s in cluster.engines.values() for p in s) == pids
        profile_dir = cluster.profile_dir
        assert os.path.isdir(profile_dir)
    assert not cluster.running
    for pid in pids:
        assert wait_until(lambda p=pid: pid_gone(p), 10), f"engine {pid} still running"
    assert not os.path.exists(profile_dir), "the cluster's own profile is removed after a clean stop"


def test_engines_are_added_and_removed_by_set_and_by_id(private_home):
    cluster = testudo.Cluster(n=1, profile="grow")
    rc = cluster.start_and_connect_sync()
    try:
        first_set = next(iter(cluster.engines))
        added = cluster.start_engines_sync(2)
        rc.wait_for_engines(3, timeout=30)
        assert len(rc.ids) == 3
        # `testudo engines list` sees what the Cluster started.
        listed = subprocess.run([TESTUDO_BIN, "--profile", "grow", "engines", "list"], capture_output=True, text=True,
                                check=True).stdout
        for pid in cluster.engines[added]:
            assert str(pid) in listed

        cluster.stop_engines_sync(first_set)
        assert wait_until(lambda: len(rc.ids) == 2, 15)
        victim = rc.ids[0]
        cluster.stop_engine_sync(victim)
        assert wait_until(lambda: victim not in rc.ids, 15)
        assert len(rc.ids) == 1
        assert sum(len(p) for p in cluster.engines.values()) == 1
        # The profile was the caller's: it stays.
    finally:
        rc.close()
        cluster.stop_cluster_sync()
    assert os.path.isdir(cluster.profile_dir)


def test_signal_and_restart(private_home):
    cluster = testudo.Cluster(n=1, profile="signals")
    rc = cluster.start_and_connect_sync()
    try:
        view = rc[:]
        ar = view.apply_async(lambda: __import__("time").sleep(30))
        time.sleep(0.5)
        cluster.signal_engines_sync(signal.SIGINT)  # interrupts the task, as a KeyboardInterrupt
        with pytest.raises(testudo.RemoteError) as info:
            ar.get(timeout=10)
        assert "KeyboardInterrupt" in str(info.value)

        old = _pids(rc)
        cluster.restart_engines_sync()
        assert wait_until(lambda: len(rc.ids) == 1, 30)
        assert _pids(rc) != old
    finally:
        rc.close()
        cluster.stop_cluster_sync()


def test_async_forms_and_errors(private_home):
    async def run():
        cluster = testudo.Cluster(n=1)
        async with cluster as rc:
            assert len(rc.ids) == 1
            await cluster.add_engines(1)  # ipyparallel's other name for start_engines
            rc.wait_for_engines(2, timeout=30)
        assert not cluster.running

    asyncio.run(run())

    with pytest.raises(ValueError):
        testudo.Cluster(n=1, engines="lsf")
    with pytest.raises(ValueError) as info:
        testudo.Cluster(n=1, engines="ssh")
    assert "needs hosts" in str(info.value)
    cluster = testudo.Cluster(n=1)
    with pytest.raises(RuntimeError) as info:
        cluster.start_engines_sync(1)
    assert "not running" in str(info.value)


def test_engines_command_errors_are_clear(private_home):
    def testudo_cli(*args):
        return subprocess.run([TESTUDO_BIN, "--profile", "errs", *args], capture_output=True, text=True)

    none = testudo_cli("engines", "start", "-n", "1")
    assert none.returncode == 1
    assert "no cluster of profile 'errs' is running" in none.stderr
    cluster = testudo.Cluster(n=1, profile="errs").start_cluster_sync()
    try:
        stranger = testudo_cli("engines", "stop", "--pids", "1")
        assert stranger.returncode == 2
        assert "pid 1 is not an engine of the cluster" in stranger.stderr
        unknown = testudo_cli("engines", "stop", "--ids", "99")
        assert unknown.returncode == 1
        assert "engine 99 is not registered" in unknown.stderr
        zero = testudo_cli("engines", "start", "-n", "0")
        assert zero.returncode == 2
        # Nothing was stopped by the refused requests.
        assert len(cluster.engines) == 1
        assert "ready" in testudo_cli("engines", "list").stdout
    finally:
        cluster.stop_cluster_sync()


def test_cluster_settings_live_in_the_profile_and_the_command_line_wins(private_home):
    profile_dir = os.path.join(private_home, "profile_kept")
    os.makedirs(profile_dir, mode=0o700)
    settings = os.path.join(profile_dir, "cluster.json")

    def start(*args):
        return subprocess.run([TESTUDO_BIN, "--profile", "kept", "cluster", "start", "--daemonize", *args],
                              capture_output=True, text=True, timeout=120)

    def stop():
        subprocess.run([TESTUDO_BIN, "--profile", "kept", "cluster", "stop"], capture_output=True, check=True)

    with open(settings, "w") as f:
        f.write('{"n": 3, "tag": ["site=lab"]}')
    assert start().returncode == 0
    try:
        with testudo.Client(profile="kept") as rc:
            assert len(rc.ids) == 3
            assert rc.select_ids(site="lab") == rc.ids
    finally:
        stop()
    assert start("-n", "1").returncode == 0
    try:
        with testudo.Client(profile="kept") as rc:
            assert len(rc.ids) == 1
    finally:
        stop()

    for text, why in [('{"engines_count": 3}', 'unknown setting "engines_count"'),
                      ('{"n": "many"}', '"n"'),
                      ('[3]', "not a JSON object")]:
        with open(settings, "w") as f:
            f.write(text)
        refused = start()
        assert refused.returncode == 2, refused.stderr
        assert why in refused.stderr and settings in refused.stderr


def test_cluster_list_and_clean_after_a_controller_is_killed(private_home):
    def cli(*args):
        return subprocess.run([TESTUDO_BIN, *args], capture_output=True, text=True, timeout=60)

    alive = testudo.Cluster(n=1, profile="alive").start_cluster_sync()
    doomed = testudo.Cluster(n=2, profile="doomed").start_cluster_sync()
    try:
        rows = {line.split()[0]: line.split() for line in cli("cluster", "list").stdout.splitlines()[1:]}
        assert rows["alive"][1] == "running" and rows["alive"][3] == "1/1"
        assert rows["doomed"][1] == "running" and rows["doomed"][3] == "2/2"

        engine_pids = [p for s in doomed.engines.values() for p in s]
        os.kill(int(rows["doomed"][2]), signal.SIGKILL)  # a crashed controller leaves its pid file behind
        assert wait_until(lambda: "stale" in cli("cluster", "list").stdout, 10)
        cleaned = cli("cluster", "clean")
        assert "removed the stale cluster of profile doomed" in cleaned.stderr
        for pid in engine_pids:
            assert wait_until(lambda p=pid: pid_gone(p), 10), "clean stops the engines of a dead controller"
        rows = {line.split()[0] for line in cli("cluster", "list").stdout.splitlines()[1:]}
        assert rows == {"alive"}, "the running cluster is untouched"
    finally:
        doomed.running = False
        alive.stop_cluster_sync()


MPI_ARGS = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec (scripts/setup installs openmpi-bin)")
def test_mpi_engines_are_ranks_that_can_allreduce(private_home):
    cluster = testudo.Cluster(n=4, engines="mpi", mpi_args=MPI_ARGS, profile="mpi")
    rc = cluster.start_and_connect_sync()
    try:
        assert len(rc.ids) == 4
        (mpiexec_pid,) = next(iter(cluster.engines.values()))  # the set is one mpiexec
        ranks = sorted(tags["mpi_rank"] for tags in rc.engine_tags().values())
        assert ranks == [0, 1, 2, 3]
        assert {tags["mpi_size"] for tags in rc.engine_tags().values()} == {4}

        def total():
            from mpi4py import MPI
            comm = MPI.COMM_WORLD
            return comm.allreduce(comm.rank + 1)

        assert rc[:].apply_sync(total) == [10, 10, 10, 10]
        rank_pids = rc[:].apply_sync(os.getpid)
        cluster.stop_engines_sync()  # signals mpiexec, which ends its ranks
        assert wait_until(lambda: not rc.ids, 20)
        for pid in [mpiexec_pid, *rank_pids]:
            assert wait_until(lambda p=pid: pid_gone(p), 20), f"{pid} left running"
    finally:
        rc.close()
        cluster.stop_cluster_sync()


def test_an_unknown_launcher_or_a_missing_mpiexec_is_a_clear_error(private_home):
    def cli(*args):
        return subprocess.run([TESTUDO_BIN, "--profile", "bad", "cluster", "start", "-n", "1", *args],
                              capture_output=True, text=True, timeout=60)

    unknown = cli("--engines", "pbs-ish")
    assert unknown.returncode == 2 and "unknown engine launcher 'pbs-ish'" in unknown.stderr
    no_qsub = cli("--engines", "pbs")
    assert no_qsub.returncode == 1 and "qsub was not found on PATH" in no_qsub.stderr
    missing = cli("--engines", "mpi", "--mpiexec", "no-such-mpiexec")
    assert missing.returncode == 1 and "no-such-mpiexec was not found on PATH" in missing.stderr
    listed = subprocess.run([TESTUDO_BIN, "cluster", "list"], capture_output=True, text=True).stdout
    assert "bad" not in listed, "nothing was started"


def test_a_killed_engine_is_restarted_with_a_new_id_and_the_cluster_keeps_its_size(private_home):
    cluster = testudo.Cluster(n=2, profile="phoenix", auto_restart=True)
    rc = cluster.start_and_connect_sync()
    try:
        old_ids = rc.ids
        victim = rc[old_ids[0]].apply_sync(os.getpid)
        os.kill(victim, signal.SIGKILL)

        def replaced():  # one look at the ids: two could see the victim gone and not yet back
            ids = rc.ids
            return len(ids) == 2 and old_ids[0] not in ids

        assert wait_until(replaced, 30), rc.ids
        (new_id,) = set(rc.ids) - set(old_ids)
        # An engine is listed from its welcome; its signed facts follow one round trip later.
        assert wait_until(lambda: "restarts" in rc.engine_tags().get(new_id, {}), 10)
        tags = rc.engine_tags()
        assert tags[new_id]["restarts"] == 1
        assert rc[new_id].apply_sync(lambda: 6 * 7) == 42
        # The pid the launcher tracks is the supervisor's: `engines list` still names every engine.
        listed = subprocess.run([TESTUDO_BIN, "--profile", "phoenix", "engines", "list"], capture_output=True,
                                text=True, check=True).stdout.splitlines()[1:]
        assert sorted(int(line.split()[1]) for line in listed) == rc.ids
        status = subprocess.run([TESTUDO_BIN, "--profile", "phoenix", "status"], capture_output=True, text=True,
                                check=True).stdout.splitlines()
        table = status[next(i for i, line in enumerate(status) if line.startswith("engine ")) + 1:]
        restarts = {int(line.split()[0]): line.split()[-1] for line in table}
        assert restarts[new_id] == "1" and restarts[old_ids[1]] == "0", status
        supervisors = [p for s in cluster.engines.values() for p in s]
        # SIGINT to the supervisor interrupts the engine's user code, as to a plain engine.
        ar = rc[new_id].apply_async(lambda: __import__("time").sleep(30))
        time.sleep(0.5)
        cluster.signal_engines_sync(signal.SIGINT)
        with pytest.raises(testudo.RemoteError):
            ar.get(timeout=10)
    finally:
        rc.close()
        cluster.stop_cluster_sync()
    for pid in supervisors:
        assert wait_until(lambda p=pid: pid_gone(p), 15), "a clean stop is not a death: no restart"


def test_a_supervisor_gives_up_after_its_restart_limit(private_home):
    cluster = testudo.Cluster(n=0, profile="limit").start_cluster_sync()
    log = os.path.join(cluster.profile_dir, "log", "restarting-engine.log")
    try:
        with open(log, "w") as out:
            supervisor = subprocess.Popen([TESTUDO_BIN, "--profile", "limit", "engine", "--restart", "--restart-limit",
                                           "1"], stdout=out, stderr=subprocess.STDOUT)
        with cluster.connect_client_sync() as rc:
            for _ in range(2):
                rc.wait_for_engines(1, timeout=30)
                os.kill(rc[:].apply_sync(os.getpid)[0], signal.SIGKILL)
                wait_until(lambda: not rc.ids, 15)
        assert supervisor.wait(timeout=30) == 1
        text = open(log).read()
        assert "restarting it" in text and "restarted 1 times within 60 s: giving up" in text
    finally:
        cluster.stop_cluster_sync()
