"""A real MIT Kerberos KDC for tests: realm TESTUDO.TEST on loopback, in a temp dir.

Everything lives under the fixture's directory: krb5.conf and kdc.conf (found through
KRB5_CONFIG and KRB5_KDC_PROFILE, so /etc/krb5.conf is neither read nor needed), the database
and its stash, keytabs, credential caches and the replay cache (KRB5RCACHEDIR). The KDC runs
in the foreground (`krb5kdc -n`) as the test's child and is stopped by its pid. Nothing is
installed or started system-wide.

    kdc = Kdc.start()
    kdc.add_service("testudo/127.0.0.1", keytab)   # -randkey, exported to a keytab
    kdc.add_user("alice", password)
    env = kdc.kinit("alice", password)             # a fresh KRB5CCNAME, returned in an env
    kdc.stop()
"""

import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time

REALM = "TESTUDO.TEST"
SBIN = "/usr/sbin"


def _free_port():
    """A port free for both TCP and UDP on loopback (the KDC listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for the KDC")


def available():
    return all(os.path.exists(os.path.join(SBIN, p)) for p in ("krb5kdc", "kdb5_util", "kadmin.local")) and \
        shutil.which("kinit") is not None


class Kdc:
    def __init__(self, directory, port, proc):
        self.dir = directory
        self.port = port
        self.proc = proc
        self.env = _env(directory)

    @classmethod
    def start(cls, directory=None):
        directory = directory or tempfile.mkdtemp(prefix="testudo-krb5-")
        os.chmod(directory, 0o700)
        port = _free_port()
        d = directory
        with open(os.path.join(d, "krb5.conf"), "w") as f:
            f.write(f"""[libdefaults]
  default_realm = {REALM}
  dns_lookup_realm = false
  dns_lookup_kdc = false
  dns_canonicalize_hostname = false
  rdns = false
  udp_preference_limit = 1
  ticket_lifetime = 10h
  default_keytab_name = FILE:{d}/default.keytab
  default_client_keytab_name = FILE:{d}/client.keytab
  default_ccache_name = FILE:{d}/ccache.default

[realms]
  {REALM} = {{
    kdc = 127.0.0.1:{port}
  }}
""")
        with open(os.path.join(d, "kdc.conf"), "w") as f:
            f.write(f"""[kdcdefaults]
  kdc_listen = 127.0.0.1:{port}
  kdc_tcp_listen = 127.0.0.1:{port}

[realms]
  {REALM} = {{
    database_name = {d}/principal
    key_stash_file = {d}/stash
    acl_file = {d}/kadm5.acl
    max_life = 10h
    max_renewable_life = 0
  }}

[logging]
  kdc = FILE:{d}/kdc.log
""")
        open(os.path.join(d, "kadm5.acl"), "w").close()
        env = _env(d)
        master = secrets.token_hex(16)
        subprocess.run([os.path.join(SBIN, "kdb5_util"), "create", "-s", "-r", REALM, "-P", master], env=env,
                       check=True, capture_output=True, timeout=60)
        proc = subprocess.Popen([os.path.join(SBIN, "krb5kdc"), "-n", "-r", REALM], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "krb5kdc.err"), "w"))
        kdc = cls(d, port, proc)
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError("krb5kdc exited: " + open(os.path.join(d, "krb5kdc.err")).read())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    kdc.stop()
                    raise RuntimeError("krb5kdc did not listen on port %d" % port)
                time.sleep(0.02)
        return kdc

    def kadmin(self, query):
        return subprocess.run([os.path.join(SBIN, "kadmin.local"), "-r", REALM, "-q", query], env=self.env,
                              check=True, capture_output=True, text=True, timeout=60)

    def add_service(self, principal, keytab=None):
        """A service principal with a random key; exported to `keytab` (mode 0600) when given."""
        self.kadmin(f"addprinc -randkey {principal}")
        if keytab:
            self.export(principal, keytab)

    def export(self, principal, keytab, randomize=False):
        """Adds `principal`'s current keys to `keytab` (new random keys first when `randomize`)."""
        self.kadmin(f"ktadd -k {keytab} {'' if randomize else '-norandkey '}{principal}")
        os.chmod(keytab, 0o600)

    def add_user(self, name, password):
        # The password goes through stdin, never argv (kadmin.local -pw would show it in ps).
        subprocess.run([os.path.join(SBIN, "kadmin.local"), "-r", REALM, "-q", f"addprinc {name}"], env=self.env,
                       input=f"{password}\n{password}\n", check=True, capture_output=True, text=True, timeout=60)

    def kinit(self, name, password, ccache=None, lifetime=None):
        """Logs `name` in; returns an environment whose KRB5CCNAME holds the new tickets."""
        ccache = ccache or os.path.join(self.dir, "ccache." + secrets.token_hex(4))
        env = dict(self.env, KRB5CCNAME="FILE:" + ccache)
        args = ["kinit"] + (["-l", lifetime] if lifetime else []) + [name]
        subprocess.run(args, env=env, input=password + "\n", check=True, capture_output=True, text=True, timeout=60)
        return env

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _env(d):
    env = dict(os.environ)
    env.update(KRB5_CONFIG=os.path.join(d, "krb5.conf"), KRB5_KDC_PROFILE=os.path.join(d, "kdc.conf"),
               KRB5RCACHEDIR=d, KRB5CCNAME="FILE:" + os.path.join(d, "ccache.none"))
    env.pop("KRB5_KTNAME", None)
    env.pop("KRB5_CLIENT_KTNAME", None)
    return env


def shift_ccache_clock(ccache, seconds):
    """Makes every program using `ccache` believe the time is `seconds` later than it is.

    MIT's credential cache (format 4) carries the offset between the local clock and the KDC's
    (libdefaults kdc_timesync, on by default), and the library adds it to the time in every
    authenticator it writes: a client whose clock is off, without faking the clock.
    """
    path = ccache[len("FILE:"):] if ccache.startswith("FILE:") else ccache
    with open(path, "rb") as f:
        data = bytearray(f.read())
    version, header_len = struct.unpack(">HH", data[0:4])
    assert version == 0x0504, "not a version 4 credential cache"
    header = bytearray()
    pos = 4
    end = 4 + header_len
    found = False
    while pos < end:
        tag, length = struct.unpack(">HH", data[pos:pos + 4])
        value = data[pos + 4:pos + 4 + length]
        if tag == 1:  # FCC_TAG_DELTATIME: seconds, microseconds
            sec, usec = struct.unpack(">iI", value)
            value = struct.pack(">iI", sec + seconds, usec)
            found = True
        header += struct.pack(">HH", tag, length) + value
        pos += 4 + length
    if not found:
        header += struct.pack(">HHiI", 1, 8, seconds, 0)
    data[2:end] = struct.pack(">H", len(header)) + header
    with open(path, "wb") as f:
        f.write(data)
