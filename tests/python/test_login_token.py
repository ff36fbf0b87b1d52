"""Token logins against a real cluster started with --token-issuers: JSON Web Tokens signed by
a test issuer (PyJWT over python3-cryptography) run the reference example through
Client(token_provider=callable), a static token and the CLI's --token-from env:/file:; each
bad token is refused with a clear message; a token that expires while connected is renewed
through the callable; the policy grants by token identity and by token group and denies one
operation, audited once; no token appears in any log or file of the cluster."""

import base64
import hashlib
import hmac
import json
import os
import pathlib
import subprocess
import tempfile
import time

import pytest

from conftest import TESTUDO_BIN, Cluster

jwt = pytest.importorskip("jwt")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

ISSUER = "https://id.test.example"
AUDIENCE = "testudo-pytest"
ALICE = f"token:{ISSUER}#alice"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
TOKENS = []  # every token this module made: none may appear in any file of the cluster


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(sub="alice", lifetime=300, key=RSA_KEY, alg="RS256", headers=None, **claims):
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + lifetime}
    body.update(claims)
    token = jwt.encode(body, key, algorithm=alg, headers=headers)
    TOKENS.append(token)
    return token


@pytest.fixture(scope="module")
def token_cluster():
    conf = tempfile.mkdtemp(prefix="testudo-token-conf-")
    pathlib.Path(conf, "issuer.pem").write_bytes(public_pem(RSA_KEY))
    ec_numbers = EC_KEY.public_key().public_numbers()
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec-1",
                      "x": b64url(ec_numbers.x.to_bytes(32, "big")), "y": b64url(ec_numbers.y.to_bytes(32, "big"))}]}
    pathlib.Path(conf, "jwks.json").write_text(json.dumps(jwks))
    issuers = pathlib.Path(conf, "issuers.json")
    issuers.write_text(json.dumps({"version": 1, "issuers": [
        {"issuer": ISSUER, "audience": AUDIENCE, "keys": ["issuer.pem"], "jwks": "jwks.json",
         "algorithms": ["RS256", "ES256"], "clock_skew_seconds": 5}]}))
    policy = pathlib.Path(conf, "policy.json")
    granted = ["execute", "push", "pull", "status"]
    policy.write_text(json.dumps({"version": 1, "rules": [
        {"identities": [ALICE, "login-group:analysts"], "allow": granted}]}))
    for f in ("issuer.pem", "jwks.json", "issuers.json", "policy.json"):
        os.chmod(pathlib.Path(conf, f), 0o600)
    c = Cluster(1, profile="tokens", extra=("--token-issuers", str(issuers), "--policy", str(policy)))
    c.conf = conf
    yield c
    c.stop()


def client(cluster, **kwargs):
    import testudo
    os.environ["TESTUDO_HOME"] = cluster.home
    return testudo.Client(profile=cluster.profile, **kwargs)


def reference_example(rc):
    rc.wait_for_engines(1, timeout=30)
    view = rc[:]
    view.push({"a": 5, "b": 10}, block=True)
    view.execute("c = a + b", block=True)
    assert view.pull("c", block=True) == [15]


def audit_lines(cluster):
    lines = []
    for path in pathlib.Path(cluster.path("log")).glob("audit.jsonl*"):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def test_valid_tokens_run_the_reference_example(token_cluster):
    calls = []

    def provider():
        calls.append(1)
        return make_token()
    rc = client(token_cluster, token_provider=provider)
    try:
        reference_example(rc)
    finally:
        rc.close()
    assert calls == [1]
    # A static token, and an EC token from the JWKS chosen by its kid, for a member of a group
    # the policy grants.
    for kwargs in ({"token_provider": make_token()},
                   {"token_provider": make_token(sub="bob", key=EC_KEY, alg="ES256", headers={"kid": "ec-1"},
                                                 groups=["analysts"])}):
        rc = client(token_cluster, **kwargs)
        try:
            reference_example(rc)
        finally:
            rc.close()


