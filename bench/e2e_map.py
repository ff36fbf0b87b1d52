#!/usr/bin/python3
"""What sealing costs the call users make first: a load-balanced map_sync of 10^4 and 10^5
items on a fresh 2-engine cluster, with and without end-to-end sealing (Client(e2e=True)),
in one run. Needs build/ (testudo, testudo-engine, python/); run nothing heavy meanwhile.

    bench/e2e_map.py [--engines 2] [--items 10000,100000]
"""
import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "..", "build")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--items", default="10000,100000")
    args = ap.parse_args()
    os.environ["TESTUDO_HOME"] = tempfile.mkdtemp(prefix="testudo-e2e-map-")
    os.environ["PATH"] = os.path.abspath(BUILD) + os.pathsep + os.environ["PATH"]
    sys.path.insert(0, os.path.join(BUILD, "python"))
    import testudo
    for e2e in (False, True):
        profile = f"e2emap{int(e2e)}"
        with testudo.Cluster(n=args.engines, profile=profile) as started:
            started.wait_for_engines(args.engines, timeout=60)
            rc = testudo.Client(profile=profile, e2e=e2e)
            view = rc.load_balanced_view()
            for n in (int(x) for x in args.items.split(",")):
                t = time.perf_counter()
                result = view.map_sync(lambda x: x, range(n))
                elapsed = time.perf_counter() - t
                assert result[-1] == n - 1
                print(f"{'sealed' if e2e else 'plain '}: map_sync of {n} on a fresh cluster: {elapsed * 1000:.0f} ms",
                      flush=True)
            rc.close()


if __name__ == "__main__":
    main()
