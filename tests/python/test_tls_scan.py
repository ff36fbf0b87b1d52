"""An external TLS scanner against a live controller (docs/threat-model.md T11): Debian's
testssl.sh 3.0.8 scans a controller in the default mode (TLS 1.3 only) and one started with
`--tls-min-version 1.2`, and the test fails on any protocol below the configured one, any
suite that is not AEAD (or, in TLS 1.2, not ECDHE), TLS compression, client-initiated
renegotiation, session resumption (testudo has none: no tickets, no session cache), or
anything testssl.sh rates HIGH or CRITICAL.

The controller demands a client certificate (any valid one at the TLS layer; identity is
decided after the handshake). testssl.sh 3.0.8 has no option for one (no `--mtls`), so it runs
an `openssl` that adds one to each s_client: without it, whether its first TLS 1.3 handshake
"connects" depends on whether s_client exits before the server's certificate_required alert
arrives, and now and then the scan ends with "Your OpenSSL cannot connect". Its own
socket-built ClientHellos still carry no certificate, which in TLS 1.3 costs nothing (the
ServerHello with version and suite comes before the certificate request), but they also lack
the extended master secret, which a `--tls-min-version 1.2` controller requires of every
peer that does not offer TLS 1.3: it refuses them all, so there the scanner sees TLS 1.3 only.
What the scanner cannot see is checked directly with `openssl s_client -cert/-key`: TLS 1.0,
1.1 and every TLS 1.2 suite outside the six allowed; client-initiated renegotiation;
resumption by id or ticket in 1.2 and 1.3 (a TLS 1.3 ticket only follows the client's
certificate); and compression, asked for by a hand-made TLS 1.2 ClientHello offering DEFLATE.

Only the scanner's checks this needs run (`-p -E -R -C`; the two modes at once): `-S` (server
defaults) costs ~13 s more, skips resumption under client authentication, and rates the
certificate HIGH/CRITICAL (self-signed, no OCSP, ten years), which is by design: clients pin
the controller's fingerprint (T3). `--fast` would skip SSLv2 and SSLv3."""

import json
import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import TESTUDO_BIN, wait_until

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
OPENSSL = shutil.which("openssl")

pytestmark = pytest.mark.skipif(not TESTSSL or not OPENSSL,
                                reason="needs testssl.sh (Debian package testssl.sh; scripts/setup installs it) "
                                       "and openssl")

PROTOCOLS = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"]  # testssl.sh's finding ids, oldest first
SCAN_TIMEOUT = 240  # seconds; a scan takes ~20 s alone on two busy cores


# --- the scanner's findings ---------------------------------------------------------------

def scan_command(port, jsonfile, openssl):
    """testssl.sh restricted to protocols (-p), suites per protocol (-E), renegotiation (-R)
    and compression (-C), findings as flat JSON; `openssl` is the s_client it runs."""
    return [TESTSSL, "--quiet", "--warnings", "batch", "--color", "0", "--openssl", openssl, "-p", "-E", "-R", "-C",
            "--jsonfile", jsonfile, f"127.0.0.1:{port}"]


def openssl_with_certificate(path, cert):
    """Writes to `path` an openssl that adds the client certificate `cert` to every s_client:
    testssl.sh 3.0.8 has no option for one (no --mtls)."""
    pathlib.Path(path).write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = s_client ]; then shift; exec {OPENSSL} s_client -cert {cert[0]} -key {cert[1]} "$@"; fi\n'
        f'exec {OPENSSL} "$@"\n')
    os.chmod(path, 0o755)
    return path


def is_aead(iana_name):
    """AES-GCM, ChaCha20-Poly1305 or AES-CCM with a full 16-byte tag (CCM_8 has 8)."""
    return any(mode in iana_name for mode in ("_GCM_", "_CHACHA20_POLY1305_", "_CCM")) and "_CCM_8" not in iana_name


