"""Kerberos logins end to end: a real MIT KDC (krb5kdc.py, realm TESTUDO.TEST on loopback), a
cluster whose controller has the service keytab (--keytab), clients that kinit and log in with
`--kerberos` / `Client(kerberos=True)`. The reference example runs; a ticket for another
service, an expired ticket, clock skew beyond the limit, missing credentials and a keytab
others can read are each refused with a clear message; the policy grants krb:alice@TESTUDO.TEST
execute and pull, not push, and the denial is audited once; no password reaches a log."""

import json
import os
import pathlib
import subprocess
import time

import pytest

import krb5kdc
from conftest import TESTUDO_BIN, Cluster, wait_until

pytestmark = pytest.mark.skipif(not krb5kdc.available(), reason="MIT Kerberos KDC not installed (scripts/setup)")

SERVICE = "testudo/127.0.0.1"  # the default: testudo/<the connection file's host>
OTHER_SERVICE = "testudo/other.test"
KRB_ENV = ("KRB5_CONFIG", "KRB5_KDC_PROFILE", "KRB5RCACHEDIR", "KRB5CCNAME")


class Realm:
    def __init__(self):
        self.kdc = krb5kdc.Kdc.start()
        try:
            self._populate()
        except BaseException:
            self.kdc.cleanup()
            raise

    def _populate(self):
        d = self.kdc.dir
        self.keytab = os.path.join(d, "testudo.keytab")
        self.kdc.add_service(SERVICE, self.keytab)
        self.kdc.add_service(OTHER_SERVICE)
        self.passwords = {name: f"{name}-pw-{os.urandom(6).hex()}" for name in ("alice", "bob")}
        for name, password in self.passwords.items():
            self.kdc.add_user(name, password)
        # Made first, so it has expired (tickets end on a whole second: up to 2 s) by the
        # time the cluster is up.
        self.expired = self.kdc.kinit("alice", self.passwords["alice"], lifetime="1s")["KRB5CCNAME"]
        self.expired_at = time.monotonic() + 2.1
        self.ccache = {name: self.kdc.kinit(name, pw)["KRB5CCNAME"] for name, pw in self.passwords.items()}
        # An hour ahead: a service ticket first (the KDC would refuse a skewed request).
        skewed_env = self.kdc.kinit("bob", self.passwords["bob"])
        subprocess.run(["kvno", SERVICE], env=skewed_env, check=True, capture_output=True, timeout=30)
        krb5kdc.shift_ccache_clock(skewed_env["KRB5CCNAME"], 3600)
        self.skewed = skewed_env["KRB5CCNAME"]


@pytest.fixture(scope="module")
def realm():
    saved = {k: os.environ.get(k) for k in KRB_ENV}
    r = Realm()
    # The controller (through `cluster start`) and the in-process Python client read these.
    for k in KRB_ENV:
        os.environ[k] = r.kdc.env[k]
    yield r
    r.kdc.cleanup()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def kcluster(realm, tmp_path_factory):
    policy = tmp_path_factory.mktemp("policy") / "policy.json"
    policy.write_text(json.dumps({"version": 1, "rules": [
        {"identities": ["krb:bob@TESTUDO.TEST"], "allow": ["*"]},
        {"identities": ["krb:alice@TESTUDO.TEST"], "allow": ["execute", "pull", "status"]},
    ]}))
    c = Cluster(2, profile="krb", extra=("--keytab", realm.keytab, "--policy", str(policy)))
    yield c
    c.stop()


def use(ccache):
    os.environ["KRB5CCNAME"] = ccache


def cli(cluster, *args, ccache, check=False):
    env = dict(cluster.env, KRB5CCNAME=ccache)
    return subprocess.run([TESTUDO_BIN, "--profile", cluster.profile, *args], env=env, check=check,
                          capture_output=True, text=True, timeout=60)


