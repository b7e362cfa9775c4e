"""`python main.py merge DIR...`: the shard folders of one sweep (--shard I/N, plan.py) joined
into one results folder.

run_ids keep their plan index, so merge unions shards by run_id (the first finished copy wins),
rebuilds batches.csv, samples.csv, eval.csv and summary.csv (a shard kept without its batches.csv
gives its own summary rows), and reports duplicates, runs no shard holds and runs no shard finished.
Shards of different sweeps are refused.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

from config import Config
from harness import store
from harness.errors import UserError
from harness.sweep.environment import device_label
from harness.sweep.plan import plan

def _manifests(folders) -> list[dict]:
    out = []
    for f in folders:
        path = Path(f) / "manifest.json"
        if not path.is_file():
            raise UserError(f"merge: {f} has no manifest.json (is it a results folder?)")
        out.append(json.loads(path.read_text()))
    return out


def _plan_ids(m: dict) -> list[str]:
    if "plan_run_ids" in m:
        return m["plan_run_ids"]
    return [r["run_id"] for r in plan(Config.from_dict(m["config"]))]


def _check_same_plan(folders, mans) -> None:
    ignore = ("out", "timeout_s")  # where results went and when to give up change no number
    cfg0 = {k: v for k, v in mans[0]["config"].items() if k not in ignore}
    for f, m in zip(folders[1:], mans[1:]):
        diff = sorted(k for k in set(cfg0) | set(m["config"]) if k not in ignore
                      and cfg0.get(k) != m["config"].get(k))
        if diff or _plan_ids(m) != _plan_ids(mans[0]):
            raise UserError(f"merge: {f} is not a shard of the same sweep as {folders[0]} "
                            f"(config differs in: {', '.join(diff) or 'the plan of runs'})")


def _union(folders, mans):
    """run_id -> (run, folder): the first finished copy wins; duplicates listed with their folders."""
    chosen, seen = {}, {}
    for f, m in zip(folders, mans):
        for run in m["runs"]:
            rid = run["run_id"]
            seen.setdefault(rid, []).append(str(f))
            if rid not in chosen or (chosen[rid][0]["status"] not in store.FINAL and run["status"] in store.FINAL):
                chosen[rid] = (run, str(f))
    dups = [dict(run_id=r, folders=fs, kept=chosen[r][1]) for r, fs in seen.items() if len(fs) > 1]
    return chosen, dups


def _rows(name: str, chosen: dict, order: dict):
    """name (batches.csv, samples.csv) of every shard, only each kept run's own rows, in plan order."""
    frames = []
    for f in dict.fromkeys(src for _, src in chosen.values()):
        df = store.read_csv(Path(f) / name)
        if len(df):
            frames.append(df[df["run_id"].map(lambda r: r in chosen and chosen[r][1] == f)])
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    return df.iloc[df["run_id"].map(order).argsort(kind="stable")].reset_index(drop=True)


def _kept_without_batches(chosen: dict, done: list[dict]) -> dict[str, pd.DataFrame]:
    """Shards kept without their batches.csv -> the summary rows of the finished runs merge takes
    from them. Refused (before anything is written) where such a shard's summary.csv lacks one."""
    kept = {}
    for f in dict.fromkeys(src for _, src in chosen.values()):
        ids = {r["run_id"] for r in done if chosen[r["run_id"]][1] == f}
        if ids and not (Path(f) / "batches.csv").is_file():
            rows = store.read_csv(Path(f) / "summary.csv")
            if not len(rows) or not ids <= set(rows["run_id"]):
                raise UserError(f"merge: {f} has no batches.csv and its summary.csv lacks runs it finished: "
                                "their numbers are not in the shard")
            kept[f] = rows[rows["run_id"].isin(ids)]
    return kept


def _summary(batches: pd.DataFrame, chosen: dict, order: dict, done: list[dict], kept: dict) -> pd.DataFrame:
    """One row per finished run, from the shards' batches; a shard kept without its batches.csv
    gives its own summary rows as they are (a run's row depends on its own batches alone)."""
    own = store.summarize(batches, [r for r in done if chosen[r["run_id"]][1] not in kept])
    if not kept:
        return own
    out = pd.concat([p for p in (own, *kept.values()) if len(p)], ignore_index=True)
    return out.iloc[out["run_id"].map(order).argsort(kind="stable")].reset_index(drop=True)


def _write(folder: Path, chosen: dict, order: dict, done: list[dict], kept: dict) -> None:
    """batches.csv, samples.csv, eval.csv and summary.csv of the merged folder, each written atomically."""
    batches = _rows("batches.csv", chosen, order)
    store.write_csv(folder / "batches.csv", batches)
    for name in ("samples.csv", "eval.csv"):
        rows = _rows(name, chosen, order)
        if len(rows):
            store.write_csv(folder / name, rows)
    store.write_csv(folder / "summary.csv", _summary(batches, chosen, order, done, kept))


def _commit(mans: list[dict]) -> str:
    commits = sorted({str(m.get("git_commit")) for m in mans})
    return commits[0] if len(commits) == 1 else "shards ran different commits: " + ", ".join(commits)


def merge(folders: list[str], out: str | None = None, log=print) -> Path:
    """Join shard folders into one results folder; duplicates and missing runs are reported."""
    mans = _manifests(folders)
    _check_same_plan(folders, mans)
    plan_ids = _plan_ids(mans[0])
    chosen, dups = _union(folders, mans)
    runs = [chosen[r][0] for r in plan_ids if r in chosen]
    done = [r for r in runs if r["status"] in store.FINAL]
    report = dict(sources=[str(f) for f in folders], plan_size=len(plan_ids), duplicates=dups,
                  missing=[r for r in plan_ids if r not in chosen],
                  unfinished=[r["run_id"] for r in runs if r["status"] not in store.FINAL],
                  gpus=sorted({str(m.get("environment", {}).get("gpu")) for m in mans}))
    kept = _kept_without_batches(chosen, done)
    root = store.check_writable(out or Path(folders[0]).resolve().parent)
    folder = store.new_folder(root, device_label(mans[0].get("environment", {})), mans[0]["preset"])
    _write(folder, chosen, {r: i for i, r in enumerate(plan_ids)}, done, kept)
    now = datetime.now().isoformat(timespec="seconds")
    complete = not (report["missing"] or report["unfinished"])
    report["shard_times"] = {str(f): dict(created=m.get("created"), finished=m.get("finished"))
                             for f, m in zip(folders, mans)}
    store.write_json(folder / "manifest.json", dict(
        mans[0], created=now, finished=now if complete else None, runs=runs, shard=None, merge=report,
        command=" ".join(sys.argv), environments={str(f): m.get("environment") for f, m in zip(folders, mans)},
        precompile=[pc for m in mans for pc in m.get("precompile", [])],
        overlap=[ov for m in mans for ov in m.get("overlap", [])], git_commit=_commit(mans)))
    log(f"merged {len(folders)} folders: {len(done)} of {len(plan_ids)} runs finished -> {folder}")
    for what, ids in (("duplicates (first finished copy kept)", [d["run_id"] for d in dups]),
                      ("missing (in the plan, in no shard)", report["missing"]),
                      ("unfinished (resume that shard)", report["unfinished"])):
        if ids:
            log(f"  {what}: {', '.join(ids)}")
    for f, rows in kept.items():
        log(f"  {f} has no batches.csv: the summary rows of its {len(rows)} runs are taken as they are "
            "(the merged batches.csv has none of their rows)")
    if len(report["gpus"]) > 1:
        log(f"  note: shards ran on different GPUs ({', '.join(report['gpus'])}): compare them with care")
    return folder
