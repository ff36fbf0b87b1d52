"""End-to-end sealing in the CA trust mode (docs/security.md, "End-to-end sealing", trust-mode
table): a cluster started with `--trust ca --cafile CA` admits any client the CA issued, and
the engines it starts open sealed requests from those clients too (it gives them
`--client-cafile CA`), never from the controller's word alone. A CA-issued user's sealed
requests run, their results open in a new process of the same identity, and a client the CA
did not issue is refused by the controller."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

import testudo
from conftest import Cluster


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(d):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=testudo e2e test CA", "-keyout", f"{d}/ca-key.pem", "-out", f"{d}/ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def issue_identity(d, ca_dir, cn, serial):
    """An identity directory (client-key.pem, client-cert.pem) for `cn`, issued by the CA in ca_dir."""
    os.makedirs(d, mode=0o700, exist_ok=True)
    ext = pathlib.Path(d, "ext.cnf")
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{d}/client-key.pem", "-out", f"{d}/client.csr")
    openssl("x509", "-req", "-in", f"{d}/client.csr", "-CA", f"{ca_dir}/ca.pem", "-CAkey", f"{ca_dir}/ca-key.pem",
            "-set_serial", str(serial), "-days", "1", "-extfile", str(ext), "-out", f"{d}/client-cert.pem")
    os.chmod(f"{d}/client-key.pem", 0o600)
    os.chmod(f"{d}/client-cert.pem", 0o600)
    return d


@pytest.fixture(scope="module")
def pki():
    d = tempfile.mkdtemp(prefix="testudo-e2e-ca-")
    make_ca(d)
    other = os.path.join(d, "other")
    os.makedirs(other)
    make_ca(other)
    policy = pathlib.Path(d, "policy.json")
    policy.write_text(json.dumps({"version": 1, "rules": [
        {"identities": ["cn:erin"], "allow": ["execute", "apply", "push", "pull", "status"]}]}))
    return {"dir": d, "other": other, "policy": str(policy)}


@pytest.fixture(scope="module")
def cluster(pki):
    c = Cluster(2, profile="e2eca", extra=("--trust", "ca", "--cafile", f"{pki['dir']}/ca.pem",
                                            "--policy", pki["policy"]))
    yield c
    c.stop()


def test_a_ca_issued_client_seals_and_reads_its_stored_results_in_a_new_process(cluster, pki):
    erin = issue_identity(os.path.join(pki["dir"], "erin"), pki["dir"], "erin", 1001)
    rc = testudo.Client(profile=cluster.profile, identity_dir=erin, e2e=True)
    rc.wait_for_engines(2, timeout=30)
    # Not the owner: the engines open her requests because the CA issued her certificate.
    view = rc[:]
    view.block = True
    view.push({"secret": "erin's"})
    assert view.pull("secret") == ["erin's", "erin's"]
    direct = rc[0].apply_async(lambda s: s + ", sealed", "erin's")
    assert direct.get(timeout=30) == "erin's, sealed"
    balanced = rc.load_balanced_view().apply_async(lambda: "balanced, erin's")
    assert balanced.get(timeout=30) == "balanced, erin's"
    ids = direct.msg_ids + balanced.msg_ids
    rc.close()
    script = (
        "import testudo\n"
        f"rc = testudo.Client(profile={cluster.profile!r}, identity_dir={erin!r}, e2e=True)\n"
        f"print(rc.get_result({ids!r}).get(timeout=30))\n"
    )
    later = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ))
    assert later.returncode == 0, later.stderr
    assert "[\"erin's, sealed\", \"balanced, erin's\"]" in later.stdout


def test_a_client_another_ca_issued_is_refused(cluster, pki):
    mallory = issue_identity(os.path.join(pki["dir"], "mallory"), pki["other"], "erin", 2001)
    with pytest.raises(Exception, match="certificate refused|not signed by the configured CA"):
        testudo.Client(profile=cluster.profile, identity_dir=mallory, e2e=True)
