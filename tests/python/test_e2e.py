"""End-to-end sealing (docs/security.md, "End-to-end sealing"; threat-model T9) on a real
cluster: sealed direct requests and their replies work, and what a client sealed never
reaches the controller -- not its memory (a gcore of the running process), not its task
database, not its logs -- while the same bytes sent unsealed do (so the search can fail)."""

import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

import testudo
from conftest import TESTUDO_BIN, Cluster

pytestmark = pytest.mark.skipif(shutil.which("gcore") is None, reason="needs gdb's gcore (scripts/setup installs it)")


@pytest.fixture(scope="module")
def cluster():
    # Every trusted client may run code: the second user below is stopped by the engines alone.
    files = tempfile.mkdtemp(prefix="testudo-e2e-files-")
    policy = pathlib.Path(files, "policy.json")
    policy.write_text(json.dumps({"version": 1, "rules": [
        {"identities": ["*"], "allow": ["execute", "apply", "push", "pull", "status"]}]}))
    policy.chmod(0o600)
    c = Cluster(2, profile="e2e", extra=("--policy", str(policy)))
    yield c
    c.stop()
    shutil.rmtree(files, ignore_errors=True)


def controller_holds(cluster, needles):
    """Which of `needles` (bytes) appear in the controller's memory, its files or its logs."""
    found = set()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["gcore", "-o", f"{tmp}/core", str(cluster.controller_pid)], check=True,
                       capture_output=True, timeout=60)
        files = glob.glob(f"{tmp}/core*")
        assert files, "gcore wrote no core"
        files += [f for f in glob.glob(cluster.path("**"), recursive=True) if os.path.isfile(f)]
        for name in files:
            data = pathlib.Path(name).read_bytes()
            found |= {n for n in needles if n in data}
    return found


def test_sealed_requests_run_and_the_controller_never_holds_their_bytes(cluster, sealed):
    marker = f"MARKER-{uuid.uuid4().hex}"
    code_marker, push_marker, apply_marker, plain_marker = (f"{marker}-{k}" for k in ("code", "push", "apply", "plain"))
    # The literals are built on the engine, so the needles travel only inside sealed bodies.
    view = sealed[:]
    view.block = True
    view.execute(f"m = {code_marker[:10]!r} + {code_marker[10:]!r}; print(m)")
    assert view["m"] == [code_marker] * 2
    ar = sealed[0].execute(f"print({code_marker[:10]!r} + {code_marker[10:]!r})")
    ar.get(timeout=30)
    assert code_marker in ar.stdout
    view.push({"p": push_marker})
    assert view.pull("p") == [push_marker] * 2
    assert view.apply(lambda s: s + "-apply", marker) == [apply_marker] * 2
    balanced_marker = f"{marker}-balanced"
    lview = sealed.load_balanced_view()
    assert lview.map_sync(lambda s: s + "-balanced", [marker] * 4) == [balanced_marker] * 4
    # The same kind of bytes unsealed do reach the controller (its task store keeps results).
    plain = cluster.client(e2e=False)
    assert plain[0].apply_sync(lambda s: s, plain_marker) == plain_marker
    plain.close()
    held = controller_holds(cluster, [m.encode() for m in (code_marker, push_marker, apply_marker, balanced_marker,
                                                           plain_marker)])
    assert plain_marker.encode() in held, "the search found nothing at all: it could not have failed"
    assert held == {plain_marker.encode()}


def test_live_output_is_sealed_too(sealed):
    got = []
    ar = sealed[1].execute("import time\nfor i in range(3):\n    print('line', i, flush=True); time.sleep(0.2)")
    ar.get(timeout=30)
    assert "line 2" in ar.stdout
    assert ar.engine_id == 1


def test_a_stored_result_opens_in_any_process_of_the_identity(cluster, sealed):
    direct = sealed[0].apply_async(lambda: "for my eyes")
    assert direct.get(timeout=30) == "for my eyes"
    balanced = sealed.load_balanced_view().apply_async(lambda: "balanced, for my eyes")
    assert balanced.get(timeout=30) == "balanced, for my eyes"
    ids = direct.msg_ids + balanced.msg_ids
    # A new process of the same identity holds no pair key: the result key's grant opens them.
    script = (
        "import sys, testudo\n"
        f"rc = testudo.Client(profile={cluster.profile!r}, e2e=True)\n"
        f"print(rc.get_result({ids!r}).get(timeout=30))\n"
    )
    later = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ))
    assert later.returncode == 0, later.stderr
    assert "['for my eyes', 'balanced, for my eyes']" in later.stdout
    # A client that does not seal is told what it holds, not handed ciphertext.
    plain = cluster.client(e2e=False)
    with pytest.raises(testudo.SealBroken, match="sealed end to end: open it with a client that seals"):
        plain.get_result(direct.msg_ids[0]).get(timeout=30)
    plain.close()


def test_load_balanced_requests_are_sealed_for_any_paired_engine(sealed):
    lview = sealed.load_balanced_view()
    assert lview.map_sync(lambda x: x * x, range(40)) == [x * x for x in range(40)]
    ar = lview.apply_async(lambda: __import__("os").getpid())
    ar.get(timeout=30)
    assert ar.engine_id in (0, 1)
    ar = lview.apply_async(lambda: print("balanced output"))
    ar.get(timeout=30)
    assert "balanced output" in ar.stdout


def test_an_engine_the_client_cannot_verify_gets_nothing(cluster):
    # Engine keys the client pins are not these engines': nothing is sent to them.
    client = cluster.client(e2e=True, engine_keys=["sha256:" + "0" * 64])
    with pytest.raises(testudo.SealBroken, match="cannot verify engine 0"):
        client[0].execute("x = 1", block=True)
    client.close()
    with pytest.raises(ValueError, match="which e2e=False turns off"):
        cluster.client(e2e=False, engine_keys=["sha256:" + "0" * 64])


