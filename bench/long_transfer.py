#!/usr/bin/python3
"""One large value pushed to an engine and pulled back, on loopback or on a slow link: the
wall time and rate of each direction, the controller's peak memory, and whether anybody was
declared dead on the way (issue: reliability, "a 2 GB push and pull succeed on loopback and on
a 200 Mbit/s link"). With --rate, the engine runs in a network namespace behind a veth pair
that `tc tbf` shapes to that rate each way (tests/python/netns.py ShapedLink).

    bench/long_transfer.py [--size-mb 2048] [--rate 200mbit] [--timeout-s 10] [--relay-from-bytes N]

Needs build/testudo, build/python and numpy (the value is a uint8 array, sent without a copy);
--rate needs root, ip and tc. Prints one line per figure.
"""
import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "build", "python"))
sys.path.insert(0, os.path.join(REPO, "tests", "python"))
os.environ.setdefault("TESTUDO_BIN", os.path.join(REPO, "build", "testudo"))

import numpy  # noqa: E402

from conftest import TESTUDO_BIN, Cluster, peak_rss  # noqa: E402

MiB = 1 << 20


def peak_rss_mib(pid):
    return peak_rss(pid) / MiB


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=2048, help="MiB in the value (default 2048)")
    parser.add_argument("--rate", help="shape the engine's link to this tbf rate, e.g. 200mbit (default: loopback)")
    parser.add_argument("--timeout-s", type=float, default=10,
                        help="heartbeat timeout of the controller and the engine, in seconds (default 10)")
    parser.add_argument("--relay-from-bytes", type=int,
                        help="the controller's --relay-from-bytes (0: receive each request whole first; "
                             "default: the controller's)")
    args = parser.parse_args()

    link = None
    engine = None
    extra = ("--heartbeat-timeout", str(args.timeout_s))
    if args.relay_from_bytes is not None:
        extra += ("--relay-from-bytes", str(args.relay_from_bytes))
    if args.rate:
        from netns import ShapedLink
        link = ShapedLink(args.rate)
        extra += ("--ip", link.host_address)
    cluster = Cluster(0 if link else 1, profile="transfer", extra=extra)
    try:
        if link:
            engine = subprocess.Popen(
                ["ip", "netns", "exec", link.namespace, TESTUDO_BIN.replace("/testudo", "/testudo-engine"),
                 "--profile", "transfer", "--controller-timeout", str(args.timeout_s), "--give-up", "0"],
                env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rc = cluster.client()
        rc.wait_for_engines(1, timeout=60)
        view = rc[rc.ids[0]]
        value = numpy.frombuffer(os.urandom(MiB), dtype=numpy.uint8)
        value = numpy.tile(value, args.size_mb)
        where = f"a {args.rate} link" if link else "loopback"
        print(f"value: {args.size_mb} MiB over {where}; timeouts {args.timeout_s:g} s")
        t0 = time.monotonic()
        view.push({"big": value}, block=True)
        push_s = time.monotonic() - t0
        print(f"push: {push_s:.1f} s ({args.size_mb / push_s:.0f} MiB/s); "
              f"controller peak RSS so far: {peak_rss_mib(cluster.controller_pid):.0f} MiB", flush=True)
        t0 = time.monotonic()
        back = view.pull("big", block=True)
        pull_s = time.monotonic() - t0
        print(f"pull: {pull_s:.1f} s ({args.size_mb / pull_s:.0f} MiB/s)")
        same = bool(numpy.array_equal(back, value))
        print(f"value back intact: {same}")
        print(f"controller peak RSS after the pull: {peak_rss_mib(cluster.controller_pid):.0f} MiB")
        log = open(cluster.path("log", "controller.log"), errors="replace").read()
        dropped = len(re.findall(r"engine \d+ disconnected", log))
        for line in log.splitlines():
            if re.search(r"engine \d+ disconnected", line):
                print("  " + line)
        print(f"engine disconnects in the controller's log: {dropped}")
        rc.close()
        return 0 if same and dropped == 0 else 1
    finally:
        if engine:
            engine.kill()
            engine.wait()
        cluster.stop()
        if link:
            link.close()


if __name__ == "__main__":
    sys.exit(main())
