"""The results folder: created once, written atomically, readable at any moment.

results/<timestamp>_<device>_<preset>/
  manifest.json  batches.csv  summary.csv  samples.csv  plots/  report.md
Every file is written to a temporary name and renamed (os.replace is atomic on POSIX), so a
sweep killed at any moment leaves files that parse, and each run's rows land only when it ends.
JSON is strict (a NaN or infinity is written as null, which every JSON reader accepts); CSVs
write a missing number as an empty field. The sweep writes here, the reports read; this module
imports neither.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import datetime
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from metrics.caveats import caveats
from metrics.catalog import BY_COLUMN, ID_COLUMNS, METRICS, QUALITY_COLUMNS

# Our CSVs write a missing number as an empty field; text such as the status "nan" (a run whose
# loss went NaN) must stay text, so only empty fields read as NaN.
CSV_READ = dict(keep_default_na=False, na_values=[""])
FINAL = {"ok", "oom", "nan", "unavailable", "timeout", "error"}  # a run in any of these is done
FLAG_COLUMNS = [m.column for m in QUALITY_COLUMNS]
BATCH_COLUMNS = ID_COLUMNS + [m.column for m in METRICS] + FLAG_COLUMNS
# A run's own numbers (manifest entry -> summary.csv, NaN when absent): energy, compile, FLOP
# cross-check, memory estimate, and its held-out quality and budget (harness/run/evaluate.py).
RUN_NUMBERS = ("energy_j_run", "joules_per_token_run", "idle_power_w", "compile_time_s", "wall_s",
               "flops_forward", "flops_fvcore_forward", "memory_estimate_gb", "eval_loss", "eval_ppl",
               "eval_accuracy", "recall_accuracy", "eval_labelled", "eval_loss_start", "train_tokens",
               "train_s_total", "energy_j_total")


def atomic_write(path: Path, write) -> None:
    """write(f) into a temporary file beside path, then rename it over path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for reading by anyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict(obj):
    """obj with every NaN and infinity replaced by None (JSON null), in dicts, lists and tuples."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def nan_for_null(records: list[dict]) -> list[dict]:
    """Rows read back from strict JSON: a null value is the NaN that was written."""
    return [{k: math.nan if v is None else v for k, v in r.items()} for r in records]


def write_json(path: Path, obj) -> None:
    atomic_write(Path(path), lambda f: json.dump(strict(obj), f, indent=2, default=str, allow_nan=False))


def write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda f: f.write(text))


def write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write(Path(path), lambda f: df.to_csv(f, index=False))


def read_csv(path: Path) -> pd.DataFrame:
    """The one CSV reader: a missing or empty file is an empty frame; only empty fields are NaN
    (the status "nan" stays text), and reason / kernel / caveats are always text."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(path, dtype={"reason": str, "kernel": str, "caveats": str}, **CSV_READ)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def check_writable(root: str | Path) -> Path:
    """The results root exists (or can be made) and takes a file; else a UserError naming it."""
    root = Path(root)
    if str(root).startswith("/content/drive") and not Path("/content/drive/MyDrive").exists():
        raise UserError(f"results folder {root} is on Google Drive, but Drive is not mounted: "
                        "run the notebook's first cell (drive.mount)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
    except OSError as e:
        raise UserError(f"results folder {root} is not writable: {e.strerror or e}") from None
    return root


def new_folder(root: str | Path, device_label: str, preset: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}_{device_label}_{preset}"
    folder, i = base, 1
    while folder.exists():  # two sweeps in the same second
        folder, i = Path(f"{base}-{i}"), i + 1
    folder.mkdir(parents=True)
    return folder


def append_rows(path: Path, rows: list[dict], columns: list[str] | None = None,
                drop_run_ids=()) -> pd.DataFrame:
    """Old rows (minus drop_run_ids) + new rows, rewritten atomically."""
    old = read_csv(path)
    if len(old) and drop_run_ids:
        old = old[~old["run_id"].isin(list(drop_run_ids))]
    if not rows:  # a failed run adds nothing (concat with an empty frame would turn ints to floats)
        if not len(old.columns):
            old = pd.DataFrame(columns=columns or ["run_id"])
        write_csv(path, old)
        return old
    new = pd.DataFrame(rows)
    if columns:
        new = new.reindex(columns=columns + [c for c in new.columns if c not in columns])
    df = pd.concat([old, new], ignore_index=True) if len(old) else new
    write_csv(path, df)
    return df


def median_interval(values) -> tuple[float, float, float]:
    """Median and a distribution-free 95% confidence interval of the median, from order
    statistics (binomial, Conover 1999); with fewer than 6 values the interval is [min, max]."""
    v = sorted(x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x)))
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan
    med = float(pd.Series(v).median())
    if n < 6:
        return med, float(v[0]), float(v[-1])
    k = int(math.floor((n - 1.96 * math.sqrt(n)) / 2))  # lower rank, 0-based
    k = max(0, min(k, n - 1))
    return med, float(v[k]), float(v[n - 1 - k])


