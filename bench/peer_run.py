"""Run every workload against ONE peer, in this process, and write its results as JSON.

    /usr/bin/python3 bench/peer_run.py PEER MODE OUT.json

bench/run starts this once per peer, one after the other (never two at once). The JSON is
rewritten after every workload, so a peer that fails or times out half-way still reports
what it finished.
"""

import json
import os
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402
import workloads as w  # noqa: E402

MB = w.MB


def noop():
    """The trivial task: defined in __main__ so that it travels by value (cloudpickle)."""
    return None


peers.NOOP = w.NOOP = noop

MODES = {
    # checks that the harness works against every peer; its numbers mean nothing
    "smoke": dict(n=2, rt_count=20, tasks=[200], sizes=[1 * MB], scatter_sizes=[1 * MB],
                  startup_reps=1, million=0),
    "quick": dict(n=2, rt_count=500, tasks=[10_000], sizes=[1 * MB, 100 * MB],
                  scatter_sizes=[], startup_reps=1, million=0),
    "full": dict(n=4, rt_count=2000, tasks=[10_000, 100_000], sizes=[1 * MB, 100 * MB, 1000 * MB],
                 scatter_sizes=[100 * MB, 1000 * MB], startup_reps=3, million=1_000_000),
}
REPS = {1 * MB: 20, 100 * MB: 3, 1000 * MB: 2}


def size_name(nbytes):
    return f"{nbytes // 1000_000_000}GB" if nbytes >= 1000_000_000 else f"{nbytes // MB}MB"


def log(msg):
    print(msg, flush=True)


def main():
    peer_name, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = MODES[mode]
    # bench/run ends a peer that overruns with SIGTERM: still stop its cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))

    result = {"peer": peer_name, "mode": mode, "n": cfg["n"], "notes": [], "metrics": {},
              "samples": {}, "errors": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    metrics, errors = result["metrics"], result["errors"]

    def save():
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, out)

    def step(name, fn):
        log(f"  {name} ...")
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"  {name} FAILED: {errors[name]}")
            traceback.print_exc()
        else:
            log(f"  {name} done in {time.perf_counter() - t0:.1f} s")
        save()

    try:
        peer = peers.PEERS[peer_name]()
    except Exception as exc:
        errors["setup"] = f"{type(exc).__name__}: {exc}"
        save()
        raise
    result["notes"] = peer.notes
    n = cfg["n"]
    try:
        # (e) startup, (f) idle memory
        starts = []
        for rep in range(cfg["startup_reps"]):
            starts.append(peer.start(n))
            log(f"  started {n} engines in {starts[-1]:.3f} s")
            if rep + 1 < cfg["startup_reps"]:
                peer.stop()
                time.sleep(1)
        starts.sort()
        metrics["startup_s"] = starts[len(starts) // 2]
        result["samples"]["startup_s"] = starts
        time.sleep(1)  # let freshly started processes settle before reading memory
        metrics["controller_rss_idle"] = w.controller_rss(peer)
        metrics["controller_tree_pss_idle"] = w.controller_tree_pss(peer)
        cp = peer.controller_pids()
        result["controller_processes"] = (1 + len(w._descendants(cp[0]))) if cp else None
        metrics["engine_rss_idle"] = w.engine_rss(peer)
        save()

        # (a) apply round trip, (b) execute round trip
        def apply_rt():
            s = w.round_trips(peer.apply_rt, cfg["rt_count"])
            result["samples"]["apply_rt_us"] = s
            metrics["apply_rt_median_us"] = w.percentile(s, 50)
            metrics["apply_rt_p99_us"] = w.percentile(s, 99)
        step("apply round trip", apply_rt)

        if peer.has_execute:
            def execute_rt():
                s = w.round_trips(peer.execute_rt, cfg["rt_count"])
                result["samples"]["execute_rt_us"] = s
                metrics["execute_rt_median_us"] = w.percentile(s, 50)
                metrics["execute_rt_p99_us"] = w.percentile(s, 99)
            step("execute round trip", execute_rt)

        # (c) throughput
        for ntasks in cfg["tasks"]:
            for how in ("lb", "direct"):
                def tput(ntasks=ntasks, how=how):
                    metrics[f"tput_{how}_{ntasks}"] = w.throughput(peer, ntasks, how)
                step(f"throughput {how} {ntasks:,}", tput)

        # (d) push/pull, scatter/gather
        for size in cfg["sizes"]:
            def pp(size=size):
                arr = w.make_array(size)
                push, pull = w.push_pull(peer, arr, REPS[size])
                metrics[f"push_{size_name(size)}"] = push
                metrics[f"pull_{size_name(size)}"] = pull
            step(f"push/pull {size_name(size)}", pp)
        for size in cfg["scatter_sizes"]:
            def sg(size=size):
                arr = w.make_array(size)
                s, g = w.scatter_gather(peer, arr, REPS[size])
                metrics[f"scatter_{size_name(size)}"] = s
                metrics[f"gather_{size_name(size)}"] = g
            step(f"scatter/gather {size_name(size)}", sg)

        # One second after the last workload, as the idle figure is one second after start:
        # what the controller keeps, not buffers of the transfer that has just ended.
        time.sleep(1.0)
        metrics["controller_rss_after"] = w.controller_rss(peer)
        metrics["controller_tree_pss_after"] = w.controller_tree_pss(peer)
        save()

        # controller memory with many finished tasks (testudo only: the others keep every
        # result in their controller's memory and take many minutes for 10^6 tasks)
        if cfg["million"] and peer_name == "testudo":
            def million():
                before, after, purged, rate = w.many_tasks_memory(peer, cfg["million"], log=log)
                metrics["controller_rss_1M"] = after
                metrics["controller_rss_1M_purged"] = purged
                metrics["tput_lb_1M_batched"] = rate
            step(f"{cfg['million']:,} tasks", million)
    except BaseException as exc:
        errors["run"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        raise
    finally:
        log("  stopping")
        try:
            peer.stop()
        finally:
            peer.cleanup()
            result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            save()


if __name__ == "__main__":
    main()
