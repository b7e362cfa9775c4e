"""Figures of one results folder: bars per metric, per-batch lines, loss curves, scaling curves.

Every figure is built from summary.csv / batches.csv alone and returned as a matplotlib Figure
(no pyplot: no global state, no surprise inline display, PNGs via the Agg canvas whatever the
backend). report.make_plots saves them. Each attention keeps one colour and one place (the
registry's ORDER) in every figure, so a reader can scan figures without re-reading legends.
Bars start at zero and show the median over measured batches with its 95% interval; a run
that failed shows its status (OOM, ...) where its bar would be, never an empty slot that reads as 0.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullLocator

from attentions.order import ORDER
from metrics.catalog import BY_COLUMN, METRICS, label

# Baseline is the reference, so it gets the neutral grey; tab10 for the rest, cyan spare.
COLORS = dict(zip(ORDER, ["#555555", "tab:blue", "tab:orange", "tab:green", "tab:red",
                          "tab:purple", "tab:brown", "tab:pink", "tab:olive"]))
EXTRA_COLORS = ["tab:cyan", "gold", "navy", "lime", "teal"]
# A marker per attention as well: lines that coincide (same loss) still show every attention.
MARKERS = dict(zip(ORDER, ["o", "s", "^", "v", "D", "P", "X", "*", "h"]))
MODEL_STYLES = ["-", "--", ":", "-."]
WIDTH = 10.0                              # inches: fits a notebook cell at dpi 100
KEY = ["train_time_s", "tokens_per_s", "inference_time_s", "gpu_memory_mb", "memory_gb", "gpu_power_w",
       "gpu_util_percent", "joules_per_token", "cpu_percent", "loss", "mfu", "model_size_mb"]
PER_TOKEN = {"train_time_s", "inference_time_s"}   # in sweeps these are shown per token
SCALING = ["train_time_s", "inference_time_s", "gpu_memory_mb", "memory_gb", "joules_per_token"]
# Per-batch lines: what varies within a run (loss gets its own curves; flops, model size are constant).
LINES = ["train_time_s", "inference_time_s", "gpu_memory_mb", "memory_gb", "gpu_power_w", "gpu_util_percent",
         "cpu_percent", "disk_read_mb", "disk_write_mb", "joules_per_token"]
NO_BARS = {"tokens", "real_tokens"}     # the batch shape, an input rather than a cost


def ordered(attentions) -> list[str]:
    """Attentions in registry order; unknown names after, alphabetically."""
    names = set(attentions)
    return [a for a in ORDER if a in names] + sorted(names - set(ORDER))


def color(attention: str) -> str:
    if attention in COLORS:
        return COLORS[attention]
    return EXTRA_COLORS[sum(map(ord, attention)) % len(EXTRA_COLORS)]   # stable across figures


def measured(summary: pd.DataFrame, column: str) -> bool:
    """True if any successful run has a value: NaN-only metrics get no figure (never fake zeros)."""
    if column not in summary:
        return False
    return bool(summary.loc[summary.status == "ok", column].notna().any())


def with_per_token(summary: pd.DataFrame, column: str) -> tuple[pd.DataFrame, str, str]:
    """Add `<column>_per_token` (and its interval) to a copy of summary; returns it, its name, label."""
    m = BY_COLUMN[column]
    tokens = summary["tokens"] if "tokens" in summary else summary.batch_size * summary.seq_len
    s, name = summary.copy(), f"{column}_per_token"
    for suffix in ("", "_lo", "_hi"):
        if column + suffix in s:
            s[name + suffix] = s[column + suffix] / tokens
    return s, name, f"{column} per token ({m.unit}/token)"


def config_table(summary: pd.DataFrame, column: str) -> pd.DataFrame:
    """One row per (model, seq_len, attention): the median of the repeats' medians, the widest
    interval of the repeats, every repeat's median, and a status ("ok" if any repeat ran)."""
    rows = []
    for (model, T, att), g in summary.groupby(["model", "seq_len", "attention"], sort=False):
        ok = g[g.status == "ok"]
        vals = ok[column].dropna() if column in ok else pd.Series(dtype=float)
        rows.append(dict(model=model, seq_len=T, attention=att, value=vals.median() if len(vals) else np.nan,
                         lo=ok[column + "_lo"].min() if column + "_lo" in ok else np.nan,
                         hi=ok[column + "_hi"].max() if column + "_hi" in ok else np.nan,
                         repeats=list(vals), status="ok" if len(ok) else str(g.status.iloc[0])))
    t = pd.DataFrame(rows, columns=["model", "seq_len", "attention", "value", "lo", "hi", "repeats", "status"])
    rank = {a: i for i, a in enumerate(ordered(t.attention))}
    return t.sort_values("attention", key=lambda s: s.map(rank), kind="stable").reset_index(drop=True)


