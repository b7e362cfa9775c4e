"""The tables of a result: the summary (medians with units), the runs without a result, the
metrics not measured here and why, every metric with its 95% interval; and the number format
all of them share (4 significant digits, "-" for a missing number)."""
from __future__ import annotations

import math

import pandas as pd

from harness.report import plots
from harness.report.results import Result
from metrics.caveats import caveats
from metrics.catalog import METRICS, label

TABLE = ["train_time_s", "tokens_per_s", "inference_time_s", "gpu_memory_mb", "memory_estimate_gb", "memory_gb",
         "gpu_power_w", "gpu_util_percent", "joules_per_token", "loss", "eval_loss", "recall_accuracy",
         "attention_density"]     # the readable summary's metrics
ID = ["model", "attention", "kernel", "seq_len", "batch_size"]


def sig(x, digits: int = 4):
    """Round to significant digits: a table reader needs 4, not 17."""
    return float(f"{x:.{digits}g}") if isinstance(x, float) and math.isfinite(x) else x


def in_order(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by model (plan order), seq_len, attention (registry order): the order of every table."""
    rank = {a: i for i, a in enumerate(plots.ordered(df.attention))}
    models = {m: i for i, m in enumerate(dict.fromkeys(df.model))}
    keys = {"model": models, "attention": rank}
    return df.sort_values(["model", "seq_len", "attention"], kind="stable",
                          key=lambda c: c.map(keys[c.name]) if c.name in keys else c)


def summary_table(result: Result, columns=TABLE) -> pd.DataFrame:
    """One row per run (plus runs the manifest lists that never finished): ids, status, the median of
    each key metric with its unit in the header. Metrics no run measured are left out (see not_measured)."""
    s = result.summary.copy()
    known = set(s.run_id)
    extra = [r for r in result.manifest.get("runs", []) if r.get("run_id") not in known]
    if extra:
        s = pd.concat([s, pd.DataFrame(extra)], ignore_index=True)
    s = in_order(s)
    ids = [c for c in ID if c in s] + [c for c in ("n_pairs", "seed", "repeat") if c in s and s[c].nunique() > 1]
    out = s[ids].copy()
    out["status"] = s.status.to_numpy()         # why a run failed: failures(), report.md
    for c in columns:
        if plots.measured(s, c):
            out[label(c)] = s[c].map(sig)
    return out.reset_index(drop=True)


def failures(result: Result) -> list[str]:
    """One line per finished run without a result (oom, unavailable, ...): what, status, why."""
    bad = result.summary[~result.summary.status.isin(["ok", "pending", "running"])]
    rep = "repeat" in bad and result.summary.repeat.nunique() > 1
    return [f"{x.model} {x.attention} seq_len {x.seq_len}{f' repeat {x.repeat}' if rep else ''}: {x.status}: "
            f"{x.reason}".rstrip(": ") for x in bad.itertuples()]


def read_with_care(result: Result) -> list[str]:
    """One line per reason not to take a run's numbers at face value (metrics/caveats.py), naming the
    configurations it applies to: "all N runs" when every ok run has it, "(3 runs)" where the seeds
    or repeats of one configuration share it. Computed here for a folder written before summary.csv
    had the column."""
    runs = {r["run_id"]: r for r in result.manifest.get("runs", [])}
    ok = result.summary[result.summary.status == "ok"].to_dict("records")
    by_reason: dict[str, dict[str, int]] = {}
    for x in ok:
        why = x.get("caveats")
        if not isinstance(why, str):
            flags = result.batches.loc[result.batches.run_id == x["run_id"], "energy_flag"].tolist() \
                if "energy_flag" in result.batches else []
            why = "; ".join(caveats(x, runs.get(x["run_id"], {}), flags))
        if why:
            where = by_reason.setdefault(why, {})
            name = f"{x['model']} {x['attention']} seq_len {x['seq_len']}"
            where[name] = where.get(name, 0) + 1
    return [_where(where, len(ok)) + f": {why}" for why, where in by_reason.items()]


def _where(where: dict[str, int], n_ok: int) -> str:
    """The configurations a caveat applies to, with their run counts where more than one."""
    if n_ok > 1 and sum(where.values()) == n_ok and len(where) > 1:
        return f"all {n_ok} runs"
    return ", ".join(name + (f" ({n} runs)" if n > 1 else "") for name, n in where.items())


def not_measured(result: Result) -> dict[str, str]:
    """Catalogued metrics with no value in any successful run, and why (from the manifest)."""
    reasons = dict(result.manifest.get("metrics", {}).get("nan_reasons", {}))
    # Derived columns inherit the reason of what they are derived from.
    reasons.setdefault("joules_per_token", reasons.get("energy_j", ""))
    reasons.setdefault("gpu_power_counter_w", reasons.get("energy_j", ""))
    reasons.setdefault("mfu", "no peak FLOP/s known for this device (metrics/peak.py)")
    return {m.column: reasons.get(m.column) or "no value in any run" for m in METRICS
            if not plots.measured(result.summary, m.column)}


def fmt(v) -> str:
    """4 significant digits, no exponent between 0.001 and 10^6: 13,210 reads faster than 1.321e+04."""
    if not isinstance(v, float):
        return str(v)
    if not math.isfinite(v):
        return "-"
    if v == 0 or not 1e-3 <= abs(v) < 1e6:
        return f"{v:.4g}"
    return f"{v:,.{max(0, 3 - math.floor(math.log10(abs(v))))}f}"


def md_table(df: pd.DataFrame) -> str:
    cells = [[fmt(v).replace("|", "/") for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def interval_table(s: pd.DataFrame) -> pd.DataFrame:
    """Rows = measured metrics, columns = runs ("sdpa", or "sdpa p8 s1 r0" where pair counts, seeds or
    repeats differ): "median [lo, hi]"."""
    ok = s[s.status == "ok"]
    names = ok.attention.astype(str)
    for col, tag in (("n_pairs", " p"), ("seed", " s"), ("repeat", " r")):
        if col in ok and ok[col].nunique() > 1:
            names = names + tag + ok[col].map(lambda v: str(int(v)) if pd.notna(v) else "-")
    def cell(m, lo, hi):        # a constant (model size, FLOPs) has no interval to show
        return fmt(m) if lo == hi == m else f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]"
    rows = {label(c): [cell(*v) for v in zip(ok[c], ok.get(c + "_lo", ok[c]), ok.get(c + "_hi", ok[c]))]
            for c in (m.column for m in METRICS) if plots.measured(s, c)}
    return pd.DataFrame(rows, index=list(names)).T.reset_index(names="metric (median [95% interval])")


def flop_check(result: Result) -> pd.DataFrame:
    """Per configuration (seeds and repeats count the same model once): the analytic forward FLOPs
    beside fvcore's count (x2: it counts multiply-adds). fvcore has no handler for SDPA, flex or
    custom kernels, so it misses their attention core; on baseline the two agree."""
    runs = [r for r in result.manifest.get("runs", []) if r.get("flops_forward") is not None]
    rows = {}
    for r in runs:
        fv = r.get("flops_fvcore_forward")
        fv = math.nan if fv is None else float(fv)
        row = {"model": r["model"], "attention": r["attention"], "seq_len": r["seq_len"],
               "analytic forward (FLOP)": float(r["flops_forward"]), "fvcore forward (FLOP)": fv,
               "fvcore / analytic": fv / float(r["flops_forward"]) if r["flops_forward"] else math.nan,
               "note": r.get("flops_fvcore_reason") or ""}
        rows.setdefault(tuple(str(v) for v in row.values()), row)
    return pd.DataFrame(list(rows.values()))
