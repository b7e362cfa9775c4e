"""Read results folders, summarise, plot, compare; used by main.py (show, compare) and the notebook.

Everything here is computed from a folder's manifest.json, summary.csv and batches.csv alone, so
plots/ and report.md can be regenerated at any time; nothing here measures or trains.
Labels and units come from metrics/catalog.py; attention order and colours from plots.py.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import plots
import timing
from cells import display, latest_unfinished, run_main, system_info  # noqa: F401  (report.* is the notebook's one import)
from harness.errors import UserError
from metrics.catalog import METRICS, label

TABLE = ["train_time_s", "tokens_per_s", "inference_time_s", "gpu_memory_mb", "memory_gb", "gpu_power_w",
         "gpu_util_percent", "joules_per_token", "loss"]     # the readable summary's metrics
ID = ["model", "attention", "kernel", "seq_len", "batch_size"]
RUN_COLUMNS = ["run_id", "model", "attention", "kernel", "seq_len", "batch_size", "repeat", "status", "reason"]


class NoResults(UserError):
    """The results root is missing or holds no results: a first visit, not a mistake."""


@dataclass
class Result:
    folder: Path
    manifest: dict
    batches: pd.DataFrame
    summary: pd.DataFrame
    samples: pd.DataFrame | None

    @property
    def context(self) -> str:
        """One line naming the run, for figure titles."""
        env = self.manifest.get("environment", {})
        where = env.get("gpu") or f"CPU {env.get('cpu') or ''}".strip()
        return f"{self.manifest.get('preset', '?')} on {where} ({self.folder.name})"


def list_results(root="results") -> list[Path]:
    """Result folders under root (those with a manifest.json), newest first. Folder names start
    with a YYYYmmdd-HHMMSS timestamp, so newest first is reverse name order."""
    root = Path(root)
    if not root.is_dir():
        raise NoResults(f"results folder '{root}' does not exist")
    return sorted((p for p in root.iterdir() if (p / "manifest.json").is_file()), key=lambda p: p.name,
                  reverse=True)


def latest(root="results", n: int = 1) -> Path:
    """The n-th newest result folder: n=1 the latest, n=2 the one before."""
    found = list_results(root)
    if not found:
        raise NoResults(f"no results in '{root}' yet (a result is a folder with manifest.json)")
    if not isinstance(n, int) or n < 1 or n > len(found):
        raise UserError(f"n={n!r}: '{root}' holds {len(found)} result(s); use n from 1 (latest) to {len(found)}")
    return found[n - 1]


def _read_csv(path: Path, required: bool = True) -> pd.DataFrame | None:
    """The CSV at path; an empty file is an empty frame (a sweep that has not finished a run)."""
    if not path.is_file():
        if required:
            raise UserError(f"{path}: missing; is this a finished attention-bench results folder?")
        return None
    try:
        return pd.read_csv(path, dtype={"reason": str, "kernel": str}, keep_default_na=False, na_values=[""])     # all-blank stays text
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None


def load(folder) -> Result:
    """Read one results folder. Bad or missing files raise UserError naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder '{folder}' does not exist")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: no manifest.json; not an attention-bench results folder") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{folder / 'manifest.json'}: malformed JSON ({e})") from None
    summary = _read_csv(folder / "summary.csv", required=False)
    batches = _read_csv(folder / "batches.csv", required=summary is not None)
    if summary is None:         # a sweep stopped before its first run ended: the plan, no numbers
        summary, batches = pd.DataFrame(manifest.get("runs", []), columns=RUN_COLUMNS), pd.DataFrame()
    missing = {"run_id", "model", "attention", "seq_len", "status"} - set(summary.columns)
    if missing:
        raise UserError(f"{folder / 'summary.csv'}: missing columns {sorted(missing)}")
    summary["reason"] = summary["reason"].fillna("") if "reason" in summary else ""
    for df in (summary, batches):      # ids read back as float when a column has a blank: 128.0 -> 128
        for c in ("seq_len", "batch_size", "repeat", "epoch", "batch", "step", "n_measured"):
            if c in df and df[c].notna().all() and len(df):
                df[c] = df[c].astype(int)
    return Result(folder, manifest, batches, summary, _read_csv(folder / "samples.csv", required=False))


