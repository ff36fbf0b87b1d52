#!/usr/bin/python3
"""Large push/pull side by side, in one run: testudo with sealing turned off (every byte through
the controller's two TLS hops), testudo as it comes, sealed end to end (bodies of 1 MiB or
more on the bulk path: spliced around the controller's TLS, docs/protocol.md "The bulk path"), and
ipyparallel 7 (HMAC-signed, unencrypted). For each: the median MB/s of push and of pull of
a random float64 array to/from engine 0, and the controller's CPU seconds per relayed GB.

    bench/bulk_transfer.py [--mb 100,1000] [--reps 3] [--only testudo-unsealed,testudo,ipyparallel]

Ratios are against ipyparallel measured in the same run (> 1: testudo faster).
"""
import argparse
import gc
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # noqa: E402
import workloads  # noqa: E402
from probe import cpu_seconds  # noqa: E402


class TestudoUnsealed(peers.Testudo):
    """A client that turns end-to-end sealing off (on by default): the controller's TLS path."""
    name = "testudo-unsealed"
    client_args = {"e2e": False}


KINDS = {"testudo-unsealed": TestudoUnsealed, "testudo": peers.Testudo, "ipyparallel": peers.Ipyparallel}


def measure(kind, sizes_mb, reps):
    peer = KINDS[kind]()
    out = {}
    try:
        peer.start(2)
        controller = peer.controller_pids() or []
        for mb in sizes_mb:
            arr = workloads.make_array(int(mb * workloads.MB))
            pushes, pulls, cpu = [], [], []
            for _ in range(reps):
                c0 = cpu_seconds(controller)
                t0 = time.perf_counter()
                peer.push(arr)
                t1 = time.perf_counter()
                back = peer.pull()
                t2 = time.perf_counter()
                cpu.append((cpu_seconds(controller) - c0) / (2 * arr.nbytes / 1e9))
                if back.shape != arr.shape or back[0] != arr[0] or back[-1] != arr[-1]:
                    raise AssertionError("pulled array differs from the pushed one")
                del back
                pushes.append(arr.nbytes / workloads.MB / (t1 - t0))
                pulls.append(arr.nbytes / workloads.MB / (t2 - t1))
                peer.clear()
                gc.collect()
            out[mb] = (statistics.median(pushes), statistics.median(pulls), statistics.median(cpu))
            del arr
            gc.collect()
    finally:
        peer.stop()
        peer.cleanup()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", default="100,1000", help="array sizes in MB, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default=",".join(KINDS))
    args = ap.parse_args()
    sizes = [float(s) for s in args.mb.split(",")]
    results = {}
    for kind in args.only.split(","):
        print(f"running {kind} ...", flush=True)
        results[kind] = measure(kind, sizes, args.reps)
    base = results.get("ipyparallel")
    print(f"\n{'peer':<13} {'MB':>6} {'push MB/s':>10} {'pull MB/s':>10} {'ctl CPU s/GB':>13}  vs ipyparallel")
    for kind, by_size in results.items():
        for mb, (push, pull, cpu) in by_size.items():
            ratio = ""
            if base and kind != "ipyparallel" and mb in base:
                ratio = f"push {push / base[mb][0]:.2f}x, pull {pull / base[mb][1]:.2f}x"
            print(f"{kind:<13} {mb:>6.0f} {push:>10.0f} {pull:>10.0f} {cpu:>13.3f}  {ratio}")


if __name__ == "__main__":
    main()
