"""Physical sense of a results folder, before its numbers are committed or quoted.

For every run that finished: board power under the board's limit (the run's median step; the
largest single step may pass it by NVML's stated accuracy, 5%), MFU under 1, GPU memory under the
card's size, and the NVML energy counter against the integral of the sampled power over the same
steps (sum of energy_j vs sum of gpu_power_w x window_s). NVML's power reading is a ~1 s trailing
average, so it lags the counter while power ramps up after warm-up: the 10% tolerance applies to
runs whose measured steps last at least MIN_COMPARE_S; shorter runs are listed, not judged
(benchmarks/metrics_overhead.py compares the two over long windows). Exit 1 if any check fails.

    python benchmarks/sanity.py results/reference/h200/20261129-112146_h200_full_test [...]
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import store as results  # noqa: E402

ENERGY_TOLERANCE = 0.10
NVML_ACCURACY = 0.05
MIN_COMPARE_S = 5.0


def check(folder: Path, gpu_memory_mb: float | None = None) -> list[tuple[str, bool, str]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    env = manifest.get("environment", {})
    b = results.read_csv(folder / "batches.csv")
    b = b[b["phase"] == "measure"] if len(b) else b
    out = []
    if not len(b):
        return [("rows", False, "no measured rows")]
    window = "window_s" if "window_s" in b else "train_time_s"  # older folders have no window_s
    limit = env.get("power_limit_w")
    per_run = b.groupby("run_id")
    run_power = per_run["gpu_power_w"].median().max()
    p = b["gpu_power_w"].max()
    energy, seconds = per_run["energy_j"].sum(), per_run[window].sum()
    integral = (b["gpu_power_w"] * b[window]).groupby(b["run_id"]).sum()
    counter_power = (energy / seconds).max()
    out.append(("power under the board limit", bool(limit) and run_power < limit
                and max(p, counter_power) < limit * (1 + NVML_ACCURACY),
                f"highest run median {run_power:.0f} W, highest step {p:.0f} W, highest run from the energy "
                f"counter {counter_power:.0f} W, limit {limit} W"))
    m = b["mfu"].max()
    out.append(("MFU under 1", not m == m or m < 1, f"max per-step MFU {m:.3f}"))
    mem = max(b["gpu_memory_nvml_mb"].max(), b["gpu_memory_mb"].max())
    if gpu_memory_mb:
        out.append(("memory under the card's size", mem < gpu_memory_mb,
                    f"max {mem:,.0f} MB of {gpu_memory_mb:,.0f} MB"))
    long, short = [], []
    for rid, counter in energy.items():
        if counter > 0 and math.isfinite(integral[rid]):
            (long if seconds[rid] >= MIN_COMPARE_S else short).append((integral[rid] / counter - 1, rid))
    if long:
        diff, rid = max(long, key=lambda x: abs(x[0]))
        out.append(("energy counter vs power integral", abs(diff) < ENERGY_TOLERANCE,
                    f"largest difference {100 * diff:+.1f}% ({rid}) over {len(long)} runs of >= {MIN_COMPARE_S:.0f} s, "
                    f"tolerance {100 * ENERGY_TOLERANCE:.0f}%"))
    if short:
        diffs = sorted(100 * d for d, _ in short)
        out.append(("energy counter vs power integral, short runs (not judged)", True,
                    f"{len(short)} runs under {MIN_COMPARE_S:.0f} s: {diffs[0]:+.1f}% to {diffs[-1]:+.1f}% "
                    "(NVML power trails by ~1 s; the counter is the energy)"))
    return out


def main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--gpu-memory-mb", type=float, default=None, help="the card's memory (H200: 150,754 MB)")
    args = ap.parse_args(argv)
    failed = 0
    for f in args.folders:
        print(Path(f).name)
        for name, ok, detail in check(Path(f), args.gpu_memory_mb):
            failed += not ok
            print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
