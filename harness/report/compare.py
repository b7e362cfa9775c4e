"""Compare result folders: for each later folder (B, C, ...) the ratio to the first (A) of each key
metric's median, per (model, seq_len, attention), as a table, ratios.csv and one figure per pair.
Computed from the folders' files alone, like every report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.report import plots
from harness.report.display import display
from harness.report.results import NoResults, Result, list_results, load
from harness.report.tables import in_order, sig

COMPARE = ["train_time_s", "tokens_per_s", "inference_time_s", "gpu_memory_mb", "memory_gb",
           "joules_per_token", "loss"]


def _medians(r: Result, columns) -> pd.DataFrame:
    key = ["model", "seq_len", "attention"]
    t = pd.concat({c: plots.config_table(r.summary, c).set_index(key).value for c in columns if c in r.summary},
                  axis=1)
    return t.assign(status=plots.config_table(r.summary, columns[0]).set_index(key).status)


def compare(folders=None, root="results", out=None, show: bool = True) -> pd.DataFrame | None:
    """Results side by side: for each later folder (B, C, ...) the ratio to the first (A) of each key
    metric's median, per (model, seq_len, attention). folders=None: the two latest in root (A = older).
    Writes a ratio figure per pair into out (default root/comparisons/A_vs_B/)."""
    if folders is None:
        try:
            found = list_results(root)
        except NoResults:
            found = []
        if len(found) < 2:
            print(f"compare needs two results in '{root}', found {len(found)}: run cell 4 again "
                  "(another preset, GPU or config), or list the folders to compare")
            return None
        folders = [found[1], found[0]]
    if len(folders) < 2:
        raise UserError(f"compare needs at least two folders, got {len(folders)}")
    results = [load(f) for f in folders]
    tabs = [_medians(r, COMPARE) for r in results]
    parts = []
    for k, t in enumerate(tabs[1:], 1):
        common = tabs[0].index.intersection(t.index)
        if common.empty:
            raise UserError(f"{folders[k]} and {folders[0]} share no (model, seq_len, attention): nothing to compare")
        a, b = tabs[0].loc[common], t.loc[common]
        ratio = (b.drop(columns="status") / a.drop(columns="status")).dropna(axis=1, how="all")
        ratio["status"] = ["ok" if x == y == "ok" else f"{x}/{y}" for x, y in zip(a.status, b.status)]
        parts.append((chr(65 + k), ratio))
    one = len(parts) == 1         # two folders: plain "status"; more: "status C/A", ...
    table = pd.concat([p.add_suffix(f" {L}/A").rename(columns={f"status {L}/A": "status"} if one else {})
                       for L, p in parts], axis=1).reset_index()
    table = in_order(table.map(sig)).reset_index(drop=True)
    names = [Path(f).name for f in folders]
    out = Path(out) if out else Path(folders[-1]).parent / "comparisons" / f"{names[0]}_vs_{names[-1]}"
    out.mkdir(parents=True, exist_ok=True)
    legend = [f"{chr(65 + i)} = {r.context}" for i, r in enumerate(results)]
    pngs = []
    for letter, p in parts:
        fig = plots.ratio_figure(p.add_suffix(f" {letter}/A").rename(columns={f"status {letter}/A": "status"})
                                 .reset_index(), f"{letter}/A per metric (below 1: {letter} is lower)\n"
                                 + "\n".join([legend[0], legend[ord(letter) - 65]]))
        pngs.append(out / f"ratio_{letter}_over_A.png")
        fig.savefig(pngs[-1], dpi=100)
    table.to_csv(out / "ratios.csv", index=False)
    if show:
        print("\n".join(legend))
        display(table, pngs)
        print(f"saved in {out}")
    return table
