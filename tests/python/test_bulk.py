"""The bulk path (docs/protocol.md "The bulk path"; threat-model T9, T12) on a real cluster: a
sealing client's large push, apply argument and broadcast travel on data connections that
the controller splices to the engines without reading them -- the status report counts the
bytes, and a marker inside those bodies is found neither in a gcore of the controller nor in
its files -- while data connections with forged or replayed tickets are refused and the
cluster goes on serving."""

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

import testudo

from test_e2e import cluster, controller_holds  # noqa: F401  (the module's sealed cluster)


def bulk_report(cluster):
    report = json.loads(cluster.run("status", "--json").stdout)
    return {k: report[k] for k in ("bulk_transfers", "bulk_failed", "bulk_bytes", "bulk_refused")}


def controller_address(cluster):
    info = json.loads(open(cluster.client_file).read())
    return info.get("host", "127.0.0.1"), int(info["port"])


def test_large_sealed_bodies_go_around_the_controller(cluster, sealed):
    before = bulk_report(cluster)
    marker = f"BULK-{uuid.uuid4().hex}".encode()
    big = marker * ((24 << 20) // len(marker))  # 24 MiB of pickled bytes, the marker all through
    view = sealed[:]
    view.block = True
    view.push({"big": big})  # a broadcast: one transfer per engine
    view.execute(f"seen = (len(big), big[:{len(marker)}].decode())")
    assert view.pull("seen") == [(len(big), marker.decode())] * 2
    # A large argument of a direct apply.
    assert sealed[1].apply_sync(lambda b: len(b) + 1, big) == len(big) + 1
    after = bulk_report(cluster)
    assert after["bulk_transfers"] - before["bulk_transfers"] == 3
    assert after["bulk_bytes"] - before["bulk_bytes"] >= 3 * len(big)
    assert after["bulk_failed"] == before["bulk_failed"]
    # Small requests still take the control connection.
    view.execute("small = 1")
    assert bulk_report(cluster)["bulk_transfers"] == after["bulk_transfers"]
    plain_marker = f"PLAIN-{uuid.uuid4().hex}"
    plain = cluster.client(e2e=False)
    assert plain[0].apply_sync(lambda s: s, plain_marker) == plain_marker
    plain.close()
    held = controller_holds(cluster, [marker, plain_marker.encode()])
    assert plain_marker.encode() in held, "the search found nothing at all: it could not have failed"
    assert marker not in held


def test_large_load_balanced_arguments_go_around_the_controller(cluster, sealed):
    before = bulk_report(cluster)
    marker = f"LBBULK-{uuid.uuid4().hex}".encode()
    big = marker * ((3 << 20) // len(marker))
    lview = sealed.load_balanced_view()
    assert lview.apply_sync(lambda b: (len(b), b[:8]), big) == (len(big), big[:8])
    # A map of two large items: one task each, wherever the scheduler puts it.
    assert lview.map_sync(len, [big, big + b"!"]) == [len(big), len(big) + 1]
    after = bulk_report(cluster)
    assert after["bulk_transfers"] - before["bulk_transfers"] == 3
    assert after["bulk_bytes"] - before["bulk_bytes"] >= 3 * len(big)
    assert after["bulk_failed"] == before["bulk_failed"]
    assert marker not in controller_holds(cluster, [marker])


def test_a_client_can_keep_large_bodies_on_the_control_connection(cluster):
    os.environ["TESTUDO_HOME"] = cluster.home
    client = cluster.client(e2e=True, bulk_from_bytes=0)
    before = bulk_report(cluster)
    big = b"x" * (8 << 20)
    client[0].push({"kept": big}, block=True)
    client[0].execute("n = len(kept)", block=True)
    assert client[0].pull("n", block=True) == len(big)
    assert bulk_report(cluster)["bulk_transfers"] == before["bulk_transfers"]
    client.close()


def hello(role, ticket):
    return b"TSTD-BULK" + bytes([1, role]) + ticket


def closed_by_controller(sock, timeout=10):
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_forged_tickets_are_refused_and_the_cluster_goes_on(cluster, sealed):
    host, port = controller_address(cluster)
    before = bulk_report(cluster)
    socks = []
    for role in (1, 2, 1):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(hello(role, os.urandom(32)))
        socks.append(s)
    for s in socks:
        assert closed_by_controller(s)
        s.close()
    # A malformed hello (wrong version) is closed too, without counting as a ticket.
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"TSTD-BULK" + bytes([9, 1]) + os.urandom(32))
    assert closed_by_controller(s)
    s.close()
    deadline = time.monotonic() + 5
    while bulk_report(cluster)["bulk_refused"] - before["bulk_refused"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bulk_report(cluster)["bulk_refused"] - before["bulk_refused"] == 3
    big = os.urandom(4 << 20)
    sealed[0].push({"after_forgeries": big}, block=True)
    sealed[0].execute("n = len(after_forgeries)", block=True)
    assert sealed[0].pull("n", block=True) == len(big)


def test_a_data_connection_that_never_sends_its_hello_is_cut_off(cluster, sealed):
    host, port = controller_address(cluster)
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(b"TSTD-BU")  # the start of a hello, then nothing: cut off at the handshake deadline
    assert closed_by_controller(s, timeout=30)
    s.close()
    assert sealed[0].apply_sync(lambda: "still serving") == "still serving"


def test_large_sealed_results_come_back_around_the_controller_and_stay_stored(cluster, sealed):
    before = bulk_report(cluster)
    marker = f"RESULT-{uuid.uuid4().hex}"
    count = (20 << 20) // len(marker)
    # Built on the engine: the marker's bytes travel only inside sealed bodies.
    sealed[0].execute(f"res = ({marker[:8]!r} + {marker[8:]!r}).encode() * {count}", block=True)
    got = sealed[0].pull("res", block=True)
    assert len(got) == count * len(marker) and got[:len(marker)] == marker.encode()
    after = bulk_report(cluster)
    # Into the task store's file from the engine, and out of it to the client.
    assert after["bulk_transfers"] - before["bulk_transfers"] == 2
    assert after["bulk_bytes"] - before["bulk_bytes"] >= 2 * len(got)
    # Stored as it came (sealed): a new process of the identity fetches it later, the same way.
    ar = sealed[1].apply_async(lambda n: b"y" * n, 18 << 20)
    assert len(ar.get(timeout=60)) == 18 << 20
    script = (
        "import testudo\n"
        f"rc = testudo.Client(profile={cluster.profile!r}, e2e=True)\n"
        f"print(len(rc.get_result({ar.msg_ids[0]!r}).get(timeout=60)))\n"
    )
    later = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ))
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip() == str(18 << 20)
    assert bulk_report(cluster)["bulk_transfers"] - after["bulk_transfers"] == 3
    plain_marker = f"PLAIN-{uuid.uuid4().hex}"
    plain = cluster.client(e2e=False)
    assert plain[0].apply_sync(lambda s: s, plain_marker) == plain_marker
    # A client that does not seal gets the stored sealed result around the TLS too, and is
    # told it cannot open it.
    with pytest.raises(testudo.SealBroken, match="sealed end to end"):
        plain.get_result(ar.msg_ids[0]).get(timeout=60)
    plain.close()
    held = controller_holds(cluster, [marker.encode(), plain_marker.encode()])
    assert plain_marker.encode() in held, "the search found nothing at all: it could not have failed"
    assert marker.encode() not in held
