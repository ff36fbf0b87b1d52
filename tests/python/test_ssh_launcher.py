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
import re
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
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("ssh") or not os.path.exists(SSHD)
    or not shutil.which("nft"),
    reason="needs root, ip, ssh, sshd and nft (scripts/setup installs openssh-server and nftables)")

PYTHONPATH = os.environ.get("PYTHONPATH", "")


@pytest.fixture(scope="module")
def hosts():
    h = Hosts(("a", "b", "c", "d"))
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
            (["--hosts", f"10.{hosts.net}.0.99", *common], f"cannot copy the engine's files to 10.{hosts.net}.0.99"),
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
    """The link to B goes down for 30 s: the controller declares B's engine dead (heartbeat
    timeout 3 s), load-balanced tasks with retries finish on C, and B's engine reconnects by
    itself once the link is back."""
    cluster = testudo.Cluster(profile="cut", engines="ssh", hosts={hosts.address["b"]: 1, hosts.address["c"]: 1},
                              controller_ip="0.0.0.0", controller_location=hosts.controller_address,
                              controller_args=["--heartbeat-timeout", "3"], ssh_args=["-F", hosts.ssh_config],
                              remote_testudo=TESTUDO_BIN, remote_dir=f"{hosts.dir}/remote-cut")
    rc = cluster.start_and_connect_sync()
    link_b = hosts.link["b"]
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
        time.sleep(max(0.0, 30 - (time.monotonic() - cut_at)))
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
    rate-limited, lossy link (tc tbf, 20 Mbit/s; nftables drops 1 % of C's packets each way at
    random: real loss that TCP must repair, as netem would, which this kernel lacks) still run
    the README example and a 1,000-task map."""
    port = 20000 + os.getpid() % 20000
    proxy = DelayProxy(hosts.controller_address, "127.0.0.1", port, 0.010)
    link_c = hosts.link["c"]
    sh("ip", "netns", "exec", f"{hosts.tag}-c", "tc", "qdisc", "add", "dev", link_c, "root", "tbf", "rate", "20mbit",
       "burst", "32kbit", "latency", "400ms")
    hosts.run_in("c", "nft", "add", "table", "inet", "testudo_loss")
    for chain, hook in (("in", "input"), ("out", "output")):
        hosts.run_in("c", "nft", "add", "chain", "inet", "testudo_loss", chain,
                     f"{{ type filter hook {hook} priority 0; }}")
        hosts.run_in("c", "nft", "add", "rule", "inet", "testudo_loss", chain, "meta", "l4proto", "tcp", "numgen",
                     "random", "mod", "100", "<", "1", "counter", "drop")
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
            dropped = hosts.run_in("c", "nft", "list", "table", "inet", "testudo_loss").stdout
            assert any(int(n) > 0 for n in re.findall(r"counter packets (\d+)", dropped)), "packets were dropped"
        finally:
            rc.close()
    finally:
        cluster.stop_cluster_sync()
        proxy.close()
        sh("ip", "netns", "exec", f"{hosts.tag}-c", "tc", "qdisc", "del", "dev", link_c, "root", check=False)
        hosts.run_in("c", "nft", "delete", "table", "inet", "testudo_loss", check=False)


def test_controller_on_a_engines_on_b_and_c_and_a_client_on_d_through_the_gateway(hosts, private_home):
    """The issue's topology: `cluster start --controller ssh` puts the controller on host A
    (owned by this user: only certificates travel there), the ssh launcher puts engines on B
    and C, and a client on D, whose firewall (nftables in D) blocks the controller's port, runs
    the reference example through A's sshd: the connection file's "ssh" field says so."""
    a, b, c = hosts.address["a"], hosts.address["b"], hosts.address["c"]
    controller_dir = f"{hosts.dir}/controller-abcd"
    cluster = testudo.Cluster(profile="abcd", controller="ssh", controller_host=f"root@{a}",
                              controller_dir=controller_dir, controller_args=["--ssh-server", f"root@{a}"],
                              engines="ssh", hosts={b: 1, c: 1}, ssh_args=["-F", hosts.ssh_config],
                              remote_testudo=TESTUDO_BIN, remote_dir=f"{hosts.dir}/remote-abcd")
    rc = cluster.start_and_connect_sync()
    controller_pids = []
    try:
        # Where everything runs.
        controller_pids = [int(p) for p in sh("ip", "netns", "pids", hosts.namespace("a")).stdout.split()
                           if b"controller" in pathlib.Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(controller_pids) == 1, "one controller, in A"
        engine_pids = rc[:].apply_sync(os.getpid)
        assert sorted(netns_of(p) for p in engine_pids) == [hosts.namespace("b"), hosts.namespace("c")]
        client_file = json.loads(pathlib.Path(cluster.profile_dir, "security", "controller-client.json").read_text())
        assert client_file["host"] == a and client_file["ssh"] == f"root@{a}"
        port = client_file["port"]

        # A holds this user's and the engines' certificates, never a private key from here.
        my_key = pathlib.Path(private_home, "identity", "client-key.pem").read_text().splitlines()[1]
        engine_key = pathlib.Path(cluster.profile_dir, "security", "engine-key.pem").read_text().splitlines()[1]
        for f in pathlib.Path(controller_dir).rglob("*"):
            if f.is_file():
                text = f.read_text(errors="replace")
                assert my_key not in text and engine_key not in text, f"a private key from here in {f}"
        assert not pathlib.Path(controller_dir, "home", "identity").exists(), "no identity made for A's user"

        # D's firewall blocks the controller's port; only A's sshd is reachable from D.
        hosts.run_in("d", "nft", "add", "table", "inet", "testudo_test")
        hosts.run_in("d", "nft", "add", "chain", "inet", "testudo_test", "out",
                     "{ type filter hook output priority 0; }")
        hosts.run_in("d", "nft", "add", "rule", "inet", "testudo_test", "out", "ip", "daddr", a, "tcp", "dport",
                     str(port), "reject")
        script = (
            "import os, sys, testudo\n"
            "try:\n"
            "    testudo.Client(profile='abcd', sshserver='', timeout=3)\n"
            "    sys.exit('the controller port was reachable from D')\n"
            "except (ConnectionError, TimeoutError, OSError):\n"
            "    pass\n"
            f"rc = testudo.Client(profile='abcd', ssh_args=['-F', {hosts.ssh_config!r}])\n"
            "assert rc._tunnel is not None, 'the file made the client tunnel'\n"
            "dview = rc[:]\n"
            "dview.block = True\n"
            "dview.push(dict(a=5, b=10))\n"
            "rc[::2].execute('c = a + b')\n"
            "rc[1::2].execute('c = a - b')\n"
            "print(dview.pull('c'))\n"
            "rc.close()\n")
        env = {**os.environ, "PYTHONPATH": PYTHONPATH}
        in_d = subprocess.run(["ip", "netns", "exec", hosts.namespace("d"), "/usr/bin/python3", "-c", script],
                              capture_output=True, text=True, timeout=120, env=env)
        assert in_d.returncode == 0, in_d.stderr
        assert in_d.stdout.strip() == "[15, -5]"
        status = subprocess.run(["ip", "netns", "exec", hosts.namespace("d"), TESTUDO_BIN, "--profile", "abcd",
                                 "status", "--ssh-option=-F", f"--ssh-option={hosts.ssh_config}"],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "2 engine(s)" in status.stdout, status.stderr

        # An engine whose connection file names a gateway (controller --engine-ssh-server) goes
        # through it without being told: here, through A's sshd to A.
        engine_file = json.loads(pathlib.Path(cluster.profile_dir, "security", "controller-engine.json").read_text())
        engine_file["ssh"] = f"root@{a}"
        gated = pathlib.Path(private_home, "gated-engine.json")
        gated.write_text(json.dumps(engine_file))
        gated.chmod(0o600)
        engine = subprocess.Popen([TESTUDO_BIN, "--profile", "abcd", "engine", "--file", str(gated),
                                   "--identity-dir", str(pathlib.Path(cluster.profile_dir, "security")),
                                   "--ssh-option=-F", f"--ssh-option={hosts.ssh_config}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            rc.wait_for_engines(3, timeout=30)
            tunnel = sh("pgrep", "-P", str(engine.pid), "ssh", check=False).stdout.split()
            assert len(tunnel) == 1, "the engine reached A through its own tunnel"
            assert a in pathlib.Path(f"/proc/{tunnel[0]}/cmdline").read_text()
        finally:
            engine.terminate()
            engine.wait(timeout=30)
    finally:
        rc.close()
        cluster.stop_cluster_sync()
    for pid in controller_pids:
        assert wait_until(lambda p=pid: pid_gone(p), 15), "the controller on A stopped with the cluster"


def test_a_remote_controller_that_cannot_start_is_a_clear_error(hosts, private_home):
    def start(*args):
        return subprocess.run([TESTUDO_BIN, "--profile", "rc-errs", "cluster", "start", "-n", "0", "--daemonize",
                               "--timeout", "20", *args], capture_output=True, text=True, timeout=120)

    a = hosts.address["a"]
    common = ["--ssh-option=-F", f"--ssh-option={hosts.ssh_config}", "--controller-dir", f"{hosts.dir}/rc-errs"]
    no_host = start("--controller", "ssh")
    assert no_host.returncode == 2 and "--controller ssh needs --controller-host" in no_host.stderr
    missing = start("--controller", "ssh", "--controller-host", a, *common, "--remote-testudo", "/nonexistent/testudo")
    assert missing.returncode == 1 and f"/nonexistent/testudo not found on {a}" in missing.stderr, missing.stderr
    gone = start("--controller", "ssh", "--controller-host", f"10.{hosts.net}.0.99", *common,
                 "--remote-testudo", TESTUDO_BIN)
    assert gone.returncode == 1 and f"cannot prepare the controller on 10.{hosts.net}.0.99 over SSH" in gone.stderr
    bad_option = start("--controller", "ssh", "--controller-host", a, *common, "--remote-testudo", TESTUDO_BIN,
                       "--scheme", "nonsense")
    assert bad_option.returncode == 1 and f"the controller on {a} exited during start-up" in bad_option.stderr, \
        bad_option.stderr
    assert "rc-errs" not in subprocess.run([TESTUDO_BIN, "cluster", "list"], capture_output=True, text=True).stdout
    left = hosts.run_in("a", "pgrep", "-f", "rc-errs", check=False).stdout.split()
    assert left == [], f"processes left on A: {left}"
