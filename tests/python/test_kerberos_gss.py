"""Kerberos logins at the GSS-API level against a real MIT KDC: runs the C++ test
src/auth/kerberos_login_test.cc with the realm, keytabs and credential caches made here
(krb5kdc.py). Channel binding (a relay, an initiator without bindings), replay, mutual
authentication, wrong service, a stale keytab, clock skew, expired and missing tickets, a loose
keytab."""

import os
import pathlib
import subprocess
import time

import pytest

import krb5kdc

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEST_BIN = pathlib.Path(os.environ.get("TESTUDO_BIN", str(ROOT / "build" / "testudo"))).parent / "src" / "auth" / \
    "kerberos_login_test"

pytestmark = pytest.mark.skipif(not krb5kdc.available(), reason="MIT Kerberos KDC not installed (scripts/setup)")


def test_gss_logins_against_a_real_kdc():
    if not TEST_BIN.exists():
        pytest.skip(f"{TEST_BIN} not built")
    kdc = krb5kdc.Kdc.start()
    try:
        d = kdc.dir
        service, other, rotated = "testudo/127.0.0.1", "testudo/other.test", "testudo/rotated.test"
        keytab, rotated_keytab = os.path.join(d, "service.keytab"), os.path.join(d, "rotated.keytab")
        kdc.add_service(service, keytab)
        kdc.add_service(other)
        kdc.add_service(rotated, rotated_keytab)
        kdc.kadmin(f"cpw -randkey {rotated}")  # the KDC's key moves on; the keytab keeps the old one
        password = "Kerberos-pw-" + os.urandom(6).hex()
        kdc.add_user("alice", password)
        # Expires while the rest is prepared.
        expired = kdc.kinit("alice", password, lifetime="1s")
        born = time.monotonic()
        env = kdc.kinit("alice", password)
        skewed = kdc.kinit("alice", password)
        # A service ticket first (the KDC would refuse a skewed request), then the clock ahead.
        subprocess.run(["kvno", service], env=skewed, check=True, capture_output=True, timeout=30)
        krb5kdc.shift_ccache_clock(skewed["KRB5CCNAME"], 3600)
        env.update(TESTUDO_TEST_KRB5_KEYTAB=keytab, TESTUDO_TEST_KRB5_SERVICE=service,
                   TESTUDO_TEST_KRB5_OTHER_SERVICE=other, TESTUDO_TEST_KRB5_ROTATED_SERVICE=rotated,
                   TESTUDO_TEST_KRB5_ROTATED_KEYTAB=rotated_keytab,
                   TESTUDO_TEST_KRB5_SKEWED_CCACHE=skewed["KRB5CCNAME"],
                   TESTUDO_TEST_KRB5_EXPIRED_CCACHE=expired["KRB5CCNAME"])
        # Tickets end on a whole second and expire once the clock is past it: up to 2 s.
        time.sleep(max(0.0, 2.1 - (time.monotonic() - born)))
        run = subprocess.run([str(TEST_BIN)], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "[  SKIPPED ]" not in run.stdout, run.stdout
        assert password not in run.stdout + run.stderr
    finally:
        kdc.cleanup()
