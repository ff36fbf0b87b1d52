#!/usr/bin/python3
"""What end-to-end sealing costs the first time a client meets N engines (the per-pair key
set-up of docs/e2e-design.md: the client checks each engine's signed seal key and sends it a
signed, sealed pair offer; the engine checks it and grants a result key, which the client
checks on the first reply). On a fresh cluster of N real engines, in one run:

  * a sealed client's first broadcast apply (pairs with all N) and its second (paired);
  * the same two for a client that does not seal;
  * a second sealed client process's first load-balanced apply (one sealed empty pull per
    engine to pair, then the task).

The set-up per pair is (first - second, sealed) - (first - second, not sealed), over N.
Needs build/; run nothing heavy meanwhile.

    bench/e2e_pairing.py [--engines 8,32]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "..", "build")

CHILD = """
import sys, time
sys.path.insert(0, {python!r})
import testudo
rc = testudo.Client(profile={profile!r}, e2e=True)
lview = rc.load_balanced_view()
t = time.perf_counter()
lview.apply_sync(lambda: 0)
first = time.perf_counter() - t
t = time.perf_counter()
lview.apply_sync(lambda: 0)
print(first, time.perf_counter() - t)
rc.close()
"""


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="8,32")
    args = ap.parse_args()
    os.environ["TESTUDO_HOME"] = tempfile.mkdtemp(prefix="testudo-e2e-pairing-")
    os.environ["PATH"] = os.path.abspath(BUILD) + os.pathsep + os.environ["PATH"]
    python_dir = os.path.abspath(os.path.join(BUILD, "python"))
    sys.path.insert(0, python_dir)
    import testudo
    for n in (int(x) for x in args.engines.split(",")):
        profile = f"pairing{n}"
        with testudo.Cluster(n=n, profile=profile) as started:
            started.wait_for_engines(n, timeout=300)
            row = {}
            for e2e in (False, True):
                rc = testudo.Client(profile=profile, e2e=e2e)
                view = rc[:]
                row[e2e] = (timed(lambda: view.apply_sync(lambda: 0)), timed(lambda: view.apply_sync(lambda: 0)))
                rc.close()
            out = subprocess.run([sys.executable, "-c", CHILD.format(python=python_dir, profile=profile)],
                                 capture_output=True, text=True, check=True, timeout=600)
            lb_first, lb_second = (float(x) for x in out.stdout.split())
            plain, sealed = row[False], row[True]
            per_pair = ((sealed[0] - sealed[1]) - (plain[0] - plain[1])) / n
            print(f"{n} engines: broadcast apply, first / second: not sealed {plain[0] * 1000:.0f} / "
                  f"{plain[1] * 1000:.0f} ms, sealed {sealed[0] * 1000:.0f} / {sealed[1] * 1000:.0f} ms; "
                  f"set-up {per_pair * 1000:.2f} ms per engine; a new sealed client's first load-balanced "
                  f"apply {lb_first * 1000:.0f} ms (then {lb_second * 1000:.1f} ms)", flush=True)


if __name__ == "__main__":
    main()
