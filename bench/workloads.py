"""Workloads, written once against the interface in peers.py.

Every timing is wall-clock time in the client process (time.perf_counter), from the first
request to the last answer, including (de)serialization on both sides.
"""

import gc
import os
import statistics
import time

MB = 1_000_000  # sizes and rates are decimal: 1 MB = 10^6 bytes, 1 GB/s = 1000 MB/s


def _noop():
    return None


NOOP = _noop  # replaced by peer_run.py (see peers.NOOP)


# ----- process memory ----------------------------------------------------------------

def rss_bytes(pid):
    """VmRSS of one process, from /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pss_bytes(pid):
    """Proportional set size (shared pages split among their sharers), /proc/<pid>/smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _descendants(pid):
    try:
        import psutil
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


def controller_rss(peer):
    """VmRSS of the controller process itself (the figure the targets are set in)."""
    pids = peer.controller_pids()
    if not pids:
        return None
    vals = [rss_bytes(p) for p in pids]
    vals = [v for v in vals if v is not None]
    return sum(vals) if vals else None


def controller_tree_pss(peer):
    """PSS summed over the controller and all its descendants: ipyparallel's controller forks
    its schedulers into child processes, which share most pages with it, so summing their
    RSS would count those pages several times."""
    pids = peer.controller_pids()
    if not pids:
        return None
    vals = [pss_bytes(p) for top in pids for p in [top] + _descendants(top)]
    vals = [v for v in vals if v is not None]
    return sum(vals) if vals else None


def engine_rss(peer):
    pids = peer.engine_pids()
    if not pids:
        return None
    return rss_bytes(pids[0])


# ----- latency ------------------------------------------------------------------------

def percentile(samples, q):
    s = sorted(samples)
    if not s:
        return None
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))
    return s[k]


def round_trips(op, count, warmup=20):
    """`count` timed calls of op(); returns the samples in microseconds."""
    for _ in range(warmup):
        op()
    gc.collect()
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        op()
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


# ----- throughput ---------------------------------------------------------------------

def throughput(peer, ntasks, how):
    """Submit ntasks trivial calls (all at once, asynchronously), then wait for every
    result. Returns tasks per second over the whole batch."""
    gc.collect()
    t0 = time.perf_counter()
    if how == "lb":
        futs = [peer.submit_lb(NOOP) for _ in range(ntasks)]
    else:
        futs = [peer.submit_direct(NOOP, i) for i in range(ntasks)]
    peer.wait_all(futs)
    dt = time.perf_counter() - t0
    del futs
    gc.collect()
    return ntasks / dt


# ----- data movement ------------------------------------------------------------------

def make_array(nbytes):
    import numpy as np
    # Random doubles: incompressible, so no peer gains from wire compression.
    return np.random.default_rng(0).random(nbytes // 8)


def push_pull(peer, arr, reps):
    """Median MB/s of push and of pull of `arr` to/from engine 0."""
    push_rates, pull_rates = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        peer.push(arr)
        t1 = time.perf_counter()
        back = peer.pull()
        t2 = time.perf_counter()
        if back.shape != arr.shape or back[0] != arr[0] or back[-1] != arr[-1]:
            raise AssertionError("pulled array differs from the pushed one")
        del back
        push_rates.append(arr.nbytes / MB / (t1 - t0))
        pull_rates.append(arr.nbytes / MB / (t2 - t1))
        peer.clear()
        gc.collect()
    return statistics.median(push_rates), statistics.median(pull_rates)


def scatter_gather(peer, arr, reps):
    """Median MB/s of scatter of `arr` across all engines and of gathering it back."""
    s_rates, g_rates = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        peer.scatter(arr)
        t1 = time.perf_counter()
        back = peer.gather()
        t2 = time.perf_counter()
        # (testudo's gather returns a list, ipyparallel's and this harness's Dask gather an array)
        if len(back) != len(arr) or back[0] != arr[0] or back[-1] != arr[-1]:
            raise AssertionError("gathered array differs from the scattered one")
        del back
        s_rates.append(arr.nbytes / MB / (t1 - t0))
        g_rates.append(arr.nbytes / MB / (t2 - t1))
        peer.clear()
        gc.collect()
    return statistics.median(s_rates), statistics.median(g_rates)


# ----- controller memory under many finished tasks -------------------------------------

def many_tasks_memory(peer, total, batch=10_000, log=print):
    """Push `total` trivial tasks through the load-balanced view in batches (nothing kept by
    the client) and read the controller's RSS before, after, and after purging results."""
    before = controller_rss(peer)
    done = 0
    t0 = time.perf_counter()
    while done < total:
        k = min(batch, total - done)
        peer.wait_all([peer.submit_lb(NOOP) for _ in range(k)])
        done += k
        if done % (10 * batch) == 0:
            log(f"    {done:,} tasks, controller RSS {controller_rss(peer) / MB:.1f} MB, "
                f"{done / (time.perf_counter() - t0):,.0f} tasks/s")
    rate = total / (time.perf_counter() - t0)
    after = controller_rss(peer)
    purged = None
    if hasattr(peer, "purge"):
        peer.purge()
        time.sleep(0.5)
        purged = controller_rss(peer)
    return before, after, purged, rate