def weaknesses(findings, allowed, visible=None, seen_by_scanner=("secure_renego", "secure_client_renego", "CRIME_TLS")):
    """What in testssl.sh's flat JSON `findings` breaks T11 for a server meant to offer exactly
    the protocols in `allowed` (ids of PROTOCOLS); empty if nothing. The scanner must have seen
    the protocols in `visible` (default: all allowed) offered, with suites. The checks named in
    `seen_by_scanner` must have been carried out (not "couldn't test"); the others may be
    inconclusive and are checked directly instead."""
    visible = allowed if visible is None else visible
    problems = []
    by_id = {f["id"]: f for f in findings}
    for f in findings:
        if f["severity"] in ("HIGH", "CRITICAL", "FATAL") or f["id"] == "scanProblem":
            problems.append(f"{f['id']}: {f['severity']}: {f['finding']}")
    for proto in PROTOCOLS:
        finding = by_id.get(proto, {}).get("finding", "(not tested)")
        offered = finding.startswith("offered")
        if proto in visible and not offered:
            problems.append(f"{proto} should be offered but is: {finding}")
        elif proto not in allowed and not finding.startswith("not offered"):
            problems.append(f"{proto} below the minimum is: {finding}")
    suites = [f for f in findings if f["id"].startswith("cipher-")]
    for f in suites:
        # "TLS 1.2   xc02c   ECDHE-ECDSA-AES256-GCM-SHA384   ECDH 253   AESGCM   256   TLS_ECDHE_ECDSA_WITH_..."
        iana = f["finding"].split()[-1]
        if not is_aead(iana):
            problems.append(f"suite that is not AEAD offered: {f['finding']}")
        if iana.startswith("TLS_") and "_WITH_" in iana and not iana.startswith("TLS_ECDHE_"):
            problems.append(f"TLS 1.2 suite without ECDHE offered: {f['finding']}")
    for proto in visible:
        prefix = f"cipher-{proto.lower()}_"
        if not any(f["id"].startswith(prefix) for f in suites):
            problems.append(f"the scanner saw no suite for {proto}: it did not see the server")
    for check in ("secure_renego", "secure_client_renego", "CRIME_TLS"):
        f = by_id.get(check)
        if f is None:
            problems.append(f"{check}: not in the scan")
        elif re.search(r"(?<!not )\bvulnerable", f["finding"], re.IGNORECASE) or f["severity"] in ("LOW", "MEDIUM"):
            problems.append(f"{check}: {f['severity']}: {f['finding']}")
        elif check in seen_by_scanner and f["severity"] != "OK":
            problems.append(f"{check}: the scanner could not tell: {f['severity']}: {f['finding']}")
    return problems


# --- direct checks with a client certificate ----------------------------------------------

def s_client(port, args, cert, send=b"", settle=0.5, timeout=20):
    """Runs `openssl s_client -msg` against 127.0.0.1:`port` with `args` and the scanner's
    client certificate `cert` (a (cert, key) pair, or None); once the handshake summary is
    printed, writes `send`, waits `settle` seconds for what the server answers, closes stdin
    and returns everything s_client printed."""
    command = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-msg", *args]
    if cert:
        command += ["-cert", cert[0], "-key", cert[1]]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = queue.Queue()  # s_client's lines as they come, then None

    def read():
        for line in iter(proc.stdout.readline, b""):
            lines.put(line)
        lines.put(None)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out = []

    def take(until, stop_at_summary=False):
        """Appends lines to `out` until the monotonic time `until` (or the handshake summary);
        False once s_client has ended."""
        while True:
            try:
                line = lines.get(timeout=max(0.01, until - time.monotonic()))
            except queue.Empty:
                return True
            if line is None:
                return False
            out.append(line)
            if stop_at_summary and line.startswith(b"SSL handshake has read"):
                return True
    deadline = time.monotonic() + timeout
    try:
        if take(deadline, stop_at_summary=True) and out and out[-1].startswith(b"SSL handshake has read"):
            if send:
                proc.stdin.write(send)
                proc.stdin.flush()
            take(time.monotonic() + settle)
        proc.stdin.close()
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    while not lines.empty():
        line = lines.get()
        if line is not None:
            out.append(line)
    return b"".join(out).decode(errors="replace")


