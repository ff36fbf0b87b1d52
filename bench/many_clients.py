#!/usr/bin/python3
"""Many clients at once (issue 15's "many clients" goal): K client processes, each submitting
a load-balanced map_sync of N trivial tasks at the same moment, against one client alone on
the same fresh cluster. Prints the single client's rate, the total rate of the K, their ratio
(goal: within 20 % of one client's) and each client's completion time (no client starved:
the slowest against the fastest).

    bench/many_clients.py [--clients 16] [--tasks 10000] [--engines 2] [--no-e2e]

Every client seals end to end, as clients do by default (docs/security.md); --no-e2e: none
does (Client(e2e=False)). Run once with and once without to see what sealing costs with
many clients at once.

Needs build/testudo and build/python (scripts/setup). Runs on this machine only.
"""
import argparse
import multiprocessing
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "build", "python"))
os.environ.setdefault("TESTUDO_BIN", os.path.join(REPO, "build", "testudo"))

import testudo  # noqa: E402


def one_client(profile, tasks, start, results, e2e):
    rc = testudo.Client(profile=profile, e2e=e2e)
    lview = rc.load_balanced_view()
    start.wait()
    t0 = time.monotonic()
    out = lview.map_sync(abs, range(tasks))
    elapsed = time.monotonic() - t0
    assert out == list(range(tasks))
    results.put((t0, elapsed))
    rc.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=10000, help="tasks per client")
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--no-e2e", action="store_true", help="no client seals its requests end to end")
    args = parser.parse_args()

    with testudo.Cluster(n=args.engines) as cluster_rc:
        profile = cluster_rc.profile
        rc = testudo.Client(profile=profile, e2e=False) if args.no_e2e else cluster_rc
        lview = rc.load_balanced_view()
        t0 = time.monotonic()
        assert lview.map_sync(abs, range(args.tasks)) == list(range(args.tasks))
        single = args.tasks / (time.monotonic() - t0)

        ctx = multiprocessing.get_context("spawn")
        start = ctx.Event()
        results = ctx.Queue()
        procs = [ctx.Process(target=one_client, args=(profile, args.tasks, start, results, not args.no_e2e))
                 for _ in range(args.clients)]
        for p in procs:
            p.start()
        time.sleep(2.0)  # every client connected and waiting
        start.set()
        timings = [results.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        first_start = min(t for t, _ in timings)
        last_end = max(t + e for t, e in timings)
        total = args.clients * args.tasks / (last_end - first_start)
        elapsed = sorted(e for _, e in timings)

    sealing = "not sealed" if args.no_e2e else "sealed end to end"
    print(f"machine: {os.cpu_count()} cores; {args.engines} engines; map_sync(abs, range({args.tasks})); {sealing}")
    print(f"one client alone:           {single:10,.0f} tasks/s")
    print(f"{args.clients} clients at once, total: {total:10,.0f} tasks/s  "
          f"(ratio to one client: {total / single:.2f}; goal >= 0.80)")
    print(f"per-client completion:      fastest {elapsed[0]:.2f} s, median {elapsed[len(elapsed) // 2]:.2f} s, "
          f"slowest {elapsed[-1]:.2f} s (slowest/fastest {elapsed[-1] / elapsed[0]:.2f})")


if __name__ == "__main__":
    main()
