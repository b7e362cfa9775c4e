"""Figures of the payoff (payoff.py): eval loss against throughput or energy per token with the Pareto
front, and the speed ratio to a reference across seq_len with the crossover marked. Built from
summary.csv alone and returned as matplotlib Figures without pyplot, like plots.py; colours and
markers per attention are plots.py's, so these read like the other figures.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from harness.report import plots
from harness.report.payoff import KEY, crossover, per_seed, seed_interval, speed_ratios

T_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "p"]      # one per seq_len in the Pareto figure
X_AXES = {"tokens_per_s": ("throughput (tokens/s, higher is better)", True),
          "joules_per_token_run": ("energy (J/token, lower is better)", False)}


def over_seeds(summary: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per (model, seq_len, attention): mean, lo, hi, n of `column` over seeds (payoff.seed_interval)."""
    rows = [dict(zip(KEY, k)) | seed_interval(g.value)._asdict()
            for k, g in per_seed(summary, column).groupby(KEY, sort=False)]
    return pd.DataFrame(rows, columns=KEY + ["mean", "lo", "hi", "n"])


def pareto_front(x, y, higher_x_better: bool = True) -> np.ndarray:
    """True where no other point is at least as good on both (x: faster, or cheaper; y: lower loss) and
    better on one."""
    x, y = np.asarray(x, float) * (1 if higher_x_better else -1), np.asarray(y, float)
    beats = ((x[None, :] >= x[:, None]) & (y[None, :] <= y[:, None])
             & ((x[None, :] > x[:, None]) | (y[None, :] < y[:, None])))
    return ~beats.any(axis=1)


