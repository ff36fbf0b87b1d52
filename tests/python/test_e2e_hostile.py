"""A hostile controller against end-to-end sealing (docs/e2e-design.md "Tests"; threat-model
T9): the real controller with a relay tap (tests/hostile_controller.cc, built as
testudo-hostile) that flips bits, replays, re-targets, swaps and forges sealed traffic. Each
attack is caught by the engine or the client with a clear error, nothing altered runs or is
believed, and the honest traffic around it keeps working."""

import contextlib
import os
import pathlib
import subprocess
import tempfile
import time

import pytest

import testudo
from conftest import TESTUDO_BIN, Cluster
from test_bulk import bulk_report

HOSTILE_BIN = os.path.join(os.path.dirname(TESTUDO_BIN), "testudo-hostile")
pytestmark = pytest.mark.skipif(not os.path.exists(HOSTILE_BIN), reason="testudo-hostile is not built")


class HostileCluster(Cluster):
    """A cluster whose controller is testudo-hostile; the attack is the mode file's line."""

    def __init__(self, n, profile):
        self.mode_file = pathlib.Path(tempfile.mkdtemp(prefix="testudo-hostile-"), "mode")
        os.environ["TESTUDO_HOSTILE_MODE_FILE"] = str(self.mode_file)
        try:
            super().__init__(n, profile=profile)
        finally:
            del os.environ["TESTUDO_HOSTILE_MODE_FILE"]

    def run(self, *args, check=True, timeout=120):
        return subprocess.run([HOSTILE_BIN, "--profile", self.profile, *args], env=self.env, check=check,
                              capture_output=True, text=True, timeout=timeout)

    @contextlib.contextmanager
    def attack(self, mode):
        self.mode_file.write_text(mode + "\n")
        try:
            yield
        finally:
            self.mode_file.unlink()

    def engine_logs(self):
        return "".join(p.read_text(errors="replace") for p in pathlib.Path(self.path("log")).glob("engine-*.log"))


@pytest.fixture(scope="module")
def cluster():
    c = HostileCluster(2, profile="hostile")
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def honest_traffic_works_again(sealed):
    """After every attack, honest sealed traffic works again on the same client."""
    yield
    assert sealed[:].apply_sync(lambda: "honest") == ["honest", "honest"]


def test_a_flipped_bit_in_a_request_is_refused_by_the_engine(cluster, sealed):
    sealed[0].execute("hit = 0", block=True)
    with cluster.attack("flip-request"):
        with pytest.raises(testudo.SealBroken, match="engine 0 refused the sealed request.*does not open"):
            sealed[0].execute("hit = 1", block=True)
    assert sealed[0]["hit"] == 0  # the altered request never ran


def test_a_replayed_request_runs_once(cluster, sealed):
    sealed[1].execute("count = 0", block=True)
    with cluster.attack("replay-request"):
        sealed[1].execute("count += 1", block=True)
    assert sealed[1]["count"] == 1
    assert "under this pair key was already run here (a replay)" in cluster.engine_logs()


def test_a_replayed_load_balanced_request_runs_once(cluster, sealed):
    sealed[:].execute("lb_count = 0", block=True)
    lview = sealed.load_balanced_view()
    lview.apply_sync(lambda: "pairs the engines")

    @testudo.interactive
    def bump():
        global lb_count
        lb_count += 1

    with cluster.attack("replay-request"):
        lview.apply_sync(bump)
    assert sorted(sealed[:]["lb_count"]) == [0, 1]
    assert "of this client was already run here (a replay)" in cluster.engine_logs()


def test_a_load_balanced_request_handed_to_two_engines_is_caught_by_the_client(cluster, sealed):
    # Both engines hold this client's balanced key, so each opens the request: the engines
    # cannot tell it ran twice. The client can: two genuine answers to one request.
    sealed[:].execute("dup_count = 0", block=True)
    lview = sealed.load_balanced_view()
    lview.apply_sync(lambda: "pairs the engines")
    assert sealed.seal_violations == []

    @testudo.interactive
    def bump():
        global dup_count
        dup_count += 1
        return dup_count

    with cluster.attack("duplicate-balanced"):
        assert lview.apply_sync(bump) == 1
        assert sealed[:]["dup_count"] == [1, 1]  # it did run twice: the controller can do that
        violations = sealed.seal_violations  # the second answer may still be on its way
        deadline = time.monotonic() + 10
        while not violations and time.monotonic() < deadline:
            time.sleep(0.05)
            violations = sealed.seal_violations
    assert len(violations) == 1, violations
    assert "was run by engine" in violations[0] and "handed it to two engines" in violations[0], violations