def _total(values) -> float:
    """Sum, or NaN if any value is missing: never a partial total."""
    values = list(values)
    return float(sum(values)) if values and all(v == v for v in values) else math.nan


def _run_value(m, meas: pd.DataFrame, vals: list) -> float:
    if m.agg == "last":
        return float(vals[-1]) if vals else math.nan
    if m.agg == "sum":
        return _total(vals)
    num, den = (_total(meas[c]) if c in meas else math.nan for c in m.of)
    return num / den if den else math.nan


def summarize(batches: pd.DataFrame, runs: list[dict]) -> pd.DataFrame:
    """One row per run: identity, status, and median + 95% interval of each metric."""
    batches = global_steps(batches)  # torchrun: one row per rank per step -> one per global step
    out = []
    for run in runs:
        row = {k: run.get(k) for k in ("run_id", "model", "attention", "kernel", "seq_len", "batch_size",
                                       "repeat", "seed", "n_pairs", "status", "reason")}
        meas = batches[(batches["run_id"] == run["run_id"]) & (batches["phase"] == "measure")] \
            if len(batches) else pd.DataFrame()
        row["n_measured"] = len(meas)
        for m in METRICS:
            vals = meas[m.column].tolist() if m.column in meas else []
            if m.agg in ("last", "sum", "ratio"):  # one value per run, no interval
                row[m.column] = _run_value(m, meas, vals)
                row[f"{m.column}_lo"] = row[f"{m.column}_hi"] = row[m.column]
            else:
                row[m.column], row[f"{m.column}_lo"], row[f"{m.column}_hi"] = median_interval(vals)
        for k in RUN_NUMBERS:
            row[k] = math.nan if run.get(k) is None else run[k]
        flags = meas["energy_flag"].tolist() if "energy_flag" in meas else []
        row["caveats"] = "; ".join(caveats(row, run, flags)) if run.get("status") == "ok" else ""
        for k in ("world_size", "gpu"):  # torchrun / --gpus runs only: which ranks or GPU made the row
            if any(k in r for r in runs):
                row[k] = run.get(k)
        out.append(row)
    return pd.DataFrame(out)


def global_steps(batches: pd.DataFrame) -> pd.DataFrame:
    """batches.csv rows with a `rank` column -> one row per (run, step), each column combined by
    its catalog rule across ranks (Metric.ranks); throughput = global tokens / slowest time."""
    if batches.empty or "rank" not in batches.columns:
        return batches
    w = int(batches["rank"].nunique())
    g = batches.groupby(["run_id", "step"], sort=False)
    out = g.first()  # identity columns, loss (already the global loss on every rank), flags
    for rule in ("sum", "max", "mean"):
        cols = [c for c in batches.columns if c in BY_COLUMN and BY_COLUMN[c].ranks == rule]
        if cols:  # a sum is NaN unless every rank measured it, never 0
            out[cols] = g[cols].sum(min_count=w) if rule == "sum" else getattr(g[cols], rule)()
    t = out["train_time_s"]
    out["tokens_per_s"] = out["tokens"] / t
    out["tflops_per_s"] = out["flops"] / t / 1e12
    out["joules_per_token"] = out["energy_j"] / out["tokens"]
    if "mfu" in batches:  # each rank's achieved FLOP/s over the slowest step, averaged over GPUs
        out["mfu"] = (batches["mfu"] * batches["train_time_s"]).groupby(
            [batches["run_id"], batches["step"]], sort=False).sum(min_count=w) / (w * t)
    out = out.reset_index().drop(columns="rank")
    return out[[c for c in batches.columns if c in out] + [c for c in out if c not in batches.columns]]
