"""The payoff section of report.md: the tables of harness/report/payoff.py with their units and
caveats (speed against sdpa and baseline, memory frontier, quality cost, equal-budget losses)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report import plots
from harness.report.payoff import UNITS, at_equal, crossover, memory_frontier, quality_cost
from harness.report.tables import fmt, md_table
from harness.run.data import synthetic


SPEED_NOTE = ("Faster = the lower end of its tokens/s interval (95%, measured batches) above the upper end of "
              "{a}'s, at that T and every longer one; the ratio is at the longest T both ran, its range from the "
              "interval ends. Training steps on this device, dtype and batch size: another GPU moves the crossover.")
BUDGETS = {"train_s_cum": ("Eval loss at equal training time", "Training-step seconds only (no evaluation, no "
                           "compilation), on this device."),
           "energy_j_cum": ("Eval loss at equal energy", "GPU energy of the training steps, from the board's counter.")}


def _part(title: str, note: str, table: pd.DataFrame) -> list[str]:
    return [f"### {title}", "", note, "", md_table(table), ""]


def _T(v) -> str:
    return str(int(v)) if pd.notna(v) else "-"


def _cells(m, lo, hi, n=None) -> list[str]:
    """"mean [lo, hi]" per row; the bare value where n < 2 (no interval); "-" where NaN."""
    n = [2] * len(m) if n is None else n
    return ["-" if not np.isfinite(a) else fmt(float(a)) if k < 2 else f"{fmt(float(a))} [{fmt(float(b))}, "
            f"{fmt(float(c))}]" for a, b, c, k in zip(m, lo, hi, n)]


def speed_lines(summary: pd.DataFrame, against: str) -> list[str]:
    t = crossover(summary, against) if ((summary.attention == against) & (summary.status == "ok")).any() else []
    if not len(t):
        return []
    ratio = _cells(t.speed_ratio, t.speed_ratio_lo, t.speed_ratio_hi)
    table = pd.DataFrame({"model": t.model, "attention": t.attention, "faster from T (tokens)": t.crossover_T.map(_T),
                          "longest T both ran (tokens)": t.ratio_T.map(_T),
                          f"tokens/s over {against}'s (x) [95% range]": ratio, "verdict": t.crossover_note})
    return _part(f"When it pays off: speed against {against}", SPEED_NOTE.format(a=against), table)


def frontier_lines(summary: pd.DataFrame) -> list[str]:
    f = memory_frontier(summary)
    gpu = f.gpu_memory_mb.notna().any()
    table = pd.DataFrame({"model": f.model, "attention": f.attention,
                          "batch (rows, or tokens a step)": f.batch_size,
                          "largest T that ran (tokens)": f.largest_ok_T.map(_T),
                          "smallest T out of memory (tokens)": f.smallest_oom_T.map(_T),
                          "peak GPU memory there (MB)" if gpu else "memory estimate there (GB)":
                              f.gpu_memory_mb if gpu else f.memory_estimate_gb, "note": f.note})
    return _part("Memory frontier", "The limit lies between the two T columns: the sweep's grid is its resolution, "
                 "and a smaller batch moves it. A sweep with tokens_per_batch holds the tokens a step fixed "
                 "(the batch shrinks as T grows).", table)


def synthetic_note(data_source: str | None) -> str | None:
    """The caveat for a loss from the bundled sample (the manifest's data source), else None."""
    if synthetic(data_source):
        return "These runs trained on the bundled synthetic sample: its loss is no quality signal."
    return None


def quality_lines(summary: pd.DataFrame, data_source: str | None = None) -> list[str]:
    """The quality table with its caveats: the data, the number of seeds, unequal tokens."""
    if not plots.measured(summary, "eval_loss"):
        return []
    done = set(summary.loc[(summary.status == "ok") & summary.eval_loss.notna(), "attention"])
    against = next((a for a in ("sdpa", "baseline") if a in done), plots.ordered(done)[0])
    q = quality_cost(summary, against).query("n_seeds > 0")
    cols = {"model": q.model, "T (tokens)": q.seq_len.map(_T), "attention": q.attention, "seeds": q.n_seeds,
            "eval loss (nats/token) [95% t interval]": _cells(q.eval_loss, q.eval_loss_lo, q.eval_loss_hi, q.n_seeds),
            f"minus {against}'s, paired by seed (nats/token)": _cells(q.delta, q.delta_lo, q.delta_hi, q.n_pairs)}
    if "recall_accuracy" in q and q.recall_accuracy.notna().any():
        cols["recall accuracy (0-1) [95% t interval]"] = _cells(q.recall_accuracy, q.recall_lo, q.recall_hi,
                                                                q.n_recall)
        cols["seeds that learnt recall"] = ["-" if not np.isfinite(k) else f"{int(k)} of {int(n)}"
                                            for k, n in zip(q.n_learnt, q.n_recall)]
    n, synthetic = int(q.n_seeds.max()), synthetic_note(data_source)
    notes = [synthetic] if synthetic else [] if data_source else \
        ["A quality signal only on real text: a loss from the bundled synthetic sample is none."]
    notes += ["1 seed: no interval; a difference of a few hundredths of a nat can be seed noise."] if n == 1 else \
        [f"{n} seeds: the interval is wide (Student t, {n - 1} degrees of freedom)."] if n < 5 else []
    k = summary[summary.status == "ok"].groupby(["model", "seq_len"]).train_tokens.nunique() \
        if "train_tokens" in summary else pd.Series(dtype=int)
    notes += [f"Tokens trained differ across mechanisms at T={', '.join(str(T) for _, T in k[k > 1].index)}: "
              "not a comparison at equal tokens."] if (k > 1).any() else []
    return (["### Quality cost at equal tokens", "", "Each run's last evaluation on the held-out split, mean over "
             "seeds.", ""] + [f"- {x}" for x in notes] + ["", md_table(pd.DataFrame(cols | {"note": q.note})), ""])


def budget_lines(evals: pd.DataFrame | None, by: str) -> list[str]:
    if evals is None or not len(evals):
        return []
    t = at_equal(evals, by)
    if not len(t):
        return [f"### {BUDGETS[by][0]}", "", f"not available: {t.attrs['reason']}", ""]
    table = pd.DataFrame({"model": t.model, "T (tokens)": t.seq_len.map(_T), "attention": t.attention,
                          f"common budget ({UNITS[by]})": t.budget, "seeds": t.n_seeds,
                          "eval loss there (nats/token) [95% t interval]": _cells(t.eval_loss, t.lo, t.hi, t.n_seeds)})
    return _part(BUDGETS[by][0], "The budget is the smallest total of any run, so every mechanism reached it; a "
                 "loss between two evaluations is interpolated linearly. " + BUDGETS[by][1], table)


def payoff_section(summary: pd.DataFrame, evals: pd.DataFrame | None = None,
                   data_source: str | None = None) -> list[str]:
    """report.md's "## Payoff": crossover against sdpa and baseline and the memory frontier (a seq_len sweep),
    the quality cost (eval_loss in summary), the loss at equal time and energy (evals); [] when none applies.
    data_source: the manifest's data source (says whether a loss can mean quality)."""
    sweep = bool(len(summary)) and summary.groupby("model").seq_len.nunique().max() > 1
    parts = speed_lines(summary, "sdpa") + speed_lines(summary, "baseline") + frontier_lines(summary) if sweep else []
    parts += quality_lines(summary, data_source) + budget_lines(evals, "train_s_cum")
    parts += budget_lines(evals, "energy_j_cum") if parts else []
    if not parts:
        return []
    return ["## Payoff", "", "For each mechanism: from which seq_len it pays off, and what it gives up.", ""] + parts
