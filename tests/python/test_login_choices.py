"""How a client says who it is, checked before any login method runs: Client()'s login
arguments (username/password, token_provider/token_from, kerberos) and the CLI's --user,
--password-from, --token-from, --kerberos; and a key passphrase from a Python callable
(Hazelcast's ssl_password callable) for an encrypted identity key."""

import os
import subprocess

import pytest

from conftest import TESTUDO_BIN, Cluster

PASSPHRASE = "callable-passphrase-7f3e9a"


@pytest.fixture(scope="module")
def encrypted_owner():
    """A cluster whose owner's identity key is encrypted with PASSPHRASE."""
    def encrypt_owner_key(c):
        # `cluster start` (its readiness check connects as the owner) reads it from the environment.
        c.env.update(OWNER_PASSPHRASE=PASSPHRASE, TESTUDO_KEY_PASSPHRASE_FROM="env:OWNER_PASSPHRASE")
        subprocess.run([TESTUDO_BIN, "keys", "create", "--key-passphrase-from", "env:OWNER_PASSPHRASE"], env=c.env,
                       check=True, capture_output=True, text=True, timeout=60)
    c = Cluster(1, profile="encrypted", before_start=encrypt_owner_key)
    yield c
    c.stop()


def test_key_passphrase_from_a_callable(encrypted_owner):
    import testudo
    os.environ["TESTUDO_HOME"] = encrypted_owner.home
    calls = []

    def passphrase():
        calls.append(1)
        return PASSPHRASE
    rc = testudo.Client(profile=encrypted_owner.profile, key_passphrase_from=passphrase)
    try:
        rc.wait_for_engines(1, timeout=30)
        view = rc[:]
        view.push({"a": 5, "b": 10}, block=True)
        view.execute("c = a + b", block=True)
        assert view.pull("c", block=True) == [15]
    finally:
        rc.close()
    assert calls == [1]


def test_key_passphrase_callable_wrong_or_failing(encrypted_owner):
    import testudo
    os.environ["TESTUDO_HOME"] = encrypted_owner.home
    with pytest.raises(Exception) as wrong:
        testudo.Client(profile=encrypted_owner.profile, key_passphrase_from=lambda: "not-the-passphrase-41")
    assert "not-the-passphrase-41" not in str(wrong.value)

    def broken():
        raise KeyError("vault-entry-with-" + PASSPHRASE)
    with pytest.raises(Exception) as failing:
        testudo.Client(profile=encrypted_owner.profile, key_passphrase_from=broken)
    # The callable's exception is named by its type; its text (which may hold a secret) is not repeated.
    assert "key_passphrase_from raised KeyError" in str(failing.value)
    assert PASSPHRASE not in str(failing.value)
    with pytest.raises(TypeError):
        testudo.Client(profile=encrypted_owner.profile, key_passphrase_from=42)


@pytest.mark.parametrize("kwargs, message", [
    (dict(username="alice", kerberos=True), "different logins"),
    (dict(token_provider="x.y.z", username="bob"), "different logins"),
    (dict(password="secret-in-kwargs"), "needs username="),
    (dict(service_principal="testudo/host"), "needs kerberos=True"),
    (dict(token_from="/tmp/token"), "'file:PATH', 'env:NAME' or 'command:CMD'"),
    (dict(username=""), "non-empty str"),
])
def test_login_arguments_are_checked_before_connecting(kwargs, message):
    import testudo
    with pytest.raises(ValueError, match=message) as err:
        testudo.Client(profile="no-such-profile-for-logins", **kwargs)
    assert "secret-in-kwargs" not in str(err.value)


@pytest.mark.parametrize("args, message", [
    (["--user", "alice", "--kerberos"], "different logins"),
    (["--password-from", "env:PW"], "--password-from needs --user"),
    (["--service-principal", "testudo/h"], "--service-principal needs --kerberos"),
    (["--token-from", "prompt"], "a token is not typed in"),
    (["--user", "alice", "--password-from", "hunter2-typed-here"], "never given on the command line"),
])
def test_cli_login_options_are_checked(tmp_path, args, message):
    env = dict(os.environ, TESTUDO_HOME=str(tmp_path))
    done = subprocess.run([TESTUDO_BIN, "status", *args], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "hunter2-typed-here" not in done.stderr
