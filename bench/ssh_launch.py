#!/usr/bin/python3
"""Engines on other hosts over SSH against engines on this host, on the same machine: how long
`cluster start` takes until every engine is ready, the apply round trip, and 10,000 trivial
load-balanced tasks. The "hosts" are network namespaces, each with its own sshd (the test
harness of tests/python/netns.py); with --delay-ms, every byte between engines and
the controller also crosses a TCP proxy this script runs that holds it that long per direction.

    sudo bench/ssh_launch.py [--hosts 4] [--per-host 4] [--delay-ms 10] [--tasks 10000]

Needs root, ip, ssh and sshd (scripts/setup), and build/testudo + build/python. Prints one line
per figure and the ratios ssh/local.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "build", "python"))
sys.path.insert(0, os.path.join(REPO, "tests", "python"))
os.environ.setdefault("TESTUDO_BIN", os.path.join(REPO, "build", "testudo"))

import testudo  # noqa: E402
from netns import DelayProxy, Hosts  # noqa: E402


def _noop():
    return None


def measure(cluster, n, tasks):
    t0 = time.monotonic()
    rc = cluster.start_and_connect_sync()
    ready = time.monotonic() - t0
    assert len(rc.ids) == n, rc.ids
    view = rc[rc.ids[0]]
    for _ in range(20):
        view.apply_sync(_noop)
    samples = []
    for _ in range(300):
        t = time.perf_counter()
        view.apply_sync(_noop)
        samples.append(time.perf_counter() - t)
    lview = rc.load_balanced_view()
    t = time.perf_counter()
    lview.map_sync(_noop_arg, range(tasks))
    rate = tasks / (time.perf_counter() - t)
    rc.close()
    cluster.stop_cluster_sync()
    return ready, statistics.median(samples) * 1e6, rate


def _noop_arg(x):
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--per-host", type=int, default=4)
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--tasks", type=int, default=10_000)
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("sshd") and not os.path.exists("/usr/sbin/sshd"):
        sys.exit("ssh_launch.py needs root and sshd (scripts/setup installs openssh-server)")
    os.environ["TESTUDO_HOME"] = tempfile.mkdtemp(prefix="testudo-bench-ssh-")
    n = args.hosts * args.per_host
    names = tuple("bcdefghijk"[: args.hosts])
    print(f"{n} engines: local, then {args.hosts} namespaces x {args.per_host} over SSH "
          f"(2-core machine: every engine shares its CPUs)", flush=True)
    hosts = Hosts(names)
    results = {}
    try:
        results["local"] = measure(testudo.Cluster(n=n), n, args.tasks)
        per_host = {hosts.address[name]: args.per_host for name in names}
        common = dict(engines="ssh", hosts=per_host, ssh_args=["-F", hosts.ssh_config],
                      remote_testudo=os.environ["TESTUDO_BIN"], remote_dir=f"{hosts.dir}/remote")
        results["ssh"] = measure(testudo.Cluster(controller_ip="0.0.0.0", controller_location=hosts.controller_address,
                                                 **common), n, args.tasks)
        if args.delay_ms > 0:
            # The controller on loopback; engines (and the launcher) reach it only through the proxy.
            port = 20000 + os.getpid() % 20000
            proxy = DelayProxy(hosts.controller_address, "127.0.0.1", port, args.delay_ms / 1000)
            try:
                label = f"ssh + {args.delay_ms:g} ms each way"
                results[label] = measure(testudo.Cluster(controller_ip="127.0.0.1", controller_location=hosts.controller_address,
                                                         controller_args=["--port", str(port)], **common), n, args.tasks)
            finally:
                proxy.close()
    finally:
        hosts.close()
        shutil.rmtree(os.environ["TESTUDO_HOME"], ignore_errors=True)
    base = results["local"]
    print(f"{'engines':<28} {'ready (s)':>10} {'apply RT (us)':>14} {'LB tasks/s':>11}")
    for label, (ready, rt, rate) in results.items():
        ratio = "" if label == "local" else f"   x{ready / base[0]:.2f} / x{rt / base[1]:.2f} / x{rate / base[2]:.2f}"
        print(f"{label:<28} {ready:>10.2f} {rt:>14.0f} {rate:>11.0f}{ratio}")


if __name__ == "__main__":
    main()