def test_engines_refuse_a_client_only_the_controller_vouches_for(cluster):
    # A second user the controller admits (as a compromised controller could admit one it
    # made up) but the engines were never told to trust: its sealed requests do not run.
    engine_cert = pathlib.Path(cluster.path("security", "engine-cert.pem")).read_text()
    engine_fp = subprocess.run([os.environ.get("TESTUDO_BIN", "testudo"), "keys", "fingerprint",
                                cluster.path("security", "engine-cert.pem")], capture_output=True, text=True,
                               check=True).stdout.split()[0]
    assert engine_fp.startswith("sha256:") and engine_cert
    other_home = tempfile.mkdtemp(prefix="testudo-e2e-other-")
    saved = os.environ["TESTUDO_HOME"]
    try:
        os.environ["TESTUDO_HOME"] = other_home
        with pytest.raises(PermissionError):
            testudo.Client(url_file=cluster.client_file)  # makes the identity; not trusted yet
        cert = pathlib.Path(other_home, "identity", "client-cert.pem").read_text()
        pathlib.Path(cluster.path("security", "trust", "client", "invented.pem")).write_text(cert)
        deadline = time.monotonic() + 5
        while True:
            try:
                other = testudo.Client(url_file=cluster.client_file, e2e=True, engine_keys=[engine_fp])
                break
            except PermissionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        other[0].execute("ran = True")
        with pytest.raises(testudo.SealBroken, match="refused the sealed request.*not among the keys"):
            other[0].execute("ran = True", block=True)
        # The owner adds an engine told to trust this user as well: there, the user's sealed
        # requests run (the owner's own key stays trusted by it too).
        other_fp = subprocess.run([os.environ.get("TESTUDO_BIN", "testudo"), "keys", "fingerprint",
                                   str(pathlib.Path(other_home, "identity", "client-cert.pem"))],
                                  capture_output=True, text=True, check=True).stdout.split()[0]
        pids = cluster.run("engines", "start", "-n", "1", "--trust-client", other_fp).stdout.split()
        try:
            deadline = time.monotonic() + 30
            while len(other.ids) < cluster.n + 1:
                assert time.monotonic() < deadline, other.ids
                time.sleep(0.1)
            trusting = max(other.ids)
            assert other[trusting].apply_sync(lambda: "ran for the other user") == "ran for the other user"
            with pytest.raises(testudo.SealBroken, match="not among the keys"):
                other[0].execute("ran = True", block=True)  # the first engines still do not trust it
        finally:
            cluster.run("engines", "stop", "--pids", *[p for p in pids if p.isdigit()], check=False)
        other.close()
    finally:
        os.environ["TESTUDO_HOME"] = saved
        shutil.rmtree(other_home, ignore_errors=True)
    os.environ["TESTUDO_HOME"] = cluster.home
    owner = cluster.client()
    owner[0].execute("ran_here = 'ran' in globals()", block=True)
    assert owner[0]["ran_here"] is False
    owner.close()


def test_the_command_line_seals_too(cluster):
    done = cluster.run("exec", "--e2e", "-t", "0", "print('sealed from the command line')")
    assert "sealed from the command line" in done.stdout
    refused = cluster.run("exec", "--e2e", "--engine-key", "sha256:" + "1" * 64, "-t", "0", "x = 1", check=False)
    assert refused.returncode != 0
    assert "cannot verify engine 0" in refused.stderr + refused.stdout
    status = cluster.run("status", "--e2e")
    assert "end-to-end: 2 of 2 engine(s) verified by this client" in status.stdout
    pinned_elsewhere = cluster.run("status", "--e2e", "--engine-key", "sha256:" + "1" * 64)
    assert "end-to-end: 0 of 2 engine(s) verified by this client" in pinned_elsewhere.stdout
    assert "not among the keys this side trusts" in pinned_elsewhere.stdout


def test_a_client_seals_by_default_and_says_so(cluster, tmp_path):
    """Sealing is on by default wherever the client can seal, judged from what it holds itself
    (its key, a root for engine keys), and off only when asked or impossible, saying why."""
    os.environ["TESTUDO_HOME"] = cluster.home
    rc = cluster.client()
    assert rc.e2e is True and rc.e2e_off_because == ""
    rc.close()
    off = cluster.client(e2e=False)
    assert off.e2e is False and "turned off" in off.e2e_off_because
    off.close()
    # A connection file alone, without the cluster's engine certificate beside it: no root for
    # engine keys, so no sealing, and the client says so (nothing the controller says decides it).
    tmp_path.chmod(0o700)
    lone = tmp_path / "controller-client.json"
    shutil.copy(cluster.client_file, lone)
    lone.chmod(0o600)
    alone = testudo.Client(url_file=str(lone))
    assert alone.e2e is False and "does not know the engines' keys" in alone.e2e_off_because
    alone.close()
    with pytest.raises(ValueError, match="sealing is required"):
        testudo.Client(url_file=str(lone), e2e=True)
    # `testudo status` says it, both ways.
    assert "end-to-end sealing: on for this client" in cluster.run("status").stdout
    assert "end-to-end sealing: OFF for this client: turned off" in cluster.run("status", "--no-e2e").stdout
    # An engine its user starts by hand, given no --trust-client, opens that user's sealed requests.
    hand = subprocess.Popen([TESTUDO_BIN, "--profile", cluster.profile, "engine"], env=cluster.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    rc = cluster.client()
    try:
        rc.wait_for_engines(cluster.n + 1, timeout=30)
        newest = max(rc.ids)
        assert rc[newest].apply_sync(lambda: 6 * 7) == 42
    finally:
        rc.close()
        hand.kill()
        hand.wait()
