"""Logs that cannot fill a disk (issue: reliability): a flood of connections that fail their
TLS handshake is logged once per host and summed (a log line and an audit record), and the
controller's log file rotates at --log-max-bytes, keeping 4 old files."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import shutil

import pytest

from conftest import TESTUDO_BIN, wait_until


@pytest.fixture
def home():
    path = tempfile.mkdtemp(prefix="testudo-pytest-flood-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_connection_flood_is_summed_and_the_log_rotates(home):
    env = {**os.environ, "TESTUDO_HOME": home}
    log = pathlib.Path(home, "controller.log")
    controller = subprocess.Popen([TESTUDO_BIN, "--profile", "flood", "--log-max-bytes", "3000", "controller",
                                   "--log-file", str(log)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    try:
        client_file = pathlib.Path(home, "profile_flood", "security", "controller-client.json")
        assert wait_until(client_file.exists, 20)
        port = json.loads(client_file.read_text())["port"]
        for _ in range(300):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        # Real work still gets through, and writes enough lines (a client each) to rotate.
        for _ in range(25):
            status = subprocess.run([TESTUDO_BIN, "--profile", "flood", "status"], env=env, capture_output=True,
                                    text=True, timeout=60)
            assert status.returncode == 0, status.stderr
    finally:
        controller.send_signal(signal.SIGTERM)
        controller.wait(timeout=30)

    files = sorted(pathlib.Path(home).glob("controller.log*"))
    allowed = ["controller.log", *[f"controller.log.{i}" for i in range(1, 5)]]
    assert len(files) >= 2 and all(f.name in allowed for f in files), files
    for f in files:
        assert f.stat().st_size <= 3000, f
    text = "".join(f.read_text() for f in files)
    full = [line for line in text.splitlines() if "TLS handshake with 127.0.0.1:" in line]
    assert len(full) <= 1, f"{len(full)} lines for one host's flood"
    audit = pathlib.Path(home, "profile_flood", "log", "audit.jsonl").read_text().splitlines()
    summed = [json.loads(line) for line in audit if '"refused"' in line and "more connection(s)" in line]
    assert len(summed) == 1, audit[-5:]
    assert "299 more connection(s) from 127.0.0.1" in json.dumps(summed[0]), summed[0]
