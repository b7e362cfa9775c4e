"""The payoff of each attention against a reference (sdpa, baseline): from which seq_len it is faster end
to end, where it runs out of memory, what it gives up in eval loss at equal tokens, time and energy.
Speed compares intervals, never bare medians: "faster" = the lower end of its tokens/s interval (95%, over
measured batches) above the upper end of the reference's. Quality compares seeds: the mean and a Student-t
95% interval over seeds, differences paired by seed. Pure pandas/numpy; figures in payoff_plots.py.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from harness.report import plots
from harness.report.tables import in_order
from metrics.caveats import no_recall_caveat

KEY = ["model", "seq_len", "attention"]
# Student t, 97.5% quantile (two-sided 95%) for 1..30 degrees of freedom (scipy may be absent).
T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
        2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
        2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
        2.048407, 2.045230, 2.042272)
RATIO_COLUMNS = ["model", "attention", "seq_len", "ratio", "ratio_lo", "ratio_hi", "state", "status",
                 "against_status"]
CROSS_COLUMNS = ["model", "attention", "against", "crossover_T", "crossover_note", "ratio_T", "speed_ratio",
                 "speed_ratio_lo", "speed_ratio_hi"]
FRONTIER_COLUMNS = ["model", "attention", "batch_size", "largest_ok_T", "smallest_oom_T", "gpu_memory_mb",
                    "memory_estimate_gb", "note"]
AT_EQUAL_COLUMNS = ["model", "seq_len", "attention", "by", "unit", "budget", "eval_loss", "lo", "hi", "n_seeds"]
UNITS = {"tokens_seen": "tokens", "train_s_cum": "s", "energy_j_cum": "J"}

# n = the values used; n == 1: lo == hi == mean (no interval); n == 0: all NaN.
Interval = NamedTuple("Interval", [("mean", float), ("lo", float), ("hi", float), ("n", int)])
NONE = Interval(math.nan, math.nan, math.nan, 0)


def t975(df: int) -> float:
    """97.5% quantile of Student's t: the table to df 30, then the Cornish-Fisher expansion (error < 1e-5)."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959963985
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def seed_interval(values) -> Interval:
    """Mean over seeds and its 95% Student-t interval; NaN values are dropped; .n says how many counted."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return NONE
    m = float(v.mean())
    if len(v) == 1:
        return Interval(m, m, m, 1)
    half = t975(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return Interval(m, m - half, m + half, len(v))


def in_table_order(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order of every table (tables.in_order) for a frame without a seq_len column."""
    return in_order(df.assign(seq_len=0)).drop(columns="seq_len").reset_index(drop=True)


