#!/usr/bin/python3
"""Quick probe of testudo alone, for profiling work: starts build/testudo with N engines in a
private TESTUDO_HOME, runs a chosen subset of bench/workloads.py operations and prints one
line per figure. Faster than bench/run (no peers, fewer repetitions).

    bench/probe.py [--engines 2] [--only rt,lb,direct,push,pull] [--mb 100] [--reps 3]
                   [--tasks 10000] [--hold SECONDS] [--no-e2e]

The client seals end to end, as every client does by default (docs/security.md); --no-e2e:
it does not (Client(e2e=False)). Run once with and once without for the cost of sealing.

--hold keeps the cluster up after start for SECONDS (to attach `perf record -p`) and prints
the pids first.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # noqa: E402
import workloads  # noqa: E402


def _children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def cpu_seconds(pids):
    """user+system CPU seconds of these processes and all their descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0, list(pids)
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
        todo += _children(pid)
    return total


def thread_switches(pids):
    """{(process, thread name): voluntary + involuntary context switches} of these processes and
    their descendants; a thread sleeping and being woken counts one voluntary switch."""
    out, todo = {}, list(pids)
    while todo:
        pid = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{tid}/comm") as f:
                        name = f.read().strip()
                    counts = [0, 0]
                    with open(f"/proc/{pid}/task/{tid}/status") as f:
                        for line in f:
                            if line.startswith("voluntary_ctxt_switches"):
                                counts[0] = int(line.split()[1])
                            elif line.startswith("nonvoluntary_ctxt_switches"):
                                counts[1] = int(line.split()[1])
                    key = (pid, f"{name}/{tid}")
                    out[key] = (counts[0], counts[1])
                except OSError:
                    pass
        except OSError:
            pass
        todo += _children(pid)
    return out


def noop():
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--only", default="rt,lb,direct,push,pull")
    ap.add_argument("--mb", type=float, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--hold", type=float, default=0)
    ap.add_argument("--cluster-args", default="", help="extra `testudo cluster start` options, e.g. '--hwm 8'")
    ap.add_argument("--switches", action="store_true",
                    help="also print context switches per operation for each thread")
    ap.add_argument("--build", help="a build directory other than build/ (testudo and python/ in it)")
    ap.add_argument("--no-e2e", action="store_true", help="the client does not seal its requests end to end")
    args = ap.parse_args()
    only = set(args.only.split(","))
    peers.NOOP = noop
    workloads.NOOP = noop
    if args.build:
        sys.path.insert(0, os.path.join(os.path.abspath(args.build), "python"))
    peers.Testudo.cluster_args = args.cluster_args.split()
    peers.Testudo.client_args = {"e2e": False} if args.no_e2e else {}
    p = peers.Testudo()
    if args.build:
        p.exe = os.path.join(os.path.abspath(args.build), "testudo")
    try:
        print(f"start: {p.start(args.engines):.3f} s", flush=True)
        print(f"pids: controller {p.controller_pids()} engines {p.engine_pids()}", flush=True)
        if args.hold:
            time.sleep(args.hold)
        ctl, eng = p.controller_pids(), p.engine_pids()

        def cpu():
            switches = thread_switches(ctl + eng + [os.getpid()]) if args.switches else {}
            return cpu_seconds(ctl), cpu_seconds(eng), cpu_seconds([os.getpid()]), switches

        def role(pid):
            return "controller" if pid in ctl else "engine" if pid in eng else "client"

        def show(what, c0, n):
            c1 = cpu()
            print(f"    cpu per {what}: controller {(c1[0]-c0[0])/n*1e6:.0f} us, engines {(c1[1]-c0[1])/n*1e6:.0f} us, "
                  f"client {(c1[2]-c0[2])/n*1e6:.0f} us", flush=True)
            for key, (v, i) in sorted(c1[3].items()):
                v0, i0 = c0[3].get(key, (0, 0))
                if (v - v0 + i - i0) / n >= 0.01:
                    print(f"      switches per {what}: {role(key[0]):10} {key[1]:24} voluntary {(v-v0)/n:.2f}"
                          f" involuntary {(i-i0)/n:.2f}", flush=True)

        c0 = cpu()
        if "rt" in only:
            s = workloads.round_trips(p.apply_rt, args.rounds)
            show("round trip", c0, args.rounds + 20)
            print(f"apply rt: median {workloads.percentile(s, 50):.0f} us p99 {workloads.percentile(s, 99):.0f} us",
                  flush=True)
        if "lb" in only:
            c0 = cpu()
            print(f"lb: {workloads.throughput(p, args.tasks, 'lb'):.0f} tasks/s", flush=True)
            show("task", c0, args.tasks)
        if "direct" in only:
            c0 = cpu()
            print(f"direct: {workloads.throughput(p, args.tasks, 'direct'):.0f} tasks/s", flush=True)
            show("task", c0, args.tasks)
        if "push" in only or "pull" in only:
            arr = workloads.make_array(int(args.mb * workloads.MB))
            c0 = cpu()
            r = workloads.push_pull(p, arr, args.reps)
            print(f"push/pull {args.mb:g} MB: {r[0]:.0f} / {r[1]:.0f} MB/s", flush=True)
            show("push+pull", c0, args.reps)
    finally:
        p.stop()
        p.cleanup()


if __name__ == "__main__":
    main()