def resumption_problems(port, proto, cert):
    """A first connection saves its session (and counts tickets); a second offers it back.
    Empty if the server sent no ticket and resumed nothing."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="testudo-sess-") as tmp:
        session = os.path.join(tmp, "session.pem")
        first = s_client(port, [proto, "-sess_out", session], cert)
        if "SSL handshake has read" not in first:
            return [f"{proto}: no handshake with the client certificate:\n{first[-2000:]}"]
        if "NewSessionTicket" in first:
            problems.append(f"{proto}: the server sent a session ticket")
        if os.path.exists(session) and os.path.getsize(session) > 0:
            second = s_client(port, [proto, "-sess_in", session], cert, settle=0.2)
            if "\nReused," in second:
                problems.append(f"{proto}: a session was resumed")
    return problems


def renegotiation_problems(port, cert):
    """TLS 1.2: after a full handshake the client asks to renegotiate ("R"); empty if the
    server answered no second ServerHello."""
    out = s_client(port, ["-tls1_2"], cert, send=b"R\n")
    if "SSL handshake has read" not in out:
        return [f"no TLS 1.2 handshake with the client certificate:\n{out[-2000:]}"]
    if "RENEGOTIATING" not in out:
        return ["s_client did not try to renegotiate"]
    after = out.split("RENEGOTIATING", 1)[1]
    return ["the server renegotiated at the client's request"] if "ServerHello" in after else []


def handshake_refused(port, args, cert):
    """True if the server answers a ClientHello made with `args` with no ServerHello."""
    out = s_client(port, args, cert, settle=0.1)
    return "ServerHello" not in out


ALLOWED_TLS12_SUITES = [  # src/tls/tls.cc, kTls12CipherList
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES128-GCM-SHA256"]


def below_tls12_problems(port, cert):
    """TLS 1.0, TLS 1.1, and TLS 1.2 with any suite but ECDHE + AEAD, each asked for by a client
    with a certificate and the extended master secret; empty if the server refused them all."""
    every_suite = "ALL:COMPLEMENTOFALL:@SECLEVEL=0"
    problems = [f"{proto} accepted" for proto in ("-tls1", "-tls1_1")
                if not handshake_refused(port, [proto, "-cipher", every_suite], cert)]
    others = "ALL:COMPLEMENTOFALL:" + "".join(f"!{suite}:" for suite in ALLOWED_TLS12_SUITES) + "@SECLEVEL=0"
    if not handshake_refused(port, ["-tls1_2", "-cipher", others], cert):
        problems.append("a TLS 1.2 suite other than ECDHE + AEAD accepted")
    return problems


def tls12_hello_offering_deflate():
    """A TLS 1.2 ClientHello that offers DEFLATE compression before none, with the ECDHE
    AEAD suites and the extensions a TLS 1.2 controller requires (extended master secret)."""
    suites = [0xC02C, 0xC02B, 0xCCA9, 0xC030, 0xC02F, 0xCCA8, 0x009C, 0x002F]
    groups = [0x001D, 0x0017]
    sigalgs = [0x0403, 0x0503, 0x0804, 0x0805, 0x0401]

    def ext(kind, body):
        return struct.pack("!HH", kind, len(body)) + body
    extensions = (ext(0x000A, struct.pack("!H", 2 * len(groups)) + b"".join(struct.pack("!H", g) for g in groups))
                  + ext(0x000B, b"\x01\x00")
                  + ext(0x000D, struct.pack("!H", 2 * len(sigalgs)) + b"".join(struct.pack("!H", s) for s in sigalgs))
                  + ext(0x0017, b"")
                  + ext(0xFF01, b"\x00"))
    body = (b"\x03\x03" + os.urandom(32) + b"\x00"
            + struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
            + b"\x02\x01\x00"  # compression methods: DEFLATE, null
            + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def server_hello_compression(port):
    """The compression method in the server's answer to tls12_hello_offering_deflate(), or
    None if it answered with something other than a ServerHello (an alert)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(tls12_hello_offering_deflate())
        data = b""
        while len(data) < 5 or len(data) < 5 + struct.unpack("!H", data[3:5])[0]:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if len(data) < 5 + 4 + 2 + 32 + 1 or data[0] != 0x16 or data[5] != 0x02:
        return None
    session_id_len = data[5 + 4 + 2 + 32]
    return data[5 + 4 + 2 + 32 + 1 + session_id_len + 2]


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir():
    path = tempfile.mkdtemp(prefix="testudo-pytest-tls-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def client_cert(workdir):
    """A throwaway self-signed certificate for the scanner's direct checks."""
    cert, key = os.path.join(workdir, "scanner-cert.pem"), os.path.join(workdir, "scanner-key.pem")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=tls-scanner", "-days", "1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def controllers(workdir):
    """Two controllers: "default" and "tls12" (--tls-min-version 1.2); the ports."""
    env = {**os.environ, "TESTUDO_HOME": workdir}
    procs, ports = [], {}
    try:
        for mode, extra in (("default", []), ("tls12", ["--tls-min-version", "1.2"])):
            log = os.path.join(workdir, f"controller-{mode}.log")
            procs.append(subprocess.Popen([TESTUDO_BIN, "--profile", mode, "controller", "--log-file", log, *extra],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            client_file = pathlib.Path(workdir, f"profile_{mode}", "security", "controller-client.json")
            assert wait_until(client_file.exists, 20), f"the {mode} controller did not start"
            ports[mode] = json.loads(client_file.read_text())["port"]
        yield ports
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Scans:
    """testssl.sh running against each controller at once; findings(mode) waits for one."""

    def __init__(self, ports, workdir, cert):
        openssl = openssl_with_certificate(os.path.join(workdir, "openssl"), cert)
        self.running = {}
        for mode, port in ports.items():
            jsonfile = os.path.join(workdir, f"scan-{mode}.json")
            # Its own session, so that stop() ends its children too.
            scan = subprocess.Popen(scan_command(port, jsonfile, openssl), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, cwd=workdir, start_new_session=True)
            self.running[mode] = (jsonfile, scan)

    def findings(self, mode):
        jsonfile, proc = self.running[mode]
        output, _ = proc.communicate(timeout=SCAN_TIMEOUT)
        # testssl.sh's own failures exit with 242..255; below that the status is no verdict.
        assert proc.returncode < 242 and os.path.exists(jsonfile), f"testssl.sh failed ({proc.returncode}):\n{output}"
        return json.loads(pathlib.Path(jsonfile).read_text())

    def stop(self):
        # SIGTERM first: testssl.sh removes its /tmp/testssl.XXXXXX on the way out.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _, proc in self.running.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, sig)
            for _, proc in self.running.values():
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass


@pytest.fixture(scope="module")
def scans(controllers, workdir, client_cert):
    running = Scans(controllers, workdir, client_cert)
    yield running
    running.stop()


# --- the tests -----------------------------------------------------------------------------

def test_the_checks_fire_on_a_weak_server(scans, workdir):
    """The negative control: OpenSSL's s_server with its defaults (TLS 1.0 to 1.3, tickets,
    session cache), client renegotiation allowed and AES128-SHA; a listener that picks DEFLATE;
    and the scanner's findings for such a server. (It asks for `scans` only to start them: its seconds overlap theirs.)"""
    cert, key = os.path.join(workdir, "weak-cert.pem"), os.path.join(workdir, "weak-key.pem")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=weak", "-days", "1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # stdin stays open: s_server ends its connections when its stdin ends.
    server = subprocess.Popen([OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", cert, "-key", key,
                               "-cipher", "AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0", "-client_renegotiation",
                               "-quiet"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        assert wait_until(listening, 10)
        assert resumption_problems(port, "-tls1_2", None) != []
        assert resumption_problems(port, "-tls1_3", None) != []
        assert renegotiation_problems(port, None) != []
        assert below_tls12_problems(port, None) == ["-tls1 accepted", "-tls1_1 accepted",
                                                    "a TLS 1.2 suite other than ECDHE + AEAD accepted"]
        # OpenSSL 3 cannot compress; a listener that answers any ClientHello with a ServerHello
        # choosing DEFLATE stands in for a server that can.
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)

            def answer_with_deflate():
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    hello = b"\x03\x03" + os.urandom(32) + b"\x00" + b"\xc0\x2f" + b"\x01"
                    handshake = b"\x02" + struct.pack("!I", len(hello))[1:] + hello
                    conn.sendall(b"\x16\x03\x03" + struct.pack("!H", len(handshake)) + handshake)
            answering = threading.Thread(target=answer_with_deflate, daemon=True)
            answering.start()
            assert server_hello_compression(listener.getsockname()[1]) == 1
            answering.join(timeout=10)
        findings = [  # what testssl.sh 3.0.8 wrote for `s_server -tls1_2 -cipher AES128-SHA -client_renegotiation`
            {"id": "SSLv2", "severity": "OK", "finding": "not offered"},
            {"id": "SSLv3", "severity": "OK", "finding": "not offered"},
            {"id": "TLS1", "severity": "INFO", "finding": "not offered"},
            {"id": "TLS1_1", "severity": "INFO", "finding": "not offered"},
            {"id": "TLS1_2", "severity": "OK", "finding": "offered"},
            {"id": "TLS1_3", "severity": "INFO", "finding": "not offered + downgraded to weaker protocol"},
            {"id": "secure_renego", "severity": "OK", "finding": "supported"},
            {"id": "secure_client_renego", "severity": "MEDIUM", "finding": "VULNERABLE, potential DoS threat"},
            {"id": "CRIME_TLS", "severity": "OK", "finding": "not vulnerable (not using HTTP anyway)"},
            {"id": "cipher-tls1_2_x2f", "severity": "INFO", "finding":
             "TLS 1.2   x2f     AES128-SHA                        RSA        AES         128      "
             "TLS_RSA_WITH_AES_128_CBC_SHA"},
        ]
        found = "\n".join(weaknesses(findings, allowed={"TLS1_3"}))
        for expected in ("TLS1_2 below the minimum", "TLS1_3 should be offered", "not AEAD", "without ECDHE",
                         "secure_client_renego"):
            assert expected in found, found
    finally:
        server.kill()
        server.wait()


def test_tls12_controller_offers_only_ecdhe_aead_and_never_renegotiates_compresses_or_resumes(
        scans, controllers, client_cert):
    port = controllers["tls12"]
    assert resumption_problems(port, "-tls1_2", client_cert) == []
    assert resumption_problems(port, "-tls1_3", client_cert) == []
    assert renegotiation_problems(port, client_cert) == []
    assert server_hello_compression(port) == 0, "the server must answer DEFLATE with no compression"
    assert below_tls12_problems(port, client_cert) == []
    # testssl.sh 3.0.8's own ClientHellos (all but its s_client's) lack the extended master
    # secret, which this controller requires of a TLS 1.2 peer: it refuses them whatever they ask
    # for, so the scanner sees TLS 1.3 only and its "not offered" below 1.3 proves nothing here;
    # below_tls12_problems asks with the extension. Compression and client renegotiation are
    # likewise checked above.
    assert weaknesses(scans.findings("tls12"), allowed={"TLS1_2", "TLS1_3"}, visible={"TLS1_3"},
                      seen_by_scanner=("secure_renego",)) == []


def test_default_controller_offers_only_tls13_aead(scans, controllers, client_cert):
    port = controllers["default"]
    assert resumption_problems(port, "-tls1_3", client_cert) == []
    assert server_hello_compression(port) is None, "a TLS 1.2 ClientHello must be refused"
    # Without a client certificate the scanner still sees everything up to the certificate
    # request (ServerHello); in a TLS 1.3 only server renegotiation and compression do not exist.
    assert weaknesses(scans.findings("default"), allowed={"TLS1_3"}) == []
