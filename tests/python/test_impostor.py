"""A local user who takes the controller's port while it restarts (issue: reliability): before,
every engine met the impostor's certificate, logged "does not match the pinned fingerprint"
and exited for good, and the owner's `controller --reuse` failed with "Address already in
use". Now the pin still refuses the impostor, but engines and clients keep retrying (warned
loudly, at most once a minute), the restarted controller waits for its port, and the cluster
comes back whole once the impostor lets go.

The impostor is a real second Unix user (`nobody`, through setpriv) running a TLS server with a
certificate of its own on the controller's port."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import TESTUDO_BIN, kill_processes, pid_gone, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("openssl"),
    reason="needs root (to run the impostor as another user), setpriv and openssl")

IMPOSTOR = """
import socket, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(64)
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)
    except (OSError, ssl.SSLError):
        pass
"""


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_an_impostor_on_the_port_during_a_restart_ends_no_engine(own_cluster):
    c = own_cluster(2, extra=("--reuse",))
    rc = c.client()
    rc.wait_for_engines(2, timeout=30)
    rc[:].push({"kept": "across the restart"}, block=True)
    port = json.loads(pathlib.Path(c.client_file).read_text())["port"]

    # The impostor's certificate, readable by `nobody`.
    keys = tempfile.mkdtemp(prefix="testudo-impostor-")
    os.chmod(keys, 0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=impostor", "-days", "1", "-keyout", f"{keys}/key.pem", "-out", f"{keys}/cert.pem"],
                   check=True, capture_output=True)
    os.chmod(f"{keys}/key.pem", 0o644)

    os.kill(c.controller_pid, signal.SIGKILL)
    impostor = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3",
                                 "-c", IMPOSTOR, str(port), f"{keys}/cert.pem", f"{keys}/key.pem"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    restarted = None
    try:
        assert impostor.stdout.readline().strip() == "listening", impostor.stderr.read()
        # The owner restarts the controller while the impostor holds the port: it waits.
        log_path = c.path("log", "controller-restarted.log")
        log = open(log_path, "w")
        restarted = subprocess.Popen([TESTUDO_BIN, "--profile", c.profile, "controller", "--reuse", "--port-wait",
                                      "120"], env=c.env, stdout=log, stderr=log, start_new_session=True)
        assert wait_until(lambda: "held by another process; waiting" in pathlib.Path(log_path).read_text(), 20)
        # Meanwhile the engines meet the impostor, refuse it by the pin, and stay.
        engine_logs = [c.path("log", f"engine-{i}.log") for i in range(2)]

        def refused_everywhere():
            return all("does not match the pinned fingerprint" in pathlib.Path(p).read_text() for p in engine_logs)
        assert wait_until(refused_everywhere, 20), "the engines did not meet the impostor"
        time.sleep(3)  # several more refused attempts each (backoff from 100 ms)
        assert restarted.poll() is None, "the controller gave up waiting for its port"
        for pid in c.engine_pids:
            assert not pid_gone(pid), "an engine gave up on its controller"
        for p in engine_logs:
            warnings = pathlib.Path(p).read_text().count("does not match the pinned fingerprint")
            assert warnings == 1, f"{p}: {warnings} warnings: the impostor must not fill the log\n" + pathlib.Path(p).read_text()

        # The impostor lets go: the controller takes its port, engines and client come back.
        impostor.kill()
        impostor.wait()

        def back():
            try:
                return len(rc.ids) == 2
            except ConnectionError:
                return False
        assert wait_until(back, timeout=30), "the engines did not come back"
        assert rc[:].pull("kept", block=True) == ["across the restart"] * 2, "the same engines, namespaces kept"
    finally:
        impostor.kill()
        impostor.wait()
        if restarted:
            restarted.kill()
            restarted.wait()
        rc.close()
        kill_processes(c)
        shutil.rmtree(keys, ignore_errors=True)


def test_bad_timeouts_and_intervals_are_refused_up_front(own_cluster):
    c = own_cluster(1)
    for args, why in [
        (["controller", "--heartbeat-timeout", "-1"], "--heartbeat-timeout"),
        (["cluster", "start", "--timeout", "0"], "--timeout"),
        (["exec", "--timeout", "-5", "pass"], "--timeout"),
        (["engines", "stop", "--timeout", "-1"], "--timeout"),
        (["engine", "--give-up", "-3"], "--give-up"),
    ]:
        refused = c.run(*args, check=False, timeout=30)
        assert refused.returncode == 2 and why in refused.stderr, (args, refused.stderr)
    assert "1 engine(s)" in c.run("status").stdout, "nothing was disturbed"
    import testudo
    for timeout in (-1, 0, "10"):
        with pytest.raises(ValueError, match="connection timeout"):
            testudo.Client(profile=c.profile, timeout=timeout)
