"""The Slurm engine launcher against a real single-node Slurm (munged, slurmctld and slurmd from
Debian, configured in a temporary directory by this test, stopped by pid): engines run as the
tasks of one batch job, more engines are another job, stopping cancels the jobs, and nothing
is left queued or running. PBS has no server in Debian: its script and commands are checked
in src/launch/batch_launcher_test.cc, and here only that a missing qsub is a clear error.

Needs root, munged, slurmctld, slurmd and sbatch (scripts/setup installs them).
"""

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile

import pytest

import testudo
from conftest import TESTUDO_BIN, pid_gone, wait_until

DAEMONS = {name: shutil.which(name) or f"/usr/sbin/{name}" for name in ("munged", "slurmctld", "slurmd")}
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("sbatch") or not all(os.path.exists(p) for p in DAEMONS.values()),
    reason="needs root, munge and Slurm (scripts/setup installs munge, slurmctld, slurmd, slurm-client)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Slurm:
    """A one-node Slurm in a temporary directory; SLURM_CONF points sbatch and friends at it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="testudo-slurm-")
        os.chmod(self.dir, 0o755)
        d = pathlib.Path(self.dir)
        for sub in ("munge", "state", "spool", "log"):
            (d / sub).mkdir()
        (d / "munge").chmod(0o700)
        (d / "munge" / "munge.key").write_bytes(os.urandom(1024))
        (d / "munge" / "munge.key").chmod(0o400)
        self.processes = []
        subprocess.run([DAEMONS["munged"], f"--key-file={d}/munge/munge.key", f"--socket={d}/munge/munge.socket",
                        f"--pid-file={d}/munge/munged.pid", f"--log-file={d}/munge/munged.log",
                        f"--seed-file={d}/munge/seed", "--force"], check=True, capture_output=True)
        self.munged_pid = int((d / "munge" / "munged.pid").read_text())
        host = socket.gethostname()
        (d / "slurm.conf").write_text(f"""ClusterName=testudo
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs=2 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
""")
        self.conf = str(d / "slurm.conf")
        env = dict(os.environ, SLURM_CONF=self.conf)
        for daemon in ("slurmctld", "slurmd"):
            self.processes.append(subprocess.Popen([DAEMONS[daemon], "-D", "-f", self.conf], env=env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ok = wait_until(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                                         text=True).stdout, 30)
        assert ok, "Slurm did not come up: " + (d / "log" / "slurmctld.log").read_text()[-2000:]

    def queue(self):
        return subprocess.run(["squeue", "-h", "-o", "%i %T"], env=dict(os.environ, SLURM_CONF=self.conf),
                              capture_output=True, text=True).stdout.split("\n")

    def close(self):
        for p in self.processes:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        try:
            os.kill(self.munged_pid, 15)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm():
    s = Slurm()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def private_home(monkeypatch, slurm):
    home = tempfile.mkdtemp(prefix="testudo-pytest-batch-")
    monkeypatch.setenv("TESTUDO_HOME", home)
    monkeypatch.setenv("TESTUDO_BIN", TESTUDO_BIN)
    monkeypatch.setenv("SLURM_CONF", slurm.conf)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_engines_run_as_a_slurm_job_and_stop_with_it(slurm, private_home):
    cluster = testudo.Cluster(n=2, engines="slurm", profile="slurm")
    rc = cluster.start_and_connect_sync()
    try:
        assert len(rc.ids) == 2
        (members,) = cluster.engines.values()
        (job,) = members
        job_id = job.split(":", 1)[1]
        assert rc[:].apply_sync(lambda: __import__("os").environ.get("SLURM_JOB_ID")) == [job_id, job_id]
        assert any(line.startswith(f"{job_id} RUNNING") for line in slurm.queue())
        engine_pids = rc[:].apply_sync(os.getpid)

        more = cluster.start_engines_sync(1)
        rc.wait_for_engines(3, timeout=60)
        (second,) = cluster.engines[more]
        assert second != job and second.startswith("job:")
        cluster.stop_engines_sync(more)  # scancel
        assert wait_until(lambda: len(rc.ids) == 2, 30)
        assert wait_until(lambda: not any(line.startswith(second[4:] + " ") for line in slurm.queue()), 30)
    finally:
        rc.close()
        cluster.stop_cluster_sync()
    assert wait_until(lambda: slurm.queue() == [""], 30), slurm.queue()
    for pid in engine_pids:
        assert wait_until(lambda p=pid: pid_gone(p), 15), f"engine {pid} outlived its job"


def test_a_failing_submission_and_a_bad_template_are_clear_errors(slurm, private_home):
    def cli(*args):
        return subprocess.run([TESTUDO_BIN, "--profile", "bad", "cluster", "start", "-n", "1", "--engines", "slurm",
                               "--daemonize", *args], capture_output=True, text=True, timeout=120)

    no_partition = cli("--queue", "no_such_partition")
    assert no_partition.returncode == 1
    assert "sbatch" in no_partition.stderr and "failed" in no_partition.stderr
    assert "invalid partition" in no_partition.stderr.lower(), no_partition.stderr
    template = pathlib.Path(private_home) / "engines.sbatch"
    template.write_text("#!/bin/sh\n#SBATCH --ntasks={n}\n#SBATCH --mem={memory}\nsrun {engine_command}\n")
    bad = cli("--batch-template", str(template))
    assert bad.returncode == 2
    assert "unknown variable {memory}" in bad.stderr and str(template) in bad.stderr
    assert slurm.queue() == [""], "nothing was left queued"
    listed = subprocess.run([TESTUDO_BIN, "cluster", "list"], capture_output=True, text=True).stdout
    assert "bad " not in listed and "running" not in listed

