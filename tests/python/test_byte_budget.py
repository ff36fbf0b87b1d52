"""Bytes a client parks in the controller are bounded (issue: reliability). Before, six 400 MB
pushes queued behind a busy engine held 2.4 GB in the controller. Now each client's queued
request bytes count against --client-queue-bytes (and all clients' against --queue-bytes);
over it, the controller reads nothing more from that client until its bytes drain to the
engines: the client waits, nothing is dropped (controller/byte_budget.h)."""

import os
import re

import pytest

from conftest import Cluster, peak_rss

MiB = 1 << 20
BUDGET = 64 * MiB
VALUE = 32 * MiB
PUSHES = 6


@pytest.fixture(scope="module")
def budgeted():
    c = Cluster(1, profile="budget", extra=("--client-queue-bytes", str(BUDGET)))
    yield c
    c.stop()


def test_pushes_behind_a_busy_engine_wait_in_the_client_not_the_controller(budgeted):
    rc = budgeted.client(e2e=False)  # the controller's byte budget: a sealing client's large pushes take the bulk path
    try:
        rc.wait_for_engines(1, timeout=30)
        view = rc[0]
        view.execute("x = 0", block=True)
        # Made before the engine is busy: on a loaded machine making them took longer than the
        # engine's 3 s, and the pushes then met an idle engine (no wait).
        values = [os.urandom(1024) * (VALUE // 1024) for _ in range(PUSHES)]
        before = peak_rss(budgeted.controller_pid)
        busy = view.execute("import time; time.sleep(3)", block=False)
        pushes = [view.push({f"v{i}": v}, block=False) for i, v in enumerate(values)]
        busy.get(timeout=60)
        for p in pushes:
            p.get(timeout=120)
        # Every value arrived whole, in order.
        for i, v in enumerate(values):
            assert view.pull(f"v{i}", block=True) == v
        grown = peak_rss(budgeted.controller_pid) - before
        # At most the budget, the one message that crossed it and what is being read: far below
        # the 192 MiB the six pushes add up to (which the controller held before).
        assert grown < BUDGET + 2 * VALUE, f"controller grew by {grown / MiB:.0f} MiB"
        status = budgeted.run("status").stdout
        waits = int(re.search(r"(\d+) wait\(s\) since start", status).group(1))
        assert waits >= 1, status
        assert "0 client(s) waiting for room now" in status, status
    finally:
        rc.close()


def test_a_message_over_the_largest_allowed_is_refused_with_the_limit_named(own_cluster):
    c = own_cluster(1, extra=("--max-message-bytes", str(4 * MiB)))
    rc = c.client()
    try:
        rc.wait_for_engines(1, timeout=30)
        with pytest.raises(Exception) as raised:
            rc[0].push({"big": b"x" * (8 * MiB)}, block=True)
        assert "4194304" in str(raised.value) or "4 MiB" in str(raised.value), repr(raised.value)
        # A result over it is the engine's clear error, not a lost connection.
        with pytest.raises(Exception) as raised:
            rc[0].apply_sync(lambda: b"y" * (8 * MiB))
        assert "MemoryError" in repr(raised.value) and "4194304" in str(raised.value), repr(raised.value)
        # The same client and engine go on.
        assert rc[0].apply_sync(lambda: 7) == 7
        assert rc.ids == [0]
    finally:
        rc.close()


def test_tasks_beyond_a_clients_limit_wait_in_the_client_and_all_complete(own_cluster):
    """Unfinished tasks are bounded per client too (--client-max-tasks): over it, the client is
    not read until some finish; a map far larger than the limit still completes, in order."""
    c = own_cluster(2, extra=("--client-max-tasks", "50"))
    rc = c.client()
    try:
        rc.wait_for_engines(2, timeout=30)
        lview = rc.load_balanced_view()
        assert lview.map_sync(lambda x: x * 2, range(3000)) == [x * 2 for x in range(3000)]
        status = c.run("status").stdout
        waits = int(re.search(r"(\d+) wait\(s\) since start", status).group(1))
        assert waits >= 1, status
        assert "0 client(s) waiting for room now" in status, status
        assert rc[0].apply_sync(lambda: 5) == 5
    finally:
        rc.close()


STOPPED_CLIENT = """
import sys, testudo
rc = testudo.Client(profile=sys.argv[1])
rc.wait_for_engines(2, timeout=30)
def value(i):
    import time
    time.sleep(0.01)  # the replies come back over ~1 s: most of them after the client stops
    return bytes([i % 251]) * (1 << 20)
ar = rc.load_balanced_view().map_async(value, range(200))
print("submitted", flush=True)
values = ar.get(timeout=300)
assert [v[:1] for v in values] == [bytes([i % 251]) for i in range(200)]
assert all(len(v) == 1 << 20 for v in values)
print("ok", len(values), flush=True)
"""


def test_replies_to_a_client_that_stops_reading_wait_in_the_store_and_all_arrive(own_cluster):
    """A client stopped (SIGSTOP) while 200 replies of 1 MiB come back for it: the controller
    holds about its 32 MiB reply limit of them, not 200 MiB; the rest wait in the task store
    and all 200 arrive, correct and in order, once the client reads again."""
    import signal
    import subprocess
    import sys
    import time
    c = own_cluster(2, extra=("--client-reply-queue-bytes", str(32 * MiB)))
    client = subprocess.Popen([sys.executable, "-c", STOPPED_CLIENT, c.profile], env=c.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "submitted"
        # Stopped only once the controller has all 200 (the client's network thread may still
        # be sending them when map_async returns, on a loaded machine).
        deadline = time.monotonic() + 60
        while True:
            counts = re.search(r"(\d+) task\(s\) done, (\d+) in flight", c.run("status").stdout)
            if int(counts.group(1)) + int(counts.group(2)) >= 200:
                break
            assert time.monotonic() < deadline, counts.group(0)
            time.sleep(0.02)
        os.kill(client.pid, signal.SIGSTOP)
        before = peak_rss(c.controller_pid)
        deadline = time.monotonic() + 120
        while True:
            status = c.run("status").stdout
            done = int(re.search(r"(\d+) task\(s\) done", status).group(1))
            if done >= 200:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        grown = peak_rss(c.controller_pid) - before
        assert grown < 80 * MiB, f"controller grew by {grown / MiB:.0f} MiB for a client that does not read"
        deferred = int(re.search(r"(\d+) repl(?:y|ies) sent later from the task store", status).group(1))
        assert deferred > 0, status
        os.kill(client.pid, signal.SIGCONT)
        out, err = client.communicate(timeout=300)
        assert client.returncode == 0, err
        assert out.strip().endswith("ok 200"), out
    finally:
        if client.poll() is None:
            os.kill(client.pid, signal.SIGCONT)
            client.kill()