def audit_lines(cluster):
    path = pathlib.Path(cluster.path("log", "audit.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_reference_example_with_the_python_client(realm, kcluster):
    use(realm.ccache["bob"])
    rc = kcluster.client(kerberos=True)
    try:
        rc.wait_for_engines(kcluster.n, timeout=30)
        view = rc[:]
        view.block = True
        view.push(dict(a=1, b=2))
        view.execute("c = a + b")
        assert view.pull("c") == [3, 3]
    finally:
        rc.close()
    # The audit log is flushed every 20 ms.
    assert wait_until(lambda: any(a.get("operation") == "login" and a.get("outcome") == "accepted" and
                                  a.get("identity") == "krb:bob@TESTUDO.TEST" for a in audit_lines(kcluster)))


def test_reference_example_with_the_cli(realm, kcluster):
    bob = realm.ccache["bob"]
    assert cli(kcluster, "push", "--kerberos", "a=20", "b=22", ccache=bob).returncode == 0
    assert cli(kcluster, "exec", "--kerberos", "c = a + b", ccache=bob).returncode == 0
    pulled = cli(kcluster, "pull", "--kerberos", "c", ccache=bob)
    assert pulled.returncode == 0, pulled.stderr
    assert "42" in pulled.stdout


def test_policy_allows_alice_execute_and_pull_but_not_push(realm, kcluster):
    alice = realm.ccache["alice"]
    assert cli(kcluster, "exec", "--kerberos", "d = 7", ccache=alice).returncode == 0
    pulled = cli(kcluster, "pull", "--kerberos", "d", ccache=alice)
    assert pulled.returncode == 0 and "7" in pulled.stdout, pulled.stderr
    pushed = cli(kcluster, "push", "--kerberos", "e=1", ccache=alice)
    assert pushed.returncode != 0
    assert "krb:alice@TESTUDO.TEST" in pushed.stderr or "push" in pushed.stderr, pushed.stderr
    assert wait_until(lambda: any(a.get("outcome") == "denied" for a in audit_lines(kcluster)))
    time.sleep(0.1)  # a second line, if there were one, would be flushed by now
    denied = [a for a in audit_lines(kcluster) if a.get("outcome") == "denied"]
    assert len(denied) == 1, denied
    assert denied[0]["operation"] == "push" and denied[0]["identity"] == "krb:alice@TESTUDO.TEST"


def test_a_session_is_renewed_with_a_fresh_ticket(realm, kcluster):
    # A 5 s ticket: the client link renews its login about 4 s in, from the credential cache as
    # it is then, where the user has meanwhile run kinit again.
    ccache = "FILE:" + os.path.join(realm.kdc.dir, "ccache.renew")
    realm.kdc.kinit("bob", realm.passwords["bob"], ccache=ccache[len("FILE:"):], lifetime="5s")
    use(ccache)
    rc = kcluster.client(kerberos=True)
    try:
        rc.wait_for_engines(kcluster.n, timeout=30)
        realm.kdc.kinit("bob", realm.passwords["bob"], ccache=ccache[len("FILE:"):])
        assert wait_until(lambda: any(a.get("operation") == "login.renew" and a.get("outcome") == "accepted" and
                                      a.get("identity") == "krb:bob@TESTUDO.TEST" for a in audit_lines(kcluster)),
                          timeout=15)
        view = rc[:]
        view.block = True
        view.execute("r = 1")
        assert view.pull("r") == [1, 1]
    finally:
        rc.close()


@pytest.mark.parametrize("case", ["another service", "unknown service", "expired", "clock skew", "no credentials"])
def test_refused_with_a_clear_message(realm, kcluster, case):
    service, ccache, expect = None, realm.ccache["bob"], None
    if case == "another service":
        service, expect = OTHER_SERVICE, "wrong service: the ticket is not for this controller's service principal"
    elif case == "unknown service":
        service, expect = "testudo/nowhere.test", "wrong service: the KDC knows no service principal testudo/nowhere.test"
    elif case == "expired":
        time.sleep(max(0.0, realm.expired_at - time.monotonic()))
        ccache, expect = realm.expired, "the Kerberos ticket has expired (run kinit)"
    elif case == "clock skew":
        ccache, expect = realm.skewed, "clock skew too great between the client and the controller"
    elif case == "no credentials":
        ccache, expect = "FILE:" + os.path.join(realm.kdc.dir, "no-such-ccache"), "no Kerberos credentials (run kinit)"
    args = ["exec", "--kerberos", *(["--service-principal", service] if service else []), "x = 1"]
    run = cli(kcluster, *args, ccache=ccache)
    assert run.returncode != 0
    assert expect in run.stderr, run.stderr
    # The Python client says the same.
    use(ccache)
    with pytest.raises(Exception) as refused:
        kcluster.client(kerberos=True, **({"service_principal": service} if service else {}))
    assert expect in str(refused.value), repr(refused.value)
    if case in ("another service", "clock skew"):
        # Refused by the controller: audited with the reason (twice: the CLI and the client).
        assert wait_until(lambda: sum(1 for a in audit_lines(kcluster) if a.get("operation") == "login" and
                                      a.get("outcome") == "rejected" and expect in a.get("reason", "")) == 2)


def test_a_keytab_others_can_read_is_refused_at_start(realm, tmp_path):
    loose = tmp_path / "loose.keytab"
    loose.write_bytes(pathlib.Path(realm.keytab).read_bytes())
    loose.chmod(0o644)
    env = dict(os.environ, TESTUDO_HOME=str(tmp_path / "home"))
    run = subprocess.run([TESTUDO_BIN, "--profile", "loose", "controller", "--keytab", str(loose)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode != 0
    assert f"keytab {loose} has mode 0644, readable by group/others; run: chmod 600 {loose}" in run.stderr, run.stderr


def test_no_secret_in_any_log(realm, kcluster):
    texts = []
    for path in pathlib.Path(kcluster.home).rglob("*"):
        if path.is_file() and (path.suffix in (".log", ".jsonl") or "log" in path.parts):
            texts.append(path.read_text(errors="replace"))
    assert texts
    for password in realm.passwords.values():
        assert all(password not in t for t in texts)