def test_a_flipped_bit_in_a_load_balanced_request_is_refused(cluster, sealed):
    sealed.load_balanced_view().apply_sync(lambda: "pairs the engines")  # honestly, first
    with cluster.attack("flip-request"):
        with pytest.raises(testudo.SealBroken, match="refused the sealed request.*load-balanced request does not open"):
            sealed.load_balanced_view().apply_sync(lambda: "altered")


def test_a_request_delivered_to_another_engine_does_not_run_there(cluster, sealed):
    sealed[:].execute("moved = 'no'", block=True)
    with cluster.attack("swap-targets"):
        with pytest.raises(testudo.CompositeError) as caught:
            sealed[:].execute("moved = 'yes'", block=True)
    assert "SealBroken" in str(caught.value) and "refused the sealed request" in str(caught.value)
    assert sorted(sealed[:]["moved"]) == ["no", "yes"]  # one ran where it was sent, the other nowhere


def test_a_rewritten_engine_id_is_refused(cluster, sealed):
    with cluster.attack("retarget-id"):
        with pytest.raises(testudo.SealBroken, match="does not open"):
            sealed[0].execute("x = 1", block=True)


def test_a_flipped_bit_in_a_reply_is_refused_by_the_client(cluster, sealed):
    with cluster.attack("flip-reply"):
        with pytest.raises(testudo.SealBroken, match="sealed reply from engine 0 does not open"):
            sealed[0].apply_sync(lambda: "value")


def test_swapped_replies_are_refused(cluster, sealed):
    with cluster.attack("swap-replies"):
        with pytest.raises(testudo.CompositeError) as caught:
            sealed[:].apply_sync(lambda: "mine")
    assert "sealed for another request" in str(caught.value)


def test_a_forged_clear_reply_is_refused_and_plain_clients_are_untouched(cluster, sealed):
    plain = cluster.client(e2e=False)
    with cluster.attack("forge-reply"):
        with pytest.raises(testudo.SealBroken, match="is not sealed"):
            sealed[0].execute("y = 2", block=True)
        # The tap touches only sealed traffic: a client without sealing goes on as before.
        assert plain[1].apply_sync(lambda: 41 + 1) == 42
    plain.close()


def test_flipped_bits_on_data_connections_are_refused(cluster, sealed):
    # The bulk path: bodies and results the controller splices between data connections. It
    # can alter those bytes as easily as any others; the seal catches it all the same.
    before = bulk_report(cluster)
    big = os.urandom(3 << 20)
    sealed[0].execute("bulk_hit = 0", block=True)
    with cluster.attack("flip-bulk"):
        with pytest.raises(testudo.SealBroken, match="engine 0 refused the sealed request.*does not open"):
            sealed[0].push({"bulk_hit": big}, block=True)
    assert sealed[0]["bulk_hit"] == 0  # the altered body never ran
    # A large result, altered on its way into the controller's store: refused, and the
    # stored copy stays refused (the controller altered what it keeps).
    sealed[0].execute("import os; large = os.urandom(20 << 20)", block=True)
    with cluster.attack("flip-bulk"):
        ar = sealed[0].pull("large", block=False)
        with pytest.raises(testudo.SealBroken, match="sealed reply from engine 0 does not open"):
            ar.get(timeout=60)
    with pytest.raises(testudo.SealBroken, match="sealed reply from engine 0 does not open"):
        sealed.get_result(ar.msg_ids[0]).get(timeout=60)
    # Altered on its way out of the store only: refused, and fetched again honestly it opens.
    ar = sealed[0].pull("large", block=False)
    good = ar.get(timeout=60)
    assert len(good) == 20 << 20
    with cluster.attack("flip-bulk-out"):
        with pytest.raises(testudo.SealBroken, match="sealed reply from engine 0 does not open"):
            sealed.get_result(ar.msg_ids[0]).get(timeout=60)
    assert sealed.get_result(ar.msg_ids[0]).get(timeout=60) == good
    # All of it went on data connections: a push, two results in and five out.
    after = bulk_report(cluster)
    assert after["bulk_transfers"] - before["bulk_transfers"] == 8