def _sig(x, digits: int = 4):
    """Round to significant digits: a table reader needs 4, not 17."""
    return float(f"{x:.{digits}g}") if isinstance(x, float) and math.isfinite(x) else x


def _in_order(df: pd.DataFrame) -> pd.DataFrame:
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
    s = _in_order(s)
    ids = [c for c in ID if c in s] + (["repeat"] if "repeat" in s and s.repeat.nunique() > 1 else [])
    out = s[ids].copy()
    out["status"] = s.status.to_numpy()         # why a run failed: failures(), report.md
    for c in columns:
        if plots.measured(s, c):
            out[label(c)] = s[c].map(_sig)
    return out.reset_index(drop=True)


def failures(result: Result) -> list[str]:
    """One line per finished run without a result (oom, unavailable, ...): what, status, why."""
    bad = result.summary[~result.summary.status.isin(["ok", "pending", "running"])]
    rep = "repeat" in bad and result.summary.repeat.nunique() > 1
    return [f"{x.model} {x.attention} seq_len {x.seq_len}{f' repeat {x.repeat}' if rep else ''}: {x.status}: "
            f"{x.reason}".rstrip(": ") for x in bad.itertuples()]


def not_measured(result: Result) -> dict[str, str]:
    """Catalogued metrics with no value in any successful run, and why (from the manifest)."""
    reasons = dict(result.manifest.get("metrics", {}).get("nan_reasons", {}))
    # Derived columns inherit the reason of what they are derived from.
    reasons.setdefault("joules_per_token", reasons.get("energy_j", ""))
    reasons.setdefault("gpu_power_counter_w", reasons.get("energy_j", ""))
    reasons.setdefault("mfu", "no peak FLOP/s known for this device (metrics/peak.py)")
    return {m.column: reasons.get(m.column) or "no value in any run" for m in METRICS
            if not plots.measured(result.summary, m.column)}


def make_plots(folder, return_figures: bool = False):
    """Draw every figure into folder/plots/*.png (old PNGs there are replaced). Returns the paths,
    or (paths, {stem: Figure}) with return_figures, so tests can read what was drawn."""
    result = load(folder)
    out = result.folder / "plots"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    figs = plots.all_figures(result.summary, result.batches, result.context)
    paths = []
    for stem, fig in figs.items():
        fig.savefig(out / f"{stem}.png", dpi=100)
        paths.append(out / f"{stem}.png")
    return (paths, figs) if return_figures else paths


def _plot_rank(p: Path):
    """Overview first, then loss, scaling, bars, per-batch lines (the order figures are made in)."""
    order = ["overview", "loss_curves", "scaling_", "bar_", "batches_"]
    return next((i for i, k in enumerate(order) if p.stem.startswith(k)), len(order)), p.stem


def _fmt(v) -> str:
    """4 significant digits, no exponent between 0.001 and 10^6: 13,210 reads faster than 1.321e+04."""
    if not isinstance(v, float):
        return str(v)
    if not math.isfinite(v):
        return "-"
    if v == 0 or not 1e-3 <= abs(v) < 1e6:
        return f"{v:.4g}"
    return f"{v:,.{max(0, 3 - math.floor(math.log10(abs(v))))}f}"


