"""Compare result folders: for each later folder (B, C, ...) the ratio to the first (A) of each key
metric's median, per (model, seq_len, attention), as a table, ratios.csv and one figure per pair.
Computed from the folders' files alone, like every report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from harness.errors import UserError
from harness.report import plots
from harness.report.display import display
from harness.report.payoff_md import payoff_section, synthetic_note
from harness.report.payoff_plots import payoff_figures
from harness.report.results import NoResults, Result, list_results, load
from harness.run.data import synthetic
from harness.report.tables import in_order, sig
from harness.store import write_text

COMPARE = ["train_time_s", "tokens_per_s", "inference_time_s", "gpu_memory_mb", "memory_gb",
           "joules_per_token", "loss"]


def _medians(r: Result, columns) -> pd.DataFrame:
    key = ["model", "seq_len", "attention"]
    t = pd.concat({c: plots.config_table(r.summary, c).set_index(key).value for c in columns if c in r.summary},
                  axis=1)
    return t.assign(status=plots.config_table(r.summary, columns[0]).set_index(key).status)


def pick(folders, root) -> list | None:
    """The folders to compare: those given, or the two latest in root (A = the older)."""
    if folders is not None:
        if len(folders) < 2:
            raise UserError(f"compare needs at least two folders, got {len(folders)}")
        return list(folders)
    try:
        found = list_results(root)
    except NoResults:
        found = []
    if len(found) < 2:
        print(f"compare needs two results in '{root}', found {len(found)}: run cell 4 again "
              "(another preset, GPU or config), or list the folders to compare")
        return None
    return [found[1], found[0]]


def ratios(tabs: list[pd.DataFrame], folders) -> list[tuple[str, pd.DataFrame]]:
    """(letter, B/A table) for each later folder, over the (model, seq_len, attention) it shares with A."""
    parts = []
    for k, t in enumerate(tabs[1:], 1):
        common = tabs[0].index.intersection(t.index)
        if common.empty:
            raise UserError(f"{folders[k]} and {folders[0]} share no (model, seq_len, attention): nothing to compare")
        a, b = tabs[0].loc[common], t.loc[common]
        ratio = (b.drop(columns="status") / a.drop(columns="status")).dropna(axis=1, how="all")
        ratio["status"] = ["ok" if x == y == "ok" else f"{x}/{y}" for x, y in zip(a.status, b.status)]
        parts.append((chr(65 + k), ratio))
    return parts


def _setting(r: Result, what: str) -> str:
    m, env = r.manifest, r.manifest.get("environment", {})
    runs = [x for x in m.get("runs", []) if x.get("status") == "ok"] or m.get("runs", [])
    return {"batch size": lambda: ",".join(map(str, sorted({x.get("batch_size") for x in runs}))),
            "dtype": lambda: ",".join(sorted({str(x.get("dtype", "?")) for x in runs})),
            "device": lambda: env.get("gpu") or f"CPU {env.get('cpu') or ''}".strip(),
            "preset": lambda: str(m.get("preset")), "commit": lambda: str(m.get("git_commit"))[:12]}[what]()


def caveats(results: list[Result]) -> list[str]:
    """What differs between A and each later folder besides the attention: a ratio then measures
    that difference too."""
    out = []
    for k, r in enumerate(results[1:], 1):
        for what in ("batch size", "dtype", "device", "preset", "commit"):
            a, b = _setting(results[0], what), _setting(r, what)
            if a != b:
                out.append(f"{chr(65 + k)} and A differ in {what}: {b} against {a}")
    return out


def compare(folders=None, root="results", out=None, show: bool = True) -> pd.DataFrame | None:
    """Results side by side: for each later folder (B, C, ...) the ratio to the first (A) of each key
    metric's median, per (model, seq_len, attention). folders=None: the two latest in root (A = older).
    Writes ratios.csv and a ratio figure per pair into out (default root/comparisons/A_vs_B/), and
    says when the folders differ in more than the attention (batch size, dtype, device, preset, commit)."""
    folders = pick(folders, root)
    if folders is None:
        return None
    results = [load(f) for f in folders]
    parts = ratios([_medians(r, COMPARE) for r in results], folders)
    one = len(parts) == 1         # two folders: plain "status"; more: "status C/A", ...
    table = pd.concat([p.add_suffix(f" {L}/A").rename(columns={f"status {L}/A": "status"} if one else {})
                       for L, p in parts], axis=1).reset_index()
    table = in_order(table.map(sig)).reset_index(drop=True)
    names = [Path(f).name for f in folders]
    out = Path(out) if out else Path(folders[-1]).parent / "comparisons" / f"{names[0]}_vs_{names[-1]}"
    out.mkdir(parents=True, exist_ok=True)
    legend = [f"{chr(65 + i)} = {r.context}" for i, r in enumerate(results)]
    pngs = [figure(letter, p, legend, out) for letter, p in parts]
    table.to_csv(out / "ratios.csv", index=False)
    if show:
        print("\n".join(legend))
        for line in caveats(results):
            print(f"read with care: {line}")
        display(table, pngs)
    payoff(results, out, show)
    if show:
        print(f"saved in {out}")
    return table


def payoff(results: list[Result], out: Path, show: bool = True) -> list[str]:
    """The payoff section over the compared folders together (sweeps of other lengths, other seeds,
    shards): written to out/payoff.md with its figures, and shown."""
    summary = pd.concat([r.summary for r in results], ignore_index=True)
    evals = [r.evals for r in results if r.evals is not None and len(r.evals)]
    sources = [r.data_source for r in results if r.data_source]  # any synthetic folder: the caveat holds
    source = next((s for s in sources if synthetic(s)), sources[0] if sources else None)
    lines = payoff_section(summary, pd.concat(evals, ignore_index=True) if evals else None, source)
    paths = []
    for stem, fig in payoff_figures(summary, synthetic_note(source)).items():
        fig.savefig(out / f"{stem}.png", dpi=100)
        paths.append(out / f"{stem}.png")
    if lines:
        write_text(out / "payoff.md", "\n".join(lines) + "\n")
        if show:
            print("\n".join(lines))
            display(images=paths)
    return lines


def figure(letter: str, part: pd.DataFrame, legend: list[str], out: Path) -> Path:
    fig = ratio_figure(part.add_suffix(f" {letter}/A").rename(columns={f"status {letter}/A": "status"})
                             .reset_index(), f"{letter}/A per metric (below 1: {letter} is lower)\n"
                             + "\n".join([legend[0], legend[ord(letter) - 65]]))
    path = out / f"ratio_{letter}_over_A.png"
    fig.savefig(path, dpi=100)
    return path


def ratio_figure(ratios: pd.DataFrame, title: str) -> Figure:
    """Comparison of two results: per metric, a bar from 1 to the ratio B/A per attention, log scale
    (2x and 0.5x look equally far from 1). ratios: model, seq_len, attention, status, then ratio columns."""
    cols = [c for c in ratios.columns if c not in ("model", "seq_len", "attention", "status")]
    fig, axes = plots.panels(len(cols), ncols=3, height=2.9, title=title)
    t = ratios.copy()
    if t.seq_len.nunique() > 1:                  # bar_panel groups by model: make the group model + seq_len
        t["model"] = t.model + "\nT=" + t.seq_len.astype(str)
    for ax, col in zip(axes, cols):
        table = t.assign(value=t[col], lo=np.nan, hi=np.nan, repeats=[[]] * len(t))
        ax.set_yscale("log")
        plots.bar_panel(ax, table, bottom=1.0)
        ax.axhline(1.0, color="black", lw=0.8)
        for bar in ax.patches:        # the ratio written at the bar's end: a ratio of 1 has no bar to see
            end = bar.get_y() + bar.get_height()
            ax.text(bar.get_x() + bar.get_width() / 2, end, f"{end:.3g}x", ha="center", fontsize=7,
                    va="bottom" if end >= 1 else "top")
        v = table.value[np.isfinite(table.value) & (table.value > 0)]
        r = max(1.1, float(np.exp(1.3 * np.abs(np.log(v)).max())) if len(v) else 1.1)
        ax.set_ylim(1 / r, r)                      # symmetric in log space: 2x and 0.5x equally far
        if r < 10:                                 # under a decade each way: ticks at 1, 2, 5 x 10^k
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.3g}x"))
        # Within a narrow range the minor ticks are the only ones: label them; else they crowd.
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:.3g}x") if r < 3 else NullFormatter())
        ax.set_title(col, fontsize=9)
    plots.attention_legend(fig, ratios.attention.unique())
    return fig