def with_seed(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with a seed column: a folder from before seeds ran one seed per configuration."""
    return df.assign(seed=df["seed"].fillna(0) if "seed" in df else 0)


def per_seed(summary: pd.DataFrame, column: str) -> pd.DataFrame:
    """`column` of the ok runs, one value per (model, seq_len, attention, seed): the median of its repeats."""
    s = with_seed(summary)
    if column not in s:
        return pd.DataFrame(columns=KEY + ["seed", "value"])
    s = s[(s.status == "ok") & s[column].notna()]
    return s.groupby(KEY + ["seed"], sort=False)[column].median().rename("value").reset_index()


def _ratio(r, a) -> dict:
    ok, a_ok = r.status == "ok" and np.isfinite(r.value), a is not None and a.status == "ok" and np.isfinite(a.value)
    out = dict(ratio=math.nan, ratio_lo=math.nan, ratio_hi=math.nan, status=r.status,
               against_status="missing" if a is None else a.status)
    if not (ok and a_ok):
        state = "no_reference" if a is None else "failed" if a_ok else "against_failed" if ok else "both_failed"
        return out | {"state": state}
    state = "faster" if r.lo > a.hi else "slower" if r.hi < a.lo else "overlap"
    return out | dict(ratio=r.value / a.value, ratio_lo=r.lo / a.hi, ratio_hi=r.hi / a.lo, state=state)


def speed_ratios(summary: pd.DataFrame, against: str = "sdpa") -> pd.DataFrame:
    """Per (model, attention != against, seq_len): tokens/s over against's (ratio of the medians of repeats'
    medians; lo = its lo / against's hi over the widest intervals, hi likewise) and the state: faster, slower,
    overlap, failed (it did not run, against did), against_failed, both_failed or no_reference."""
    t = plots.config_table(summary, "tokens_per_s")
    t["lo"], t["hi"] = t.lo.fillna(t.value), t.hi.fillna(t.value)    # no interval recorded: the median
    ref = t[t.attention == against].set_index(["model", "seq_len"])
    rows = [dict(model=r.model, attention=r.attention, seq_len=r.seq_len,
                 **_ratio(r, ref.loc[(r.model, r.seq_len)] if (r.model, r.seq_len) in ref.index else None))
            for r in t[t.attention != against].itertuples()]
    return pd.DataFrame(rows, columns=RATIO_COLUMNS).sort_values("seq_len", kind="stable").reset_index(drop=True)


def _crossing(g: pd.DataFrame, attention: str, against: str) -> dict:
    start = None         # the smallest T from which it is faster at every longer T (against failing counts)
    for T, state in zip(g.seq_len[::-1], g.state[::-1]):
        if state == "faster":
            start = int(T)
        elif state not in ("against_failed", "both_failed", "no_reference"):
            break
    notes = [f"{attention} failed at T={T} ({s})" for T, st, s in zip(g.seq_len, g.state, g.status) if st == "failed"]
    notes += [f"{against} failed at T={T} ({s})" for T, st, s in zip(g.seq_len, g.state, g.against_status)
              if st == "against_failed"]
    common = g[g.state.isin(["faster", "slower", "overlap"])]
    out = dict(crossover_T=math.nan if start is None else start, ratio_T=math.nan, speed_ratio=math.nan,
               speed_ratio_lo=math.nan, speed_ratio_hi=math.nan)
    if not len(common):
        return out | {"crossover_note": "; ".join([f"no T where both it and {against} ran"] + notes)}
    last = common.iloc[-1]
    faster = common.seq_len[common.state == "faster"].tolist()
    if start is not None:
        verdict = "faster at every T measured" if start == common.seq_len.iloc[0] else f"faster from T={start}"
    elif last.state == "faster":
        verdict = f"faster at T={last.seq_len}, but it fails at a longer T"
    elif last.state == "overlap":
        verdict = f"within noise at T={last.seq_len}: " + ("medians cross, intervals overlap" if last.ratio > 1
                                                          else "slower median, intervals overlap")
    else:
        verdict = (f"faster only at T={', '.join(map(str, faster))}, slower at T={last.seq_len}" if faster
                   else f"never faster up to T={last.seq_len}")
    return out | dict(ratio_T=last.seq_len, speed_ratio=last.ratio, speed_ratio_lo=last.ratio_lo,
                      speed_ratio_hi=last.ratio_hi, crossover_note="; ".join([verdict] + notes))


def crossover(summary: pd.DataFrame, against: str = "sdpa") -> pd.DataFrame:
    """Per (model, attention != against): crossover_T, the smallest seq_len from which it is faster than
    `against` (intervals apart) at that T and every longer measured T (NaN if none), crossover_note in
    words, and the speed ratio at the longest T both ran (ratio_T) with its range."""
    r = speed_ratios(summary, against)
    rows = [dict(model=m, attention=a, against=against) | _crossing(g, a, against)
            for (m, a), g in r.groupby(["model", "attention"], sort=False) if (g.state != "no_reference").any()]
    return in_table_order(pd.DataFrame(rows, columns=CROSS_COLUMNS))


def _frontier_note(g: pd.DataFrame, top, low) -> str:
    if not np.isfinite(top):
        return (f"out of memory at every T tried (from T={low})" if np.isfinite(low)
                else f"no successful run ({', '.join(sorted(set(g.status)))})")
    above = [f"{s} at T={T}" for T, s in zip(g.seq_len, g.status) if T > top and s not in ("ok", "oom")]
    if not np.isfinite(low):
        head = f"no oom up to T={top}, the frontier is beyond the sweep"
    elif low > top:
        head = f"runs at T={top}, out of memory from T={low}: the limit lies between"
    else:
        head = f"out of memory at T={low} yet ok at T={top}: no sharp frontier (another process, fragmentation?)"
    return "; ".join([head] + above)


def held_fixed(summary: pd.DataFrame) -> pd.Series:
    """What a frontier holds fixed along T, per row: the batch ("8"), or, where a mechanism's batch
    changes with T while its tokens a step do not (tokens_per_batch), those tokens ("16384 tokens")."""
    tokens = summary.batch_size * summary.seq_len
    keys = [summary.model, summary.attention]
    by_tokens = (tokens.groupby(keys).transform("nunique") == 1) & (
        summary.batch_size.groupby(keys).transform("nunique") > 1)
    return pd.Series(np.where(by_tokens, tokens.astype(int).astype(str) + " tokens",
                              summary.batch_size.astype(int).astype(str)), index=summary.index)


def memory_frontier(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (model, attention, what is held fixed: the batch or the tokens a step): the largest seq_len
    that ran, the smallest that ran out of memory, the peak GPU memory (and the planner's estimate)
    at the largest ok T, and a note."""
    rows, none = [], pd.Series(dtype=float)
    summary = summary.assign(fixed=held_fixed(summary))
    for (model, att, fixed), g in summary.groupby(["model", "attention", "fixed"], sort=False):
        ok, oom = g[g.status == "ok"], g[g.status == "oom"]
        top = int(ok.seq_len.max()) if len(ok) else math.nan
        low = int(oom.seq_len.min()) if len(oom) else math.nan
        at_top = ok[ok.seq_len == top]
        rows.append(dict(model=model, attention=att, batch_size=fixed, largest_ok_T=top, smallest_oom_T=low,
                         gpu_memory_mb=float(at_top.get("gpu_memory_mb", none).max()),
                         memory_estimate_gb=float(at_top.get("memory_estimate_gb", none).max()),
                         note=_frontier_note(g, top, low)))
    return in_table_order(pd.DataFrame(rows, columns=FRONTIER_COLUMNS))


def quality_cost(summary: pd.DataFrame, against: str = "sdpa") -> pd.DataFrame:
    """Per (model, seq_len, attention): eval_loss (nats/token) mean and 95% interval over seeds, n_seeds,
    delta = its loss minus against's paired by seed (mean, interval, n_pairs), recall_accuracy over
    seeds where the summary has the column, and a note (why a value is NaN, one seed, the reference)."""
    loss, recall = ({k: g.set_index("seed").value for k, g in per_seed(summary, c).groupby(KEY, sort=False)}
                    for c in ("eval_loss", "recall_accuracy"))         # per config: the values by seed
    rows, empty = [], pd.Series(dtype=float)
    for (model, T, att), g in summary.groupby(KEY, sort=False):
        mine = loss.get((model, T, att), empty)
        e = seed_interval(mine)
        d = seed_interval((mine - loss.get((model, T, against), empty)).dropna()) if att != against else NONE
        row = dict(model=model, seq_len=T, attention=att, n_seeds=e.n, eval_loss=e.mean, eval_loss_lo=e.lo,
                   eval_loss_hi=e.hi, against=against, delta=d.mean, delta_lo=d.lo, delta_hi=d.hi, n_pairs=d.n)
        if "recall_accuracy" in summary:
            r = seed_interval(recall.get((model, T, att), empty))
            row |= dict(recall_accuracy=r.mean, recall_lo=max(r.lo, 0), recall_hi=min(r.hi, 1), n_recall=r.n,
                        n_learnt=learnt_recall(g))
        if "eval_loss" not in g:
            note = "not evaluated (no eval_loss column: a folder from before evaluation)"
        elif not (g.status == "ok").any():
            note = f"no successful run ({', '.join(sorted(set(g.status)))})"
        else:
            note = "; ".join(["1 seed: no interval"] * (e.n == 1) + ["the reference"] * (att == against)
                             + [f"no seed in common with {against}"] * (att != against and d.n == 0)) \
                if e.n else "not evaluated"
        rows.append(row | {"note": note})
    return in_order(pd.DataFrame(rows)).reset_index(drop=True)


def learnt_recall(g: pd.DataFrame) -> float:
    """How many of a configuration's ok runs learnt recall: above the no-recall plateau (1 / n_pairs)
    by more than two binomial standard errors over their held-out queries (metrics.caveats). A seed's
    recall is bimodal, the plateau or near 1, so this count says more than a mean over 3 seeds.
    NaN without n_pairs (a folder from before the column)."""
    ok = g[(g.status == "ok") & g.recall_accuracy.notna()]
    if "n_pairs" not in ok or ok.n_pairs.isna().any():
        return math.nan
    labelled = ok["eval_labelled"] if "eval_labelled" in ok else pd.Series(math.nan, index=ok.index)
    return float(sum(no_recall_caveat(float(r), float(p), float(q)) is None
                     for r, p, q in zip(ok.recall_accuracy, ok.n_pairs, labelled)))


def _at_budget(g: pd.DataFrame, by: str, run: list[str]) -> pd.DataFrame:
    """Each run's eval_loss at the group's common budget, linear between its evaluations (NaN where the
    budget lies before its first evaluation: no extrapolation)."""
    budget = g.groupby(run)[by].max().min()
    rows = []
    for _, r in g.groupby(run, sort=False):
        r = r.sort_values(by)
        x, y = r[by].to_numpy(float), r.eval_loss.to_numpy(float)
        rows.append(dict(attention=r.attention.iloc[0], seed=r.seed.iloc[0],
                         value=float(np.interp(budget, x, y)) if budget >= x[0] else math.nan))
    return pd.DataFrame(rows).assign(budget=budget)


def at_equal(evals: pd.DataFrame | None, by: str) -> pd.DataFrame:
    """Eval loss at an equal budget of `by` (tokens_seen, train_s_cum or energy_j_cum): per (model, seq_len)
    the budget is the smallest final `by` of its runs (every mechanism reached it); per attention the mean and
    95% interval over seeds of the runs' interpolated losses. Empty, with .attrs["reason"], without data."""
    if evals is None or not len(evals) or by not in evals or not (evals[by].notna() & evals.eval_loss.notna()).any():
        empty = pd.DataFrame(columns=AT_EQUAL_COLUMNS)
        empty.attrs["reason"] = ("no evaluations (eval.csv missing or empty)" if evals is None or not len(evals)
                                 else f"no evaluation has both eval_loss and {by}"
                                 + (" (no GPU energy counter on this machine)" if by == "energy_j_cum" else ""))
        return empty
    e = with_seed(evals).dropna(subset=[by, "eval_loss"])
    run, rows = ["run_id"] if "run_id" in e else ["attention", "seed"], []
    for (model, T), g in e.groupby(["model", "seq_len"], sort=False):
        v = _at_budget(g, by, run)
        for att in plots.ordered(v.attention):
            i = seed_interval(v[v.attention == att].groupby("seed").value.mean())
            rows.append(dict(model=model, seq_len=T, attention=att, by=by, unit=UNITS.get(by, ""),
                             budget=float(v.budget.iloc[0]), eval_loss=i.mean, lo=i.lo, hi=i.hi, n_seeds=i.n))
    return in_order(pd.DataFrame(rows, columns=AT_EQUAL_COLUMNS)).reset_index(drop=True)


# --- report.md: one table per question, units in the headers --------------------------------------------