def panels(n: int, ncols: int = 2, height: float = 3.6, title: str = ""):
    """A figure WIDTH wide with n panels in a grid; returns it and the n axes."""
    ncols = max(1, min(n, ncols))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(WIDTH, height * nrows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig, list(axes[:n])


def _title(column: str, context: str = "") -> str:
    m = BY_COLUMN.get(column)
    head = f"{label(column)}: {m.meaning}" if m else label(column)
    head += " (higher is better)" if m and m.higher_is_better else ""
    return "\n".join(textwrap.wrap(head, 95) + ([context] if context else []))


def attention_legend(fig, attentions, extra=(), lines: bool = False):
    """Colour (and, for line plots, marker) of each attention, outside the axes on the right."""
    handles = [Line2D([], [], color=color(a), marker=MARKERS.get(a, "o"), mfc="none", mew=1.2, label=a) if lines
               else Patch(color=color(a), label=a) for a in ordered(attentions)] + list(extra)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)


def bar_panel(ax, table: pd.DataFrame, ylabel: str = "", bottom: float | None = None) -> None:
    """Bars of table.value: groups = models, bars within = attentions; 95% interval as error bars,
    each repeat's median as a dot, the status written where a failed run's bar would be.
    Each bar's gid is "model|seq_len|attention" so tests can read the heights back."""
    models, atts = list(dict.fromkeys(table.model)), ordered(table.attention)
    w = 0.8 / len(atts)
    pos = {(m, a): i + (j - (len(atts) - 1) / 2) * w for i, m in enumerate(models) for j, a in enumerate(atts)}
    base = 0.0 if bottom is None else bottom
    for r in table.itertuples():
        x, c = pos[(r.model, r.attention)], color(r.attention)
        if r.status != "ok" or not np.isfinite(r.value):
            ax.text(x, base, " " + (r.status.upper() if r.status != "ok" else "not measured"), rotation=90,
                    ha="center", va="bottom", fontsize=8, color=c, fontweight="bold")
            continue
        ax.bar(x, r.value - base, w * 0.9, bottom=bottom, color=c, gid=f"{r.model}|{r.seq_len}|{r.attention}")
        if np.isfinite(r.lo) and np.isfinite(r.hi):
            ax.errorbar(x, r.value, yerr=[[max(r.value - r.lo, 0)], [max(r.hi - r.value, 0)]], fmt="none",
                        ecolor="black", capsize=3, lw=1)
        if len(r.repeats) > 1:
            ax.plot([x] * len(r.repeats), r.repeats, "o", ms=3, color="black", zorder=3)
    ax.set_xlim(-0.5, len(models) - 0.5)        # room for the status text of a first or last bar
    values = table.value[np.isfinite(table.value)]
    if bottom is None and len(values) and (values == 0).all():  # all zero: an axis from 0, not +-0.04
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "0 in every run", transform=ax.transAxes, ha="center", fontsize=9, color="0.3")
    if len(models) == 1:
        ax.set_xticks([pos[(models[0], a)] for a in atts], atts, rotation=30 if len(atts) < 6 else 50,
                      ha="right", fontsize=8, rotation_mode="anchor")
    else:
        ax.set_xticks(range(len(models)), models)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def bar_figure(summary: pd.DataFrame, column: str, context: str = "") -> Figure:
    """One bar chart of a metric across attentions: a panel per seq_len (own y scale), models grouped."""
    seq_lens = sorted(summary.seq_len.unique())
    fig, axes = panels(len(seq_lens), title=_title(column, context))
    for ax, T in zip(axes, seq_lens):
        s = summary[summary.seq_len == T]
        bar_panel(ax, config_table(s, column), label(column))
        n = sorted(set(s.loc[s.status == "ok", "n_measured"].dropna().astype(int)))
        ax.set_title(f"seq_len {T}, batch {', '.join(map(str, sorted(s.batch_size.unique())))}: median of "
                     f"{'-'.join(map(str, n[:1] + n[1:][-1:])) or 0} measured batches per run", fontsize=9)
    repeats = "; dots = each repeat's median" if "repeat" in summary and summary.repeat.nunique() > 1 else ""
    fig.supxlabel("bar = median over measured batches (warm-up excluded); error bar = 95% interval of the "
                  "median" + repeats, fontsize=8)
    if summary.model.nunique() > 1:
        attention_legend(fig, summary.attention.unique())
    return fig


