"""Turn the per-peer JSON files into report.md, report.json and PNG plots."""

import json
import os

PEER_ORDER = ["testudo", "ipyparallel", "dask"]
MB = 1_000_000

# key, label, unit, better ("lower"/"higher"), scale (raw value -> shown unit), target for testudo
METRICS = [
    ("apply_rt_median_us", "apply round trip, median", "us", "lower", 1, 200),
    ("apply_rt_p99_us", "apply round trip, p99", "us", "lower", 1, None),
    ("execute_rt_median_us", "execute round trip, median", "us", "lower", 1, 200),
    ("execute_rt_p99_us", "execute round trip, p99", "us", "lower", 1, None),
    ("tput_lb_10000", "10,000 tasks, load-balanced", "tasks/s", "higher", 1, 20_000),
    ("tput_direct_10000", "10,000 tasks, direct apply_async", "tasks/s", "higher", 1, None),
    ("tput_lb_100000", "100,000 tasks, load-balanced", "tasks/s", "higher", 1, 20_000),
    ("tput_direct_100000", "100,000 tasks, direct apply_async", "tasks/s", "higher", 1, None),
    ("push_1MB", "push 1 MB to one engine", "MB/s", "higher", 1, None),
    ("pull_1MB", "pull 1 MB from one engine", "MB/s", "higher", 1, None),
    ("push_100MB", "push 100 MB to one engine", "MB/s", "higher", 1, 1500),
    ("pull_100MB", "pull 100 MB from one engine", "MB/s", "higher", 1, 1500),
    ("push_1GB", "push 1 GB to one engine", "MB/s", "higher", 1, None),
    ("pull_1GB", "pull 1 GB from one engine", "MB/s", "higher", 1, None),
    ("scatter_100MB", "scatter 100 MB across all", "MB/s", "higher", 1, None),
    ("gather_100MB", "gather 100 MB from all", "MB/s", "higher", 1, None),
    ("scatter_1GB", "scatter 1 GB across all", "MB/s", "higher", 1, None),
    ("gather_1GB", "gather 1 GB from all", "MB/s", "higher", 1, None),
    ("startup_s", "cluster start to all engines ready", "s", "lower", 1, 0.5),
    ("controller_rss_idle", "controller RSS, idle", "MB", "lower", 1 / MB, 20),
    ("controller_tree_pss_idle", "controller incl. child processes (PSS sum), idle", "MB", "lower", 1 / MB, None),
    ("engine_rss_idle", "engine RSS, idle", "MB", "lower", 1 / MB, None),
    ("controller_rss_after", "controller RSS after the workloads above", "MB", "lower", 1 / MB, None),
    ("controller_tree_pss_after", "controller incl. child processes (PSS sum) after the workloads", "MB", "lower", 1 / MB, None),
    ("controller_rss_1M", "controller RSS, 1,000,000 finished tasks", "MB", "lower", 1 / MB, 300),
    ("controller_rss_1M_purged", "controller RSS, after purge_results('all')", "MB", "lower", 1 / MB, None),
    ("tput_lb_1M_batched", "1,000,000 tasks, load-balanced in batches of 10,000", "tasks/s", "higher", 1, None),
]


def _fmt(v):
    if v is None:
        return "n/a"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _ratio(t, p, better):
    """> 1 means testudo is better."""
    if t is None or p is None or t <= 0 or p <= 0:
        return None
    return p / t if better == "lower" else t / p


def build_rows(results):
    rows = []
    for key, label, unit, better, scale, target in METRICS:
        vals = {}
        for peer in PEER_ORDER:
            raw = results.get(peer, {}).get("metrics", {}).get(key)
            vals[peer] = raw * scale if raw is not None else None
        if all(v is None for v in vals.values()):
            continue
        t = vals.get("testudo")
        row = {"key": key, "workload": label, "unit": unit, "better": better,
               "values": vals,
               "ratio_ipyparallel": _ratio(t, vals.get("ipyparallel"), better),
               "ratio_dask": _ratio(t, vals.get("dask"), better),
               "target": target}
        if target is not None and t is not None:
            row["target_met"] = t <= target if better == "lower" else t >= target
        rows.append(row)
    return rows