def pareto_points(summary: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per (model, seq_len, attention) with both: eval_loss mean/lo/hi/n and `x` as x, x_lo, x_hi."""
    if "eval_loss" not in summary or x not in summary:
        return pd.DataFrame(columns=KEY + ["mean", "lo", "hi", "n", "x", "x_lo", "x_hi", "x_n"])
    xs = over_seeds(summary, x).rename(columns={"mean": "x", "lo": "x_lo", "hi": "x_hi", "n": "x_n"})
    p = over_seeds(summary, "eval_loss").merge(xs, on=KEY)
    return p[np.isfinite(p["mean"].astype(float)) & np.isfinite(p.x.astype(float))].reset_index(drop=True)


def _err(m, lo, hi) -> list:
    return [[max(m - lo, 0) if np.isfinite(lo) else 0], [max(hi - m, 0) if np.isfinite(hi) else 0]]


def _pareto_panel(ax, p: pd.DataFrame, markers: dict, higher: bool) -> None:
    """A point per (attention, T), gid "attention|T"; the front as a dashed step line, gid "pareto_front"."""
    for r in p.itertuples():
        bars = ax.errorbar(r.x, r.mean, xerr=_err(r.x, r.x_lo, r.x_hi), yerr=_err(r.mean, r.lo, r.hi),
                           fmt=markers[r.seq_len], ms=7, capsize=2, color=plots.color(r.attention), mfc="none", mew=1.4)
        bars[0].set_gid(f"{r.attention}|{r.seq_len}")
        ax.annotate(str(r.seq_len), (r.x, r.mean), textcoords="offset points", xytext=(5, 4), fontsize=7, color="0.3")
    front = p[pareto_front(p.x, p["mean"], higher)].sort_values("x")
    ax.step(front.x, front["mean"], where="pre" if higher else "post", color="black", ls="--", lw=1,
            gid="pareto_front", zorder=0)
    if p.x.max() > 10 * p.x.min() > 0:             # T spans decades of throughput: a log axis
        ax.set_xscale("log")
    ax.grid(alpha=0.3, which="both")


def pareto_figure(summary: pd.DataFrame, x: str = "tokens_per_s", note: str | None = None) -> Figure | None:
    """Eval loss (nats/token) against tokens/s (x="tokens_per_s") or J/token (x="joules_per_token_run"):
    a point per (attention, seq_len), the mean over seeds with its 95% t interval, colour per attention,
    marker per T, the Pareto front as a step line; a panel per model; note (the bundled sample's caveat)
    under it. None without eval_loss or x."""
    p = pareto_points(summary, x)
    if not len(p):
        return None
    xlabel, higher = X_AXES.get(x, (x, True))
    Ts = sorted(p.seq_len.unique())
    markers = {T: T_MARKERS[i % len(T_MARKERS)] for i, T in enumerate(Ts)}
    models = list(dict.fromkeys(p.model))
    fig, axes = plots.panels(len(models), title=f"What each mechanism gives up: eval loss against {xlabel.split(' (')[0]}"
                             "\n(dashed: the Pareto front, the points no other beats on both)")
    for ax, model in zip(axes, models):
        _pareto_panel(ax, p[p.model == model], markers, higher)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel("eval loss (nats/token, lower is better)", fontsize=9)
    fig.supxlabel("point = mean over seeds; error bars = 95% Student-t interval over seeds (none with one seed)"
                  + (f"\n{note}" if note else ""), fontsize=8, color="firebrick" if note else "black")
    extra = [Line2D([], [], color="black", marker=markers[T], ls="", mfc="none", label=f"T={T}") for T in Ts]
    plots.attention_legend(fig, p.attention.unique(), extra + [Line2D([], [], color="black", ls="--",
                                                                       label="Pareto front")])
    return fig


def _ratio_axis(ax, seq_lens: list) -> None:
    ax.axhline(1.0, color="black", lw=0.8, gid="parity")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(seq_lens, [str(T) for T in seq_lens], fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))   # ratios within a decade
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.3g}x"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("seq_len (tokens)", fontsize=9)
    ax.grid(alpha=0.3, which="both")


def speedup_figure(summary: pd.DataFrame, against: str = "sdpa") -> Figure | None:
    """Tokens/s over against's vs seq_len (log2 x, log y), a line per mechanism (gid "ratio|attention"),
    its 95% range shaded, parity at 1, a star where it becomes faster for good (gid "crossover|attention").
    None with fewer than 2 seq_lens where both ran."""
    r = speed_ratios(summary, against)
    r = r[np.isfinite(r.ratio.astype(float))]
    if r.empty or r.groupby("model").seq_len.nunique().max() < 2:
        return None
    cross = crossover(summary, against).set_index(["model", "attention"]).crossover_T
    models = list(dict.fromkeys(r.model))
    fig, axes = plots.panels(len(models), title=f"When it pays off: tokens/s over {against}'s (above 1: faster)")
    for ax, model in zip(axes, models):
        g = r[r.model == model]
        for att in plots.ordered(g.attention):
            a, c = g[g.attention == att].sort_values("seq_len"), plots.color(att)
            ax.plot(a.seq_len, a.ratio, "-", marker=plots.MARKERS.get(att, "o"), color=c, mfc="none", gid=f"ratio|{att}")
            ax.fill_between(a.seq_len, a.ratio_lo, a.ratio_hi, color=c, alpha=0.15, lw=0)
            T = cross.get((model, att), np.nan)
            if np.isfinite(T):
                ax.plot([T], a.ratio[a.seq_len == T].to_list(), "*", ms=15, color=c, mec="black",
                        gid=f"crossover|{att}")
        _ratio_axis(ax, sorted(g.seq_len.unique()))
        ax.set_title(model, fontsize=9)
        ax.set_ylabel(f"tokens/s over {against}'s (x)", fontsize=9)
    fig.supxlabel("line = ratio of medians; band = from the 95% interval ends; star = faster (intervals apart) "
                  "from this T at every longer one", fontsize=8)
    extra = [Line2D([], [], color="black", marker="*", ls="", ms=10, label="crossover"),
             Patch(color="0.6", alpha=0.3, label="95% range")]
    plots.attention_legend(fig, r.attention.unique(), extra, lines=True)
    return fig


def payoff_figures(summary: pd.DataFrame, note: str | None = None) -> dict[str, Figure]:
    """The payoff figures that apply, by file stem: pareto_tokens_per_s, pareto_joules, speedup_vs_sdpa.
    A recall sweep of several pair counts gets its Pareto figures per count (_p8, _p32, ...): a loss
    at 8 pairs and one at 32 are different tasks, not seeds of one. note: a caveat the Pareto figures carry."""
    pairs = summary["n_pairs"].dropna().unique() if "n_pairs" in summary else []
    parts = [("", summary)] if len(pairs) < 2 else \
        [(f"_p{int(p)}", summary[summary["n_pairs"] == p]) for p in sorted(pairs)]
    figs = {}
    for tag, part in parts:
        figs[f"pareto_tokens_per_s{tag}"] = pareto_figure(part, "tokens_per_s", note)
        figs[f"pareto_joules{tag}"] = pareto_figure(part, "joules_per_token_run", note)
    figs["speedup_vs_sdpa"] = speedup_figure(summary, "sdpa")
    return {k: f for k, f in figs.items() if f is not None}
