"""Where a sweep's time went, from its manifest alone: each run's wall time split into setup,
compile (training graph, no-grad graph), steps and inference; compile-cache hits; the sweep's
wall time, and how its runs compiled (side by side, or the GPU pool's precompile phase). show
prints it and report.md carries it."""
from __future__ import annotations

import math
from datetime import datetime

import pandas as pd


def commits(code_commits) -> str:
    """The manifest's code_commits: a list of commits, or {which runs: commit, why: ...}."""
    if isinstance(code_commits, dict):
        return "; ".join(f"{k}: {v}" for k, v in code_commits.items())
    return ", ".join(map(str, code_commits)) + "; see the manifest's note"


TIMING = [("wall_s", "run wall (s)"), ("compile_time_s", "train compile (s)"),
          ("gate_wait_s", "waited for the GPU (s)"),
          ("inference_compile_s", "inference compile (s)"), ("steps_s", "all steps, compile incl. (s)"),
          ("inference_s", "all inference, compile incl. (s)"), ("setup_s", "setup (s)")]


def timing_table(manifest: dict) -> pd.DataFrame:
    """Where each run's wall time went, from the manifest: compile (training graph, no-grad
    graph), the steps, the timed inference forwards, model and data setup; plus compile-cache
    hits/misses when the sweep's precompile phase warmed them."""
    rows = []
    for run in manifest.get("runs", []):
        if "wall_s" not in run:
            continue
        ph = {**(run.get("phases") or {}), **run}
        row = {"attention": run["attention"], "model": run["model"], "seq_len": run["seq_len"],
               "status": run["status"]}
        row.update({name: float(f"{float(ph[k]):.3g}") if ph.get(k) is not None else math.nan for k, name in TIMING})
        cache = run.get("compile_cache")
        if cache and any(cache.values()):
            row["compile cache hit/miss"] = f"{cache['aot_hit'] + cache['fx_hit']}/{cache['aot_miss'] + cache['fx_miss']}"
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_time(manifest: dict) -> str:
    """One line: the sweep's wall time, and how its runs compiled (side by side, or a precompile phase)."""
    def minutes(m):
        return (datetime.fromisoformat(m["finished"]) - datetime.fromisoformat(m["created"])).total_seconds() / 60
    line = ""
    if "merge" in manifest:  # joined shards: each shard's own wall time
        times = [t for t in manifest["merge"].get("shard_times", {}).values() if t.get("created") and t.get("finished")]
        if times:
            line = f"sweep wall time {sum(map(minutes, times)):.1f} min over {len(times)} shards"
    elif manifest.get("created") and manifest.get("finished") and not manifest.get("resumed"):
        line = f"sweep wall time {minutes(manifest):.1f} min"
    for ov in manifest.get("overlap", []):
        res = list(ov.get("results", {}).values())
        paused = sum(r.get("paused_s") or 0 for r in res)
        line += (f"{'; ' if line else ''}{ov['runs']} runs compiled side by side, {ov['workers']} at a time, "
                 f"each measured alone (the others paused, {paused:.0f} s in all) in {ov['wall_s']:.0f} s")
    for pc in manifest.get("precompile", []):
        line += (f"{'; ' if line else ''}precompile: {pc['runs']} runs compiled {pc['workers']} at a time "
                 f"in {pc['wall_s']:.0f} s")
    return line