def lines_figure(batches: pd.DataFrame, column: str, context: str = "", epochs: bool = False) -> Figure:
    """Per-batch values, one line per run, a panel per (model, seq_len); warm-up shaded grey."""
    groups = list(dict.fromkeys(zip(batches.model, batches.seq_len)))
    fig, axes = panels(len(groups), height=3.2, title=_title(column, context))
    for ax, (model, T) in zip(axes, groups):
        g = batches[(batches.model == model) & (batches.seq_len == T)]
        warm = g.loc[g.phase == "warmup", "step"]
        if len(warm):
            ax.axvspan(g.step.min() - 0.5, warm.max() + 0.5, color="0.88", zorder=0)
        if epochs:
            for s in g.groupby("epoch").step.min().iloc[1:]:
                ax.axvline(s - 0.5, color="0.4", ls=":", lw=1)
        for att in ordered(g.attention):
            for _, r in g[g.attention == att].groupby("run_id"):
                ax.plot(r.step, r[column], "-", marker=MARKERS.get(att, "o"), ms=4, lw=1.3, color=color(att),
                        mfc="none", mew=1.2)
        _clip_warmup(ax, g, column)
        ax.set_title(f"{model}, seq_len {T}", fontsize=9)
        ax.set_xlabel("training step", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label(column), fontsize=9)
        ax.grid(alpha=0.3)
    extra = [Patch(color="0.88", label="warm-up\n(not measured)")]
    extra += [Line2D([], [], color="0.4", ls=":", label="new epoch")] if epochs else []
    attention_legend(fig, batches.attention.unique(), extra, lines=True)
    return fig


def _clip_warmup(ax, g: pd.DataFrame, column: str) -> None:
    """Warm-up steps (compilation, autotuning) can be 100x slower than measured ones and would
    flatten them: scale the axis to the measured steps and say how high the warm-up went."""
    meas, warm = g.loc[g.phase == "measure", column], g.loc[g.phase == "warmup", column]
    lo, hi = meas.min(), meas.max()
    if not (np.isfinite(hi) and warm.max() > 2 * hi > 0):
        return
    pad = 0.15 * (hi - lo) or 0.1 * hi
    ax.set_ylim(max(lo - pad, 0) if lo >= 0 else lo - pad, hi + pad)
    ax.text(0.01, 0.97, f"warm-up off scale, up to {warm.max():.3g}", transform=ax.transAxes,
            fontsize=7, va="top", color="0.3")


