"""Long transfers on a slow link (issue: reliability). Before, a message that took longer than
the heartbeat timeout to move dropped the engine: the controller held heartbeat answers behind
the message and counted only whole messages as signs of life, so a 400 MB push at 200 Mbit/s
failed with "engine died or disconnected". Now bytes arriving count as life and heartbeats
overtake large messages (wire/message.h "Overtaking").

The engine runs in a network namespace joined to this host by a veth pair shaped by `tc tbf`
to 100 Mbit/s each way; the timeouts are 2 s, so a 40 MB value (about 3.4 s on that link)
takes longer to move than the timeout in both directions."""

import os
import shutil
import subprocess
import time

import pytest

from conftest import TESTUDO_BIN, Cluster, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tc") or not shutil.which("ip"),
                                reason="needs root, ip and tc (a network namespace and tbf)")

RATE = "100mbit"
TIMEOUT_S = 2
SIZE = 40 << 20


@pytest.fixture(scope="module")
def slow():
    from netns import ShapedLink
    link = ShapedLink(RATE)
    cluster = Cluster(0, profile="slow", extra=("--ip", link.host_address, "--heartbeat-timeout", str(TIMEOUT_S)))
    log = cluster.path("log", "engine-slow.log")
    engine = subprocess.Popen(
        ["ip", "netns", "exec", link.namespace, TESTUDO_BIN.replace("/testudo", "/testudo-engine"),
         "--profile", "slow", "--controller-timeout", str(TIMEOUT_S), "--give-up", "0", "--log-file", log],
        env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield cluster, link, log
    finally:
        engine.kill()
        engine.wait()
        cluster.stop()
        link.close()


def test_values_that_take_longer_than_the_heartbeat_timeout_move_both_ways(slow):
    cluster, link, engine_log = slow
    rc = cluster.client()
    try:
        rc.wait_for_engines(1, timeout=30)
        engine = rc.ids[0]
        value = os.urandom(SIZE)
        started = time.monotonic()
        rc[engine].push({"big": value}, block=True)
        pushed = time.monotonic() - started
        assert pushed > TIMEOUT_S, f"the link was not slow enough to test anything ({pushed:.1f} s)"
        started = time.monotonic()
        back = rc[engine].pull("big", block=True)
        pulled = time.monotonic() - started
        assert pulled > TIMEOUT_S, f"the link was not slow enough to test anything ({pulled:.1f} s)"
        assert back == value
        # The same engine throughout: it never dropped and re-registered.
        assert rc.ids == [engine]
        assert rc[engine].apply_sync(lambda: "still here") == "still here"
    finally:
        rc.close()
    controller_log = open(cluster.path("log", "controller.log")).read()
    assert "no heartbeat" not in controller_log, controller_log[-2000:]
    assert "stopped answering" not in open(engine_log).read()
