"""The SSH engine launcher against real hosts: network namespaces this test makes (veth pairs,
private addresses inside them only), each running a real sshd with a host key and an
authorized key made for the test, driven by the real OpenSSH client. Engines start in the
namespaces, reach the controller over the veth link, leave no orphans when their SSH session
is lost, and every bad input is a clear error that leaves nothing running.

Needs root (namespaces), `ip`, `ssh` and `sshd` (scripts/setup installs openssh-server).
"""

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
from conftest import TESTUDO_BIN, pid_gone, wait_until

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("ssh") or not os.path.exists(SSHD),
    reason="needs root, ip, ssh and sshd (scripts/setup installs openssh-server)")


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


class Hosts:
    """Namespaces (B and C by default), each an sshd at 10.<net>.<i>.2 linked to this host's
    10.<net>.<i>.1. bench/ssh_launch.py uses it too."""

    def __init__(self, names=("b", "c")):
        self.dir = tempfile.mkdtemp(prefix="testudo-ssh-")
        self.tag = f"tdo{os.getpid() % 100000}"
        self.net = 200 + os.getpid() % 50
        self.sshd = []
        self.namespaces = []
        self.address = {}
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{self.dir}/host_key")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{self.dir}/user_key")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{self.dir}/stranger_key")
        shutil.copy(f"{self.dir}/user_key.pub", f"{self.dir}/authorized_keys")
        host_key = pathlib.Path(f"{self.dir}/host_key.pub").read_text().split()[:2]
        known = []
        for i, name in enumerate(names, start=1):
            ns = f"{self.tag}-{name}"
            outside, inside = f"{ns}-h", f"{ns}-n"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", ns)
            sh("ip", "addr", "add", f"10.{self.net}.{i}.1/24", "dev", outside)
            sh("ip", "link", "set", outside, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.{self.net}.{i}.2/24", "dev", inside)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            address = f"10.{self.net}.{i}.2"
            self.address[name] = address
            config = f"{self.dir}/sshd_{name}"
            pathlib.Path(config).write_text(
                f"ListenAddress {address}\nHostKey {self.dir}/host_key\nAuthorizedKeysFile {self.dir}/authorized_keys\n"
                "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\n")
            self.sshd.append(subprocess.Popen(["ip", "netns", "exec", ns, SSHD, "-D", "-e", "-f", config],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            known.append(f"{address} {' '.join(host_key)}")
        pathlib.Path(f"{self.dir}/known_hosts").write_text("\n".join(known) + "\n")
        self.ssh_config = self.write_ssh_config("ssh_config", "user_key")
        # The connection files name this host's address on the first link; the other namespaces
        # reach that address over their own links (this host owns it: no forwarding involved).
        self.controller_address = f"10.{self.net}.1.1"
        for i, name in enumerate(names[1:], start=2):
            sh("ip", "netns", "exec", f"{self.tag}-{name}", "ip", "route", "add", f"10.{self.net}.1.0/24", "via",
               f"10.{self.net}.{i}.1")
        for name in names:
            assert wait_until(lambda n=name: self.ssh(n, "true").returncode == 0, 10), f"sshd in {name} not up"

    def write_ssh_config(self, name, key):
        path = f"{self.dir}/{name}"
        pathlib.Path(path).write_text(
            f"Host *\n  IdentityFile {self.dir}/{key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {self.dir}/known_hosts\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  User root\n  ConnectTimeout 3\n")
        return path

    def ssh(self, name, command):
        return subprocess.run(["ssh", "-F", self.ssh_config, self.address[name], command], capture_output=True,
                              text=True, timeout=20)

    def close(self):
        for p in self.sshd:
            p.kill()
            p.wait()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)  # takes its end of the veth pair, and so the pair
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def hosts():
    h = Hosts()
    yield h
    h.close()


@pytest.fixture(autouse=True)
def private_home(monkeypatch):
    home = tempfile.mkdtemp(prefix="testudo-pytest-ssh-")
    monkeypatch.setenv("TESTUDO_HOME", home)
    monkeypatch.setenv("TESTUDO_BIN", TESTUDO_BIN)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def netns_of(pid):
    return sh("ip", "netns", "identify", str(pid)).stdout.strip()


def ssh_cluster(namespaces, profile, engines_per_host):
    return testudo.Cluster(profile=profile, engines="ssh", hosts=engines_per_host, controller_ip="0.0.0.0",
                           controller_location=namespaces.controller_address, ssh_args=["-F", namespaces.ssh_config],
                           remote_testudo=TESTUDO_BIN, remote_dir=f"{namespaces.dir}/remote-{profile}")


def test_engines_on_two_hosts_over_ssh(hosts, private_home):
    cluster = ssh_cluster(hosts, "two", {hosts.address["b"]: 2, hosts.address["c"]: 2})
    rc = cluster.start_and_connect_sync()
    try:
        assert len(rc.ids) == 4
        engine_pids = rc[:].apply_sync(os.getpid)
        assert sorted(netns_of(p) for p in engine_pids) == [f"{hosts.tag}-b"] * 2 + [f"{hosts.tag}-c"] * 2
        assert rc[:].apply_sync(lambda: sum(range(10))) == [45] * 4

        # The engine's secrets reached the hosts only as owner-only files, never in argv or a log.
        remote = pathlib.Path(f"{hosts.dir}/remote-two")
        assert remote.stat().st_mode & 0o777 == 0o700
        for f in remote.iterdir():
            assert f.stat().st_mode & 0o777 == 0o600, f
        capability = json.loads((remote / "controller-engine.json").read_text())["capability"]
        key = (remote / "engine-key.pem").read_text().splitlines()[1]
        for proc in pathlib.Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert capability not in cmdline and key not in cmdline, f"a secret in the argv of {proc.name}"
        for log in pathlib.Path(cluster.profile_dir, "log").iterdir():
            text = log.read_text(errors="replace")
            assert capability not in text and key not in text, f"a secret in {log}"
    finally:
        rc.close()
        cluster.stop_cluster_sync()
    for pid in engine_pids:
        assert wait_until(lambda p=pid: pid_gone(p), 15), f"remote engine {pid} left running"


def test_a_lost_ssh_session_leaves_no_orphans(hosts, private_home):
    cluster = ssh_cluster(hosts, "lost", {hosts.address["b"]: 2, hosts.address["c"]: 1})
    rc = cluster.start_and_connect_sync()
    try:
        by_ns = {}
        for pid in rc[:].apply_sync(os.getpid):
            by_ns.setdefault(netns_of(pid), []).append(pid)
        # The local ssh session that runs B's engines dies as a lost connection would.
        (ssh_pids,) = cluster.engines.values()
        ssh_b = next(p for p in ssh_pids if hosts.address["b"] in pathlib.Path(f"/proc/{p}/cmdline").read_text())
        os.kill(ssh_b, signal.SIGKILL)
        for pid in by_ns[f"{hosts.tag}-b"]:
            assert wait_until(lambda p=pid: pid_gone(p), 15), f"engine {pid} outlived its SSH session"
        assert wait_until(lambda: len(rc.ids) == 1, 20), "the controller dropped B's engines"
        for pid in by_ns[f"{hosts.tag}-c"]:
            assert not pid_gone(pid), "C's engine is untouched"
    finally:
        rc.close()
        cluster.stop_cluster_sync()


def test_bad_hosts_and_keys_are_clear_errors_and_leave_nothing_running(hosts, private_home):
    def cli(*args, profile="errs"):
        return subprocess.run([TESTUDO_BIN, "--profile", profile, *args], capture_output=True, text=True,
                              timeout=120)

    common = ["--ssh-option=-F", f"--ssh-option={hosts.ssh_config}", "--remote-testudo", TESTUDO_BIN,
              "--remote-dir", f"{hosts.dir}/remote-errs"]
    # A controller on loopback cannot be reached from other hosts: refused before anything starts.
    on_loopback = cli("cluster", "start", "--engines", "ssh", "--hosts", hosts.address["b"], *common, "--daemonize")
    assert on_loopback.returncode == 1
    assert "cannot reach a controller at 127.0.0.1" in on_loopback.stderr and "--ip 0.0.0.0" in on_loopback.stderr
    assert "errs" not in cli("cluster", "list").stdout

    assert cli("cluster", "start", "-n", "0", "--ip", "0.0.0.0", "--location", hosts.controller_address,
               "--daemonize").returncode == 0
    try:
        b = hosts.address["b"]
        stranger = hosts.write_ssh_config("ssh_stranger", "stranger_key")
        cases = [
            (["--hosts", b, "--ssh-option=-F", f"--ssh-option={stranger}", "--remote-testudo", TESTUDO_BIN],
             f"cannot copy the engine's files to {b} over SSH: root@{b}: Permission denied"),
            (["--hosts", f"10.{hosts.net}.1.99", *common], f"cannot copy the engine's files to 10.{hosts.net}.1.99"),
            (["--hosts", b, "--ssh-option=-F", f"--ssh-option={hosts.ssh_config}", "--remote-testudo",
              "/nonexistent/testudo", "--timeout", "20"], f"/nonexistent/testudo not found on {b}"),
            (["--hosts", "b:many", *common], "is not HOST or HOST:N"),
        ]
        for args, why in cases:
            failed = cli("engines", "start", "--engines", "ssh", *args)
            assert failed.returncode in (1, 2), failed
            assert why in failed.stderr, failed.stderr
        listed = cli("engines", "list").stdout.splitlines()[1:]
        assert all("exited" in line for line in listed), listed
        assert "0 engine(s)" in cli("status").stdout
    finally:
        cli("cluster", "stop")


def test_a_client_reaches_a_controller_behind_a_gateway_through_an_ssh_tunnel(hosts, private_home):
    # The controller listens on loopback inside B: from here only B's sshd is reachable.
    ns_b = f"{hosts.tag}-b"
    started = subprocess.run(["ip", "netns", "exec", ns_b, TESTUDO_BIN, "--profile", "gw", "cluster", "start", "-n",
                              "1", "--daemonize"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        with pytest.raises((ConnectionError, TimeoutError)):
            testudo.Client(profile="gw", timeout=3)  # direct: 127.0.0.1 here is not B's loopback
        rc = testudo.Client(profile="gw", sshserver=f"root@{hosts.address['b']}", ssh_args=["-F", hosts.ssh_config])
        try:
            tunnel_pid = rc._tunnel.pid
            rc.wait_for_engines(1, timeout=30)
            engine_pid = rc[:].apply_sync(os.getpid)[0]
            assert netns_of(engine_pid) == ns_b
            assert rc[:].apply_sync(lambda: 6 * 7) == [42]
        finally:
            rc.close()
        assert wait_until(lambda: pid_gone(tunnel_pid), 10), "the tunnel closes with the client"

        stranger = hosts.write_ssh_config("ssh_stranger_client", "stranger_key")
        with pytest.raises(ConnectionError) as info:
            testudo.Client(profile="gw", sshserver=f"root@{hosts.address['b']}", ssh_args=["-F", stranger])
        assert "Permission denied" in str(info.value)

        # The command line and an engine take the same way in (--ssh).
        via = ["--ssh", f"root@{hosts.address['b']}", "--ssh-option=-F", f"--ssh-option={hosts.ssh_config}"]
        direct = subprocess.run([TESTUDO_BIN, "--profile", "gw", "status"], capture_output=True, text=True,
                                timeout=60)
        assert direct.returncode != 0
        status = subprocess.run([TESTUDO_BIN, "--profile", "gw", "status", *via], capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0 and "1 engine(s)" in status.stdout, status.stderr
        refused = subprocess.run([TESTUDO_BIN, "--profile", "gw", "status", "--ssh", f"root@{hosts.address['b']}",
                                  "--ssh-option=-F", f"--ssh-option={stranger}"], capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode == 1 and f"SSH tunnel through root@{hosts.address['b']} failed" in refused.stderr

        engine = subprocess.Popen([TESTUDO_BIN, "--profile", "gw", "engine", *via], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            with testudo.Client(profile="gw", sshserver=f"root@{hosts.address['b']}",
                                ssh_args=["-F", hosts.ssh_config]) as rc:
                rc.wait_for_engines(2, timeout=30)
                namespaces = sorted(netns_of(p) for p in rc[:].apply_sync(os.getpid))
                assert namespaces == ["", ns_b], "one engine in B, one here through the tunnel"
            tunnel = [int(p) for p in sh("pgrep", "-P", str(engine.pid), "ssh", check=False).stdout.split()]
            assert len(tunnel) == 1
        finally:
            engine.kill()  # not a clean exit: the tunnel must still end with it
            engine.wait()
        assert wait_until(lambda: pid_gone(tunnel[0]), 10), "the engine's tunnel ended with it"
    finally:
        subprocess.run(["ip", "netns", "exec", ns_b, TESTUDO_BIN, "--profile", "gw", "cluster", "stop"],
                       capture_output=True, timeout=60)
