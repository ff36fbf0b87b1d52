"""Password logins (SCRAM-SHA-256-PLUS, channel-bound) against a real cluster: a user file made
with `testudo users`, a controller started with --users and a policy naming user:alice. The
right password runs the reference example; a wrong password and an unknown user get the same
refusal; failures lock an account out; a loose user file stops the controller from starting;
users added or removed while it runs count at the next login; a denied operation is audited
once as user:alice; and no password used here appears in any file, log, argv or environment
of the cluster. (The replay of a recorded login on another TLS session is attacked at the
wire in tests/security_test.cc, T5_RecordedPasswordLoginIsRefusedOnAnotherSession.)"""

import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import TESTUDO_BIN, Cluster, wait_until

ALICE_PW = "alice-pw-Qx7Lm2vR9"
CAROL_PW = "carol-pw-Zt4Nb8wK3"
NEWBIE_PW = "newbie-pw-Hd6Yp1sF5"
WRONG_PW = "wrong-pw-Jc3Ve7uG2"
SECRETS = [ALICE_PW, CAROL_PW, NEWBIE_PW, WRONG_PW]
WRONG = "wrong user name or password"


def users_cmd(users_file, *args, password=None):
    """`testudo users ...` on `users_file`; the password only in that process's environment."""
    env = dict(os.environ)
    if password is not None:
        env["NEW_PW"] = password
        args = (*args, "--password-from", "env:NEW_PW", "--iterations", "4096")
    return subprocess.run([TESTUDO_BIN, "users", "--file", users_file, *args], env=env, check=True,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def pw_cluster():
    files = tempfile.mkdtemp(prefix="testudo-pytest-users-")
    users_file = os.path.join(files, "users.json")
    # alice with the default iteration count (what `users add` gives), carol for the lockout.
    subprocess.run([TESTUDO_BIN, "users", "--file", users_file, "add", "alice", "--groups", "analysts",
                    "--password-from", "env:NEW_PW"], env=dict(os.environ, NEW_PW=ALICE_PW), check=True,
                   capture_output=True, text=True, timeout=60)
    users_cmd(users_file, "add", "carol", password=CAROL_PW)
    policy_file = os.path.join(files, "policy.json")
    pathlib.Path(policy_file).write_text(json.dumps({"version": 1, "rules": [
        {"identities": ["login-group:analysts"], "allow": ["push", "execute", "pull"]},
        {"identities": ["*"], "allow": ["status"]},
    ]}))
    os.chmod(policy_file, 0o600)
    c = Cluster(2, profile="passwords", extra=("--users", users_file, "--policy", policy_file))
    c.users_file = users_file
    c.files = files
    yield c
    c.stop()
    shutil.rmtree(files, ignore_errors=True)


def login(cluster, username, password):
    import testudo
    os.environ["TESTUDO_HOME"] = cluster.home
    return testudo.Client(profile=cluster.profile, username=username, password=password)


def refusal(cluster, username, password):
    with pytest.raises(Exception) as info:
        login(cluster, username, password).close()
    text = str(info.value)
    for secret in SECRETS:
        assert secret not in text
    return text


def test_right_password_runs_the_reference_example(pw_cluster):
    calls = []

    def password():
        calls.append(1)
        return ALICE_PW
    rc = login(pw_cluster, "alice", password)
    try:
        rc.wait_for_engines(2, timeout=30)
        view = rc[:]
        view.push({"a": 5, "b": 10}, block=True)
        view.execute("c = a + b", block=True)
        assert view.pull("c", block=True) == [15, 15]
    finally:
        rc.close()
    assert calls
    # The same from the command line, the password from the environment of that command only.
    done = subprocess.run([TESTUDO_BIN, "--profile", pw_cluster.profile, "pull", "--user", "alice", "--password-from",
                           "env:ALICE_PW", "c"], env=dict(pw_cluster.env, ALICE_PW=ALICE_PW), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[15, 15]"
    # `testudo status` says how one may get in, and that the controller can read what a login
    # client sends (a login cannot seal end to end).
    done = subprocess.run([TESTUDO_BIN, "--profile", pw_cluster.profile, "status", "--user", "alice",
                           "--password-from", "env:ALICE_PW"], env=dict(pw_cluster.env, ALICE_PW=ALICE_PW),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "logins: key, password" in done.stdout
    assert "end-to-end sealing: OFF for this client: a password login cannot seal" in done.stdout


def test_denied_operation_is_audited_once_as_the_user(pw_cluster):
    rc = login(pw_cluster, "alice", ALICE_PW)
    try:
        with pytest.raises(PermissionError):
            rc[0].apply_sync(os.getpid)
    finally:
        rc.close()
    audit = pathlib.Path(pw_cluster.path("log", "audit.jsonl"))

    def denials():
        lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
        return [e for e in lines if e.get("operation") == "apply" and e.get("outcome") == "denied"]
    assert wait_until(lambda: len(denials()) >= 1, timeout=5)
    time.sleep(0.1)  # a second line, if any, would be flushed by now (every 20 ms)
    found = denials()
    assert len(found) == 1, found
    assert found[0]["identity"] == "user:alice"
    accepted = [json.loads(line) for line in audit.read_text().splitlines() if '"login"' in line]
    assert any(e["identity"] == "user:alice" and e["outcome"] == "accepted" for e in accepted)


def test_wrong_password_and_unknown_user_are_refused_alike(pw_cluster):
    wrong = refusal(pw_cluster, "alice", WRONG_PW)
    unknown = refusal(pw_cluster, "nobody-here", WRONG_PW)
    assert WRONG in wrong and WRONG in unknown
    assert wrong == unknown, (wrong, unknown)
    # The same through the command line (exit 1, the same words).
    done = subprocess.run([TESTUDO_BIN, "--profile", pw_cluster.profile, "status", "--user", "nobody-here",
                           "--password-from", "env:PW"], env=dict(pw_cluster.env, PW=WRONG_PW), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and WRONG in done.stderr, done.stderr


def test_users_added_and_removed_count_at_the_next_login(pw_cluster):
    assert WRONG in refusal(pw_cluster, "newbie", NEWBIE_PW)
    users_cmd(pw_cluster.users_file, "add", "newbie", "--groups", "analysts", password=NEWBIE_PW)
    listed = users_cmd(pw_cluster.users_file, "list").stdout
    assert "newbie" in listed and "analysts" in listed and "stored" not in listed
    rc = login(pw_cluster, "newbie", NEWBIE_PW)
    try:
        assert rc[:].pull("c", block=True) == [15, 15]
    finally:
        rc.close()
    users_cmd(pw_cluster.users_file, "remove", "newbie")
    assert WRONG in refusal(pw_cluster, "newbie", NEWBIE_PW)


def test_repeated_failures_lock_the_account_out(pw_cluster):
    # Five failures of one identity within a minute lock it for 30 s (auth/login_limiter.h):
    # then even the right password is refused, and other users are not affected.
    for _ in range(5):
        assert WRONG in refusal(pw_cluster, "carol", WRONG_PW)
    locked = refusal(pw_cluster, "carol", CAROL_PW)
    assert "too many failed logins" in locked, locked
    rc = login(pw_cluster, "alice", ALICE_PW)
    rc.close()


def test_loose_user_file_stops_the_controller_at_start(pw_cluster, tmp_path):
    loose = tmp_path / "users.json"
    loose.write_bytes(pathlib.Path(pw_cluster.users_file).read_bytes())
    os.chmod(loose, 0o640)
    env = dict(pw_cluster.env, TESTUDO_HOME=str(tmp_path / "home"))
    done = subprocess.run([TESTUDO_BIN, "--profile", "loose", "controller", "--users", str(loose)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "mode 0640" in done.stderr and f"chmod 600 {loose}" in done.stderr, done.stderr


def test_no_password_in_any_file_log_argv_or_environment(pw_cluster):
    # Everything the cluster wrote: logs, audit log, user file, state, connection files.
    seen = []
    for path in [*pathlib.Path(pw_cluster.home).rglob("*"), *pathlib.Path(pw_cluster.files).rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            seen.append(path.name)
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret} in {path}"
    assert "audit.jsonl" in seen and "controller.log" in seen and "users.json" in seen
    for pid in [pw_cluster.controller_pid, *pw_cluster.engine_pids]:
        for what in ("cmdline", "environ"):
            data = pathlib.Path(f"/proc/{pid}/{what}").read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret} in /proc/{pid}/{what}"