def test_cli_token_from_env_and_file(token_cluster):
    token = make_token()
    token_file = pathlib.Path(tempfile.mkdtemp(prefix="testudo-token-"), "token")
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    env = dict(token_cluster.env, ALICE_TOKEN=token)

    def cli(*args):
        return subprocess.run([TESTUDO_BIN, "--profile", token_cluster.profile, *args], env=env,
                              capture_output=True, text=True, timeout=60)
    assert cli("push", "a=5", "b=10", "--token-from", "env:ALICE_TOKEN").returncode == 0
    assert cli("exec", "c = a + b", "--token-from", f"file:{token_file}").returncode == 0
    pulled = cli("pull", "c", "--token-from", "env:ALICE_TOKEN")
    assert pulled.returncode == 0, pulled.stderr
    assert "15" in pulled.stdout
    assert token not in pulled.stdout + pulled.stderr


def hs256_with_public_key():
    """The key confusion: an HS256 token whose HMAC key is the issuer's public key PEM (PyJWT
    refuses to make one, so it is made by hand)."""
    now = int(time.time())
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory-hs", "exp": now + 300}).encode())
    mac = hmac.new(public_pem(RSA_KEY), f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = f"{head}.{body}.{b64url(mac)}"
    TOKENS.append(token)
    return token


def alg_none():
    now = int(time.time())
    head = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory-none", "exp": now + 300}).encode())
    token = f"{head}.{body}."
    TOKENS.append(token)
    return token


@pytest.mark.parametrize("make,reason", [
    (lambda: make_token(sub="m-expired", lifetime=-10), "expired"),
    (lambda: make_token(sub="m-early", nbf=int(time.time()) + 600), "not valid yet"),
    (lambda: make_token(sub="m-aud", aud="another-cluster"), "audience"),
    (lambda: make_token(sub="m-iss", iss="https://evil.example"), "not configured"),
    (lambda: make_token(sub="m-sig", key=OTHER_KEY), "signature does not verify"),
    (lambda: make_token(sub="m-kid", key=EC_KEY, alg="ES256", headers={"kid": "nope"}), "key id"),
    (alg_none, "alg \"none\""),
    (hs256_with_public_key, "\"HS256\" is not allowed"),
])
def test_bad_tokens_are_refused(token_cluster, make, reason):
    token = make()
    with pytest.raises(Exception) as refused:
        client(token_cluster, token_provider=token)
    message = str(refused.value)
    assert "token login refused" in message and reason in message, message
    assert token not in message


def test_denied_operation_is_audited_once(token_cluster):
    rc = client(token_cluster, token_provider=make_token)
    try:
        rc.wait_for_engines(1, timeout=30)
        with pytest.raises(Exception) as denied:
            rc[:].apply_sync(lambda: 1)
        assert "apply" in str(denied.value)
    finally:
        rc.close()
    denials = [e for e in audit_lines(token_cluster)
               if e.get("identity") == ALICE and e.get("operation") == "apply" and e.get("outcome") == "denied"]
    assert len(denials) == 1, denials


def test_expiring_token_is_renewed_while_connected(token_cluster):
    calls = []

    def short_lived():
        calls.append(time.time())
        return make_token(lifetime=3)
    rc = client(token_cluster, token_provider=short_lived)
    # A static token of the same lifetime cannot be renewed: that session is closed at expiry.
    static = client(token_cluster, token_provider=make_token(sub="bob", lifetime=3, groups=["analysts"]))
    try:
        rc.wait_for_engines(1, timeout=30)
        static.wait_for_engines(1, timeout=30)
        time.sleep(4.5)
        # Renewed on the same connection: the session goes on, well past the first token's exp.
        reference_example(rc)
        assert len(calls) >= 2, calls
        with pytest.raises(Exception):
            reference_example(static)
    finally:
        rc.close()
        static.close()
    lines = audit_lines(token_cluster)
    assert any(e.get("identity") == ALICE and e.get("operation") == "login.renew" and e.get("outcome") == "accepted"
               for e in lines)
    bob = f"token:{ISSUER}#bob"
    assert any(e.get("identity") == bob and e.get("operation") == "disconnect" and "expired" in e.get("reason", "")
               for e in lines)
    assert not any(e.get("identity") == ALICE and e.get("operation") == "disconnect" for e in lines)


def test_no_token_in_any_log_or_file(token_cluster):
    # Last in the module: every token above has been used by then.
    assert TOKENS
    for path in pathlib.Path(token_cluster.home).rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for token in TOKENS:
            assert token.encode() not in data, f"a token is in {path}"
            signature = token.split(".")[2]
            assert not signature or signature.encode() not in data, f"a token's signature is in {path}"
