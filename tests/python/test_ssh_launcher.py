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
from netns import SSHD, DelayProxy, Hosts, netns_of, sh

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("ssh") or not os.path.exists(SSHD),
    reason="needs root, ip, ssh and sshd (scripts/setup installs openssh-server)")


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

        # The same host from a host file (comments and blank lines allowed) works.
        hostfile = pathlib.Path(hosts.dir) / "hostfile"
        hostfile.write_text(f"# the lab\n\n  {b}:1   # one engine\n")
        good = cli("engines", "start", "--engines", "ssh", "--hostfile", str(hostfile), *common)
        assert good.returncode == 0, good.stderr
        assert "1 engine(s)" in cli("status").stdout
        assert cli("engines", "stop").returncode == 0
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


def test_a_host_cut_off_comes_back_and_retried_tasks_complete_elsewhere(hosts, private_home):
    """The link to B goes down for 15 s: the controller declares B's engine dead (heartbeat
    timeout 3 s), load-balanced tasks with retries finish on C, and B's engine reconnects by
    itself once the link is back."""
    cluster = testudo.Cluster(profile="cut", engines="ssh", hosts={hosts.address["b"]: 1, hosts.address["c"]: 1},
                              controller_ip="0.0.0.0", controller_location=hosts.controller_address,
                              controller_args=["--heartbeat-timeout", "3"], ssh_args=["-F", hosts.ssh_config],
                              remote_testudo=TESTUDO_BIN, remote_dir=f"{hosts.dir}/remote-cut")
    rc = cluster.start_and_connect_sync()
    link_b = f"{hosts.tag}-b-n"
    try:
        by_ns = {netns_of(pid): engine for engine, pid in zip(rc.ids, rc[:].apply_sync(os.getpid))}
        engine_c = by_ns[f"{hosts.tag}-c"]
        lview = rc.load_balanced_view()
        lview.retries = 3
        sh("ip", "netns", "exec", f"{hosts.tag}-b", "ip", "link", "set", link_b, "down")
        cut_at = time.monotonic()
        ar = lview.map_async(lambda x: (x * x, __import__("os").getpid()), range(40))
        squares = ar.get(timeout=60)
        assert [s for s, _ in squares] == [x * x for x in range(40)]
        assert rc.ids == [engine_c], "B's engine was declared dead"
        time.sleep(max(0.0, 15 - (time.monotonic() - cut_at)))
        sh("ip", "netns", "exec", f"{hosts.tag}-b", "ip", "link", "set", link_b, "up")
        assert wait_until(lambda: len(rc.ids) == 2, 60), "B's engine came back by itself"
        (back,) = set(rc.ids) - {engine_c}
        assert netns_of(rc[back].apply_sync(os.getpid)) == f"{hosts.tag}-b"
    finally:
        sh("ip", "netns", "exec", f"{hosts.tag}-b", "ip", "link", "set", link_b, "up", check=False)
        rc.close()
        cluster.stop_cluster_sync()


def test_a_slow_far_link_still_completes_the_reference_example_and_a_map(hosts, private_home):
    """Engines behind 20 ms of round trip (a proxy holding every byte 10 ms each way) and a
    rate-limited link (tc tbf, 20 Mbit/s) still run the README example and a 1,000-task map."""
    port = 20000 + os.getpid() % 20000
    proxy = DelayProxy(hosts.controller_address, "127.0.0.1", port, 0.010)
    link_c = f"{hosts.tag}-c-n"
    sh("ip", "netns", "exec", f"{hosts.tag}-c", "tc", "qdisc", "add", "dev", link_c, "root", "tbf", "rate", "20mbit",
       "burst", "32kbit", "latency", "400ms")
    cluster = testudo.Cluster(profile="far", engines="ssh", hosts={hosts.address["b"]: 2, hosts.address["c"]: 2},
                              controller_ip="127.0.0.1", controller_location=hosts.controller_address,
                              controller_args=["--port", str(port)], ssh_args=["-F", hosts.ssh_config],
                              remote_testudo=TESTUDO_BIN, remote_dir=f"{hosts.dir}/remote-far")
    try:
        rc = cluster.start_and_connect_sync()
        try:
            dview = rc[:]
            dview.block = True
            dview.push(dict(a=5, b=10))
            rc[::2].execute("c = a + b")
            rc[1::2].execute("c = a - b")
            assert dview.pull("c") == [15, -5, 15, -5]
            t = time.monotonic()
            rc[0].apply_sync(lambda: None)
            assert time.monotonic() - t >= 0.04, "the delay is really there (two proxied legs each way)"
            assert rc.load_balanced_view().map_sync(lambda x: x + 1, range(1000)) == list(range(1, 1001))
        finally:
            rc.close()
    finally:
        cluster.stop_cluster_sync()
        proxy.close()
        sh("ip", "netns", "exec", f"{hosts.tag}-c", "tc", "qdisc", "del", "dev", link_c, "root", check=False)