def scaling_panel(ax, summary: pd.DataFrame, column: str, per_token: bool = False) -> str:
    """Metric vs seq_len (log-log for costs), a line per attention (style per model); x at the top edge
    where a run ran out of memory, + where it failed otherwise. Returns the y label."""
    s, col, ylabel = with_per_token(summary, column) if per_token else (summary, column, label(column))
    models, stacked = list(dict.fromkeys(s.model)), {}
    # Costs that grow as powers of T go log-log; a flat or level metric (power, %) stays linear.
    v = s.loc[s.status == "ok", col]
    logy = (column in SCALING or column == "tokens_per_s") and v.max() > 2 * v.min() > 0
    for k, model in enumerate(models):
        t = config_table(s[s.model == model], col).sort_values("seq_len")
        for att in ordered(t.attention):
            r = t[t.attention == att]
            ok = r[(r.status == "ok") & r.value.notna()]
            err = [np.clip(ok.value - ok.lo, 0, None).fillna(0), np.clip(ok.hi - ok.value, 0, None).fillna(0)]
            ax.errorbar(ok.seq_len, ok.value, yerr=err, fmt=MARKERS.get(att, "o"), ls=MODEL_STYLES[k % 4], ms=5,
                        capsize=2, color=color(att), mfc="none", mew=1.2)
            for bad in r[~r.status.isin(["ok", "unavailable"])].itertuples():
                y = 0.95 - 0.07 * stacked.get(bad.seq_len, 0)      # several failures at one seq_len: stack
                stacked[bad.seq_len] = stacked.get(bad.seq_len, 0) + 1
                ax.plot(bad.seq_len, y, "x" if bad.status == "oom" else "+", ms=9, mew=2.5,
                        color=color(att), transform=ax.get_xaxis_transform(), clip_on=False)
    seq_lens = sorted(s.seq_len.unique())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log" if logy else "linear")
    if stacked:                              # headroom above the data for the failure marks
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** 0.3 if logy and lo > 0 else hi + 0.3 * (hi - lo))
    ax.set_xticks(seq_lens, [str(T) for T in seq_lens], fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("seq_len (tokens)", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    return ylabel


def _failure_legend(summary: pd.DataFrame) -> list:
    statuses = set(summary.status) - {"ok", "unavailable"}
    oom = Line2D([], [], color="black", marker="x", ls="", mew=2, label="out of memory")
    marks = [oom] if "oom" in statuses else []
    if statuses - {"oom"}:
        marks.append(Line2D([], [], color="black", marker="+", ls="", mew=2, label="failed (" + ", ".join(
            sorted(statuses - {"oom"})) + ")"))
    models = list(dict.fromkeys(summary.model))
    if len(models) > 1:
        marks += [Line2D([], [], color="black", ls=MODEL_STYLES[k % 4], label=m) for k, m in enumerate(models)]
    return marks


def scaling_figure(summary: pd.DataFrame, column: str, context: str = "") -> Figure:
    """How a metric grows with seq_len, log-log, a panel per model."""
    per_token = column in PER_TOKEN
    models = list(dict.fromkeys(summary.model))
    head = f"{column}{' per token' if per_token else ''} vs seq_len"
    fig, axes = panels(len(models), title=head + (f"\n{context}" if context else ""))
    for ax, model in zip(axes, models):
        scaling_panel(ax, summary[summary.model == model], column, per_token)
        ax.set_title(model, fontsize=9)
    fig.supxlabel("points = median over measured batches, error bars = 95% interval; "
                  "x at the top = out of memory at that seq_len", fontsize=8)
    attention_legend(fig, summary.attention.unique(), _failure_legend(summary[summary.model.isin(models[:1])]),
                      lines=True)
    return fig


def overview_figure(summary: pd.DataFrame, context: str = "") -> Figure:
    """The key metrics at a glance: bars for one seq_len, log-log scaling lines for a sweep."""
    cols = [c for c in KEY if measured(summary, c)][:9]
    sweep = summary.groupby("model").seq_len.nunique().max() > 1
    fig, axes = panels(len(cols), ncols=3, height=2.9, title="Overview" + (f": {context}" if context else ""))
    for ax, col in zip(axes, cols):
        if sweep:
            ylabel = scaling_panel(ax, summary, col, col in PER_TOKEN)
        else:
            ylabel = label(col)
            bar_panel(ax, config_table(summary, col))
        ax.set_title(ylabel, fontsize=9)
        ax.set_ylabel("")
    attention_legend(fig, summary.attention.unique(), _failure_legend(summary) if sweep else (), lines=sweep)
    return fig


def all_figures(summary: pd.DataFrame, batches: pd.DataFrame, context: str = "") -> dict[str, Figure]:
    """Every figure of one result, by file stem; nothing is drawn for metrics no run measured."""
    cols = [m.column for m in METRICS if measured(summary, m.column)]
    figs = {"overview": overview_figure(summary, context)} if cols else {}
    if len(batches) and "loss" in cols:
        figs["loss_curves"] = lines_figure(batches, "loss", context, epochs=True)
    if len(summary) and summary.groupby("model").seq_len.nunique().max() > 1:
        figs |= {f"scaling_{c}": scaling_figure(summary, c, context) for c in SCALING if c in cols}
    figs |= {f"bar_{c}": bar_figure(summary, c, context) for c in cols if c not in NO_BARS}
    figs |= {f"batches_{c}": lines_figure(batches, c, context) for c in LINES if c in cols and len(batches)}
    return figs
