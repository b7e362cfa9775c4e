"""Results folders as the reports read them: find them (newest first), load one (manifest,
summary, batches, samples) with a clear error for a damaged or foreign folder."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.store import read_csv

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
    evals: pd.DataFrame | None = None  # eval.csv: a row per held-out evaluation

    @property
    def data_source(self) -> str | None:
        """Where the runs' data came from (the manifest's data source), None if unrecorded."""
        return (self.manifest.get("data") or {}).get("source")

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


def read_folder_csv(path: Path, required: bool = True) -> pd.DataFrame | None:
    """The CSV at path (store.read_csv); an empty file is an empty frame (a sweep that has not
    finished a run); a missing one is None, or an error when required."""
    if not path.is_file():
        if required:
            raise UserError(f"{path}: missing; is this a finished attention-bench results folder?")
        return None
    try:
        return read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None


def load(folder, batches_optional: bool = False) -> Result:
    """Read one results folder. Bad or missing files raise UserError naming the file; with
    batches_optional, a folder kept without its batches.csv reads with no batches (show's view of
    a reference folder kept small: its summary stands alone)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder '{folder}' does not exist")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: no manifest.json; not an attention-bench results folder") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{folder / 'manifest.json'}: malformed JSON ({e})") from None
    summary = read_folder_csv(folder / "summary.csv", required=False)
    batches = read_folder_csv(folder / "batches.csv", required=summary is not None and not batches_optional)
    if batches is None and summary is not None:
        batches = pd.DataFrame(columns=["run_id", "phase", "step"])
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
    # one block per column read is "highly fragmented" to pandas, which warns at the next new column
    return Result(folder, manifest, batches.copy(), summary.copy(),
                  read_folder_csv(folder / "samples.csv", required=False),
                  read_folder_csv(folder / "eval.csv", required=False))