def _md_table(df: pd.DataFrame) -> str:
    cells = [[_fmt(v).replace("|", "/") for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def _interval_table(s: pd.DataFrame) -> pd.DataFrame:
    """Rows = measured metrics, columns = runs: "median [lo, hi]"."""
    ok = s[s.status == "ok"]
    names = ok.attention + (" r" + ok.repeat.astype(str) if "repeat" in ok and ok.repeat.nunique() > 1 else "")
    def cell(m, lo, hi):        # a constant (model size, FLOPs) has no interval to show
        return _fmt(m) if lo == hi == m else f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]"
    rows = {label(c): [cell(*v) for v in zip(ok[c], ok.get(c + "_lo", ok[c]), ok.get(c + "_hi", ok[c]))]
            for c in (m.column for m in METRICS) if plots.measured(s, c)}
    return pd.DataFrame(rows, index=list(names)).T.reset_index(names="metric (median [95% interval])")


def write_report(folder, plot_paths=None) -> Path:
    """folder/report.md: what ran where, the summary table, what was not measured and why, failed
    runs, all metrics with intervals per (model, seq_len), and every plot (relative links)."""
    r = load(folder)
    if plot_paths is None:          # the plots already drawn, else draw them (from the CSVs)
        plot_paths = sorted((r.folder / "plots").glob("*.png"), key=_plot_rank) or make_plots(folder)
    env, m = r.manifest.get("environment", {}), r.manifest
    gpu = f"{env['gpu']} (driver {env.get('driver')}, CUDA {env.get('cuda')})" if env.get("gpu") else "none"
    md = [f"# attention-bench: {m.get('preset', '?')}, {r.folder.name}", "",
          f"- created {m.get('created')}, finished {m.get('finished') or 'not finished'}; git {m.get('git_commit')}"
          + (f" (code that ran: {timing.commits(m['code_commits'])})" if m.get("code_commits") else ""),
          f"- GPU {gpu}; "
          f"CPU {env.get('cpu')} x{env.get('cpu_count')}; torch {env.get('torch')}, "
          f"transformers {env.get('transformers')}", "", "## Summary (medians over measured batches)", "",
          _md_table(summary_table(r)), ""]
    md += ["## Not measured on this machine", ""] + ([f"- {label(c)}: {why}" for c, why in not_measured(r).items()]
                                                     or ["everything was measured"])
    md += ["", "## Runs without a result", ""] + ([f"- {x}" for x in failures(r)] or ["none"])
    table = timing.timing_table(r.manifest)
    if len(table):
        md += ["", "## Where the time went", "", timing.sweep_time(m) or "(a resumed sweep: see each run's wall time)",
               "", _md_table(table)]
    for (model, T), g in r.summary.groupby(["model", "seq_len"], sort=False):
        if (g.status == "ok").any():
            md += ["", f"## {model}, seq_len {T}: all metrics", "", _md_table(_interval_table(g))]
    md += ["", "## Plots", ""] + [f"![{p.stem}](plots/{Path(p).name})\n" for p in plot_paths]
    path = r.folder / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(md) + "\n")
    tmp.replace(path)                  # atomic: a reader never sees half a report
    return path


def show(n=1, root="results", all_plots: bool = False) -> None:
    """Print the n-th latest result (or the folder n) and show its plots, from its files alone.
    On a first visit (no results yet) say how to make one instead of raising."""
    try:
        folder = Path(n) if isinstance(n, (str, os.PathLike)) else latest(root, n)
    except NoResults as e:
        print(f"no results yet: run cell 4 (or `python main.py`) first. ({e})")
        return
    r = load(folder)
    env, m = r.manifest.get("environment", {}), r.manifest
    print(f"{folder}\n  preset {m.get('preset')}, created {m.get('created')}, "
          f"{'finished ' + str(m['finished']) if m.get('finished') else 'NOT finished'}; "
          f"GPU {env.get('gpu') or 'none'}; torch {env.get('torch')}; git {str(m.get('git_commit'))[:10]}")
    print("  runs: " + ", ".join(f"{v} {k}" for k, v in summary_table(r).status.value_counts().items()))
    if timing.sweep_time(m):
        print(f"  {timing.sweep_time(m)}")
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
    pngs = sorted((r.folder / "plots").glob("*.png"), key=_plot_rank) or make_plots(r.folder)  # from the CSVs
    display(images=pngs if all_plots else [p for p in pngs if p.stem in ("overview", "loss_curves")])
    print(f"all {len(pngs)} plots in {r.folder / 'plots'}; report: {r.folder / 'report.md'}")


def compare(folders=None, root="results", out=None, show: bool = True):
    """Result folders side by side as ratios to the first (compare.py; kept here as the notebook's
    and main.py's one entry point)."""
    import compare as _compare
    return _compare.compare(folders, root=root, out=out, show=show)
