"""`python main.py show [N|DIR]` and the notebook's third cell: a result printed from its files
alone (the plots are drawn from the CSVs if the folder has none, or all again with redraw)."""
from __future__ import annotations

import os
from pathlib import Path

from harness.report import breakdown
from harness.run.data import describe
from harness.report.display import display
from harness.report.markdown import make_plots, plot_rank
from harness.report.results import NoResults, latest, load
from harness.report.tables import failures, not_measured, read_with_care, summary_table


def show(n=1, root="results", all_plots: bool = False, redraw: bool = False) -> None:
    """Print the n-th latest result (or the folder n) and show its plots, from its files alone.
    redraw draws every plot again from the CSVs (a folder kept with only some of its figures).
    On a first visit (no results yet) say how to make one instead of raising."""
    try:
        folder = Path(n) if isinstance(n, (str, os.PathLike)) else latest(root, n)
    except NoResults as e:
        print(f"no results yet: run cell 4 (or `python main.py`) first. ({e})")
        return
    r = load(folder, batches_optional=True)
    env, m = r.manifest.get("environment", {}), r.manifest
    print(f"{folder}\n  preset {m.get('preset')}, created {m.get('created')}, "
          f"{'finished ' + str(m['finished']) if m.get('finished') else 'NOT finished'}; "
          f"GPU {env.get('gpu') or 'none'}; torch {env.get('torch')}; git {str(m.get('git_commit'))[:10]}")
    if m.get("data"):
        print(f"  {describe(m['data'])}")
    print("  runs: " + ", ".join(f"{v} {k}" for k, v in summary_table(r).status.value_counts().items()))
    if breakdown.sweep_time(m):
        print(f"  {breakdown.sweep_time(m)}")
    if not m.get("finished"):
        print(f"  this sweep did not finish: `python main.py --resume {r.folder}` runs the rest")
    display(summary_table(r))
    by_reason: dict[str, list[str]] = {}
    for c, why in not_measured(r).items():
        by_reason.setdefault(why, []).append(c)
    for why, cols in by_reason.items():
        print(f"not measured here: {', '.join(cols)}: {why}")
    for line in failures(r):
        print(f"no result: {line}")
    for line in read_with_care(r):
        print(f"read with care: {line}")
    if not (r.folder / "batches.csv").is_file() and len(r.summary):
        print(f"  no batches.csv in {r.folder} (kept without it): the per-batch figures cannot be drawn")
    pngs = sorted((r.folder / "plots").glob("*.png"), key=plot_rank)
    if redraw or not pngs:  # show reads; the one thing it may write is the plots, and it says so
        print(f"  {'redrawing the' if redraw else 'no'} plots in {r.folder / 'plots'}: drawing them from the CSVs")
        pngs = sorted(make_plots(r.folder), key=plot_rank)
    display(images=pngs if all_plots else [p for p in pngs if p.stem in ("overview", "loss_curves")])
    report = r.folder / "report.md"
    where = f"report: {report}" if report.is_file() else "no report.md (the sweep did not write one; show writes none)"
    print(f"all {len(pngs)} plots in {r.folder / 'plots'}; {where}")
