"""Why a run's numbers should not be taken at face value: a list of short reasons per run,
written into summary.csv's `caveats` column and report.md's "Read with care".

  launch-bound      GPU busy < 50% over the measured steps (median gpu_util_percent): the step
                    time is Python and kernel launches, not the attention
  noisy             the 95% interval of train_time_s wider than +-10% of its median
  fallback kernel   the mechanism ran other than its GPU kernel (on the CPU, the pre-Ampere
                    chunked path, a masked SDPA in place of flex)
  too few steps     fewer than 6 measured steps: the "interval" is min..max
  energy            steps shorter than the energy counter's 100 ms update (per-step energy is
                    coarse, the run total is exact), or no counter at all
  no recall learnt  recall_accuracy at or below 1 / n_pairs, the MQAR plateau of a model that
                    knows a row's values but not which key each belongs to
  other process     another process used the GPU during the run (NVML's process list)
  emulated          AB_EMULATE_CAPABILITY made an older GPU's code paths run (a T4's on an H200):
                    which kernels run is that GPU's, the speed is not
"""
from __future__ import annotations

import math
import numbers

LAUNCH_BOUND_UTIL = 50.0     # percent
NOISY = 0.10                 # half-width of the interval, as a fraction of the median
MIN_STEPS = 6                # below this the order-statistics interval is min..max
FALLBACK_WORDS = ("cpu", "pre-ampere", "fallback", "unavailable", "chunked pytorch", "sdpa-mask")


def _finite(x) -> bool:
    return isinstance(x, numbers.Real) and math.isfinite(x)


def no_recall_caveat(recall, pairs, queries=None) -> str | None:
    """A recall run that learnt no recall: at or below 1 / n_pairs, or above it by less than two
    binomial standard errors over its held-out queries (then a lucky draw, not recall)."""
    if not (_finite(recall) and _finite(pairs) and pairs > 0):
        return None
    floor = 1 / pairs
    margin = 2 * math.sqrt(floor * (1 - floor) / queries) if _finite(queries) and queries > 0 else 0.0
    if recall > floor + margin:
        return None
    where = "at or below" if recall <= floor else \
        f"within 2 standard errors (+{margin:.3f} over {int(queries):,} held-out queries) of"
    return (f"recall {recall:.3f} is {where} 1 / n_pairs = {floor:.3f}, what a model scores that knows a "
            "row's values but not which key each belongs to: no recall learnt")


def caveats(row: dict, run: dict, energy_flags: list[str] = ()) -> list[str]:
    """row: the run's summary row (medians, _lo/_hi, n_measured); run: its manifest entry."""
    out = []
    util = row.get("gpu_util_percent")
    if _finite(util) and util < LAUNCH_BOUND_UTIL:
        out.append(f"launch-bound: GPU busy {util:.0f}% (< {LAUNCH_BOUND_UTIL:.0f}%)")
    t, lo, hi = row.get("train_time_s"), row.get("train_time_s_lo"), row.get("train_time_s_hi")
    if all(_finite(x) for x in (t, lo, hi)) and t > 0 and max(hi - t, t - lo) > NOISY * t:
        out.append(f"noisy: train_time_s interval {lo:.3g}..{hi:.3g} s around {t:.3g} s (> +-{NOISY:.0%})")
    kernel = str(run.get("kernel") or "")
    if str(run.get("device", "")).startswith("cpu") or any(w in kernel.lower() for w in FALLBACK_WORDS):
        out.append(f"fallback kernel: {kernel or 'unknown'} on {run.get('device') or 'this device'}")
    n = row.get("n_measured")
    if isinstance(n, int) and 0 < n < MIN_STEPS:
        out.append(f"too few measured steps ({n} < {MIN_STEPS}): the interval is min..max")
    flags = [f for f in energy_flags if isinstance(f, str)]
    if flags and flags.count("short_window") * 2 > len(flags):
        out.append("energy: steps shorter than the counter's 100 ms update; per-step energy is coarse, "
                   "the run total exact")
    elif _finite(row.get("gpu_power_w")) and not _finite(row.get("energy_j")):
        out.append("energy: no energy counter; power is sampled, energy not measured")
    if run.get("emulated_capability"):
        out.append(f"emulated compute capability {run['emulated_capability']}: that GPU's code paths, "
                   "not its speed or memory")
    no_recall = no_recall_caveat(row.get("recall_accuracy"), row.get("n_pairs") or run.get("n_pairs"),
                                 run.get("eval_labelled"))
    if no_recall:
        out.append(no_recall)
    compiled = (run.get("phases") or {}).get("graphs_compiled_measuring") or 0
    if compiled > 0:
        out.append(f"compiled {compiled} graph{'s' if compiled > 1 else ''} during its measured steps: "
                   "a shape the warm-up did not cover; those steps include compile time")
    others = run.get("other_gpu_processes") or []
    if others:
        out.append("other process on the GPU: pid " + ", ".join(str(p["pid"]) for p in others))
    return out