def markdown(rows, results):
    head = ("| workload | unit | testudo | ipyparallel | dask | testudo/ipyparallel | "
            "testudo/dask | testudo target |\n|---|---|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in rows:
        v = r["values"]
        tgt = ""
        if r["target"] is not None:
            sign = "<=" if r["better"] == "lower" else ">="
            met = r.get("target_met")
            tgt = f"{sign} {r['target']:,} {'(met)' if met else '(NOT met)' if met is not None else ''}"
        ratio = lambda x: f"{x:.2f}x" if x is not None else "n/a"
        lines.append(f"| {r['workload']} | {r['unit']} | {_fmt(v.get('testudo'))} | "
                     f"{_fmt(v.get('ipyparallel'))} | {_fmt(v.get('dask'))} | "
                     f"{ratio(r['ratio_ipyparallel'])} | {ratio(r['ratio_dask'])} | {tgt} |")
    out = head + "\n".join(lines) + "\n"
    out += ("\nRatios: > 1 means testudo is better (peer/testudo for times and memory, "
            "testudo/peer for rates). n/a: not run, not offered, or not measurable.\n")
    notes = []
    for peer in PEER_ORDER:
        res = results.get(peer)
        if not res:
            continue
        for n in dict.fromkeys(res.get("notes", [])):  # a peer started several times says each once
            notes.append(f"- {peer}: {n}")
        if res.get("controller_processes"):
            notes.append(f"- {peer}: the controller is {res['controller_processes']} process(es)")
        for k, e in res.get("errors", {}).items():
            notes.append(f"- {peer}: **{k} failed**: {e}")
    if notes:
        out += "\n" + "\n".join(notes) + "\n"
    return out


def plots(results, outdir):
    """latency.png (apply/execute round-trip distributions), throughput.png. Returns the
    file names written (none if matplotlib is missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    written = []
    peers = [p for p in PEER_ORDER if p in results]

    kinds = [k for k in ("apply_rt_us", "execute_rt_us")
             if any(results[p].get("samples", {}).get(k) for p in peers)]
    if kinds:
        fig, axes = plt.subplots(len(kinds), 1, figsize=(8, 3.2 * len(kinds)), squeeze=False)
        for ax, kind in zip(axes[:, 0], kinds):
            data = {p: results[p]["samples"][kind] for p in peers if results[p].get("samples", {}).get(kind)}
            lo = min(min(s) for s in data.values())
            hi = max(sorted(s)[int(0.995 * (len(s) - 1))] for s in data.values())
            bins = [lo * (hi / lo) ** (i / 60) for i in range(61)] if lo > 0 else 60
            for p, s in data.items():
                ax.hist(s, bins=bins, histtype="step", linewidth=1.5, label=f"{p} (n={len(s)})")
            ax.set_xscale("log")
            ax.set_xlabel("round trip (us, log scale; top 0.5% not shown)")
            ax.set_ylabel("count")
            ax.set_title("trivial " + kind.split("_")[0] + " on one engine")
            ax.axvline(200, color="grey", linestyle=":", linewidth=1, label="target 200 us")
            ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "latency.png"), dpi=110)
        plt.close(fig)
        written.append("latency.png")

    keys = sorted({k for p in peers for k in results[p].get("metrics", {})
                   if k.startswith("tput_") and not k.endswith("batched")},
                  key=lambda k: (int(k.split("_")[-1]), k))
    if keys:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(1, len(peers))
        for i, p in enumerate(peers):
            vals = [results[p].get("metrics", {}).get(k) or 0 for k in keys]
            ax.bar([x + i * width for x in range(len(keys))], vals, width, label=p)
        ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(keys))])
        ax.set_xticklabels([f"{int(k.split('_')[-1]):,}\n{'load-balanced' if '_lb_' in k else 'direct'}"
                            for k in keys])
        ax.axhline(20_000, color="grey", linestyle=":", linewidth=1, label="target 20,000/s")
        ax.set_ylabel("tasks/s")
        ax.set_title("throughput of trivial tasks vs task count")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "throughput.png"), dpi=110)
        plt.close(fig)
        written.append("throughput.png")
    return written


def scale_markdown(scale):
    """The scale section (bench/scale/testudo_scale, one JSON object per engine count)."""
    out = ("\n## Scale: lightweight engines on one controller\n\n"
           f"Command: `{scale.get('command', '?')}`. Engines are TLS sessions of one process that "
           "answer every task at once (no Python); figures are the controller's and the transport's.\n\n")
    runs = scale.get("runs", [])
    head = ("| engines | register all (s) | controller RSS idle (MB) | after workloads (MB) | "
            "load-balanced round trip median / p99 (us) | direct round trip median / p99 (us) | "
            "load-balanced tasks/s | engines used | engines left at end | "
            "controller CPU per registration (ms) | controller CPU per task (us) |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    notes = []
    for r in runs:
        if "error" in r:
            notes.append(f"- {r.get('engines')} engines: **failed**: {r['error']}")
            continue
        lb, d = r.get("lb_rt_us") or {}, r.get("direct_rt_us") or {}
        lines.append(f"| {r['engines']:,} | {r['register_s']:.3f} | {_fmt(r['controller_rss_idle_mb'])} | "
                     f"{_fmt(r['controller_rss_after_mb'])} | {_fmt(lb.get('median'))} / {_fmt(lb.get('p99'))} | "
                     f"{_fmt(d.get('median'))} / {_fmt(d.get('p99'))} | {_fmt(r['lb_tput_tasks_per_s'])} "
                     f"({r['lb_tasks']:,} tasks) | {r['lb_tput_engines_used']:,} | {r['engines_at_end']:,} | "
                     f"{_fmt(r.get('controller_cpu_ms_per_registration'))} | "
                     f"{_fmt(r.get('controller_cpu_us_per_lb_task'))} |")
        m = r.get("million")
        if m:
            notes.append(f"- {m['tasks']:,} finished tasks ({r['engines']} engines, batches of {m['batch']:,}): "
                         f"controller RSS {_fmt(m['rss_after_mb'])} MB (target < 300 MB; "
                         f"{_fmt(m['rss_before_mb'])} MB before, {_fmt(m.get('rss_after_purge_mb'))} MB after "
                         f"purging), {_fmt(m['tasks_per_s'])} tasks/s")
    if scale.get("error"):
        notes.append(f"- **scale failed**: {scale['error']}")
    if lines:
        out += head + "\n".join(lines) + "\n"
    if notes:
        out += "\n" + "\n".join(notes) + "\n"
    return out


def write(results, meta, outdir, scale=None):
    rows = build_rows(results)
    md = markdown(rows, results) if results else ""
    if scale is not None:
        md += scale_markdown(scale)
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write(f"# testudo benchmark ({meta['mode']})\n\n")
        f.write(f"Command: `{meta['command']}`  \nMachine: {meta['machine']}  \n"
                f"Engines/workers per peer: {meta['n']}  \nStarted: {meta['started']}\n\n")
        f.write(md)
    report = {"meta": meta, "rows": rows,
              "peers": {p: {k: v for k, v in r.items() if k != "samples"} for p, r in results.items()}}
    if scale is not None:
        report["scale"] = scale
    with open(os.path.join(outdir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    pngs = plots(results, outdir)
    return md, pngs
