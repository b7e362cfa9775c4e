"""Scale-out of a sweep without torchrun: a pool of pinned child processes over the GPUs of one
host (--gpus), and deterministic shards of the plan for many hosts (--shard I/N), joined by
`python main.py merge`. torchrun / DDP for one configuration is distributed.py.

--gpus: each pending run is a fresh `train.py` child with CUDA_VISIBLE_DEVICES=<gpu> (cuda:0
  inside; metrics/nvml.py finds its board by UUID), scheduled onto the next free GPU. Only the
  parent writes results, one run at a time, so rows land atomically exactly as in the serial
  path, with the same statuses, timeouts, Ctrl-C and resume. Runs side by side share the host's
  CPUs, PCIe and power budget: the serial path stays the cleanest measurement.
--shard I/N: run index % N == I-1 over the full plan (a Slurm job array, Ray or Kubernetes job
  runs each shard). run_ids keep their plan index, so `merge` unions shards by run_id, rebuilds
  batches.csv/samples.csv/summary.csv, and reports duplicates and runs no shard finished.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from distributed import launched
from harness.errors import UserError

# -- shards of a sweep, and merge -----------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard: expected I/N such as 2/3, got {text!r}") from None
    if not 1 <= i <= n:
        raise UserError(f"--shard {text}: I must be from 1 to N (shards are numbered 1..N)")
    return i, n


def shard_label(shard) -> str | None:
    return f"{shard[0]}/{shard[1]}" if shard else None


def select_shard(runs: list[dict], shard) -> list[dict]:
    """Runs whose index in the full plan is I-1 mod N: shards 1..N cover the plan exactly once."""
    return runs if not shard else [r for i, r in enumerate(runs) if i % shard[1] == shard[0] - 1]


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
    from config import Config
    from sweep import plan
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
    from results import FINAL
    chosen, seen = {}, {}
    for f, m in zip(folders, mans):
        for run in m["runs"]:
            rid = run["run_id"]
            seen.setdefault(rid, []).append(str(f))
            if rid not in chosen or (chosen[rid][0]["status"] not in FINAL and run["status"] in FINAL):
                chosen[rid] = (run, str(f))
    dups = [dict(run_id=r, folders=fs, kept=chosen[r][1]) for r, fs in seen.items() if len(fs) > 1]
    return chosen, dups


def _rows(name: str, chosen: dict, order: dict):
    """name (batches.csv, samples.csv) of every shard, only each kept run's own rows, in plan order."""
    import pandas as pd
    import results
    frames = []
    for f in dict.fromkeys(src for _, src in chosen.values()):
        df = results.read_csv(Path(f) / name)
        if len(df):
            frames.append(df[df["run_id"].map(lambda r: r in chosen and chosen[r][1] == f)])
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    return df.iloc[df["run_id"].map(order).argsort(kind="stable")].reset_index(drop=True)


def _write(folder: Path, chosen: dict, order: dict, done: list[dict]) -> None:
    """batches.csv, samples.csv and summary.csv of the merged folder, each written atomically."""
    import results
    batches = _rows("batches.csv", chosen, order)
    results.write_csv(folder / "batches.csv", batches)
    samples = _rows("samples.csv", chosen, order)
    if len(samples):
        results.write_csv(folder / "samples.csv", samples)
    results.write_csv(folder / "summary.csv", results.summarize(batches, done))


def _commit(mans: list[dict]) -> str:
    commits = sorted({str(m.get("git_commit")) for m in mans})
    return commits[0] if len(commits) == 1 else "shards ran different commits: " + ", ".join(commits)


def merge(folders: list[str], out: str | None = None, log=print) -> Path:
    """Join shard folders into one results folder; duplicates and missing runs are reported."""
    import results
    from sweep import device_label
    mans = _manifests(folders)
    _check_same_plan(folders, mans)
    plan_ids = _plan_ids(mans[0])
    chosen, dups = _union(folders, mans)
    runs = [chosen[r][0] for r in plan_ids if r in chosen]
    done = [r for r in runs if r["status"] in results.FINAL]
    report = dict(sources=[str(f) for f in folders], plan_size=len(plan_ids), duplicates=dups,
                  missing=[r for r in plan_ids if r not in chosen],
                  unfinished=[r["run_id"] for r in runs if r["status"] not in results.FINAL],
                  gpus=sorted({str(m.get("environment", {}).get("gpu")) for m in mans}))
    root = results.check_writable(out or Path(folders[0]).resolve().parent)
    folder = results.new_folder(root, device_label(mans[0].get("environment", {})), mans[0]["preset"])
    _write(folder, chosen, {r: i for i, r in enumerate(plan_ids)}, done)
    now = datetime.now().isoformat(timespec="seconds")
    complete = not (report["missing"] or report["unfinished"])
    report["shard_times"] = {str(f): dict(created=m.get("created"), finished=m.get("finished"))
                             for f, m in zip(folders, mans)}
    results.write_json(folder / "manifest.json", dict(
        mans[0], created=now, finished=now if complete else None, runs=runs, shard=None, merge=report,
        command=" ".join(sys.argv), environments={str(f): m.get("environment") for f, m in zip(folders, mans)},
        precompile=[pc for m in mans for pc in m.get("precompile", [])], git_commit=_commit(mans)))
    log(f"merged {len(folders)} folders: {len(done)} of {len(plan_ids)} runs finished -> {folder}")
    for what, ids in (("duplicates (first finished copy kept)", [d["run_id"] for d in dups]),
                      ("missing (in the plan, in no shard)", report["missing"]),
                      ("unfinished (resume that shard)", report["unfinished"])):
        if ids:
            log(f"  {what}: {', '.join(ids)}")
    if len(report["gpus"]) > 1:
        log(f"  note: shards ran on different GPUs ({', '.join(report['gpus'])}): compare them with care")
    return folder


# -- a sweep over the GPUs of one host ------------------------------------------------------------


def parse_gpus(text: str, device: str) -> list[int]:
    """--gpus all|0,1,...: GPU indices as torch counts them (nvidia-smi's under PCI_BUS_ID order)."""
    import torch
    if launched():
        raise UserError("--gpus is for independent runs side by side; under torchrun each process "
                        "already has its GPU (LOCAL_RANK): drop --gpus")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UserError(f"--gpus {text}: no CUDA GPUs on this machine (torch {torch.__version__} sees none); "
                        "run without --gpus")
    if device not in ("auto", "cuda"):
        raise UserError(f"--gpus pins each run to one GPU (cuda:0 inside the run): the device must be "
                        f"auto or cuda, not {device!r}")
    try:
        gpus = list(range(count)) if text == "all" else [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        gpus = []
    if not gpus or len(set(gpus)) != len(gpus) or not all(0 <= g < count for g in gpus):
        raise UserError(f"--gpus {text}: give 'all' or distinct GPU indices from 0 to {count - 1}")
    return gpus


def pin_env(gpu: int) -> dict:
    """The child's environment for GPU `gpu`: one visible device. An index into the parent's own
    CUDA_VISIBLE_DEVICES if it has one; PCI bus order (nvidia-smi's) unless the user chose one."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return {"CUDA_VISIBLE_DEVICES": visible[gpu] if visible else str(gpu),
            "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")}


def poll_child(sweep, run: dict, proc, t0: float, warm: bool = False) -> dict | None:
    """A finished child's result, a timeout status, or None while it runs (warm: a precompile
    process, precompile.py)."""
    rc = proc.poll()
    if rc is not None:
        return sweep._collect(run, rc, warm=warm)
    if sweep.cfg.timeout_s is not None and time.perf_counter() - t0 > sweep.cfg.timeout_s:
        sweep.stop(proc, kill=True)
        return sweep.timed_out()
    return None


def _interrupt(active: dict) -> None:
    """Ctrl-C: SIGINT every child at once, then wait (or kill); their runs go back to pending."""
    for run, proc, _ in active.values():
        proc.send_signal(signal.SIGINT)
        run["status"] = "pending"
    for _, proc, _ in active.values():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_pool(sweep, todo: list[dict], gpus: list[int], first: int = 0, launch=None, poll_s: float = 0.1):
    """Independent runs side by side, one per GPU, each landed by this (the only writing) process
    as it finishes. launch(run, gpu) -> a Popen-like object (poll, wait, kill, send_signal)."""
    if launch is None:
        def launch(run, gpu):
            return sweep._launch(run, pin_env(gpu), log_path=sweep._files(run)[2])
    queue, free, active, n = list(todo), list(gpus), {}, first
    try:
        while queue or active:
            while queue and free:
                gpu, run = free.pop(0), queue.pop(0)
                n += 1
                run.update(gpu=gpu, cuda_visible_devices=pin_env(gpu)["CUDA_VISIBLE_DEVICES"])
                t0 = sweep._begin(run, f"[{n}/{len(sweep.runs)} gpu {gpu}]")
                active[gpu] = (run, launch(run, gpu), t0)
            for gpu in list(active):
                res = poll_child(sweep, *active[gpu])
                if res is not None:
                    run, _, t0 = active.pop(gpu)
                    # the pool finishes runs out of order: the line says which one ended
                    sweep._end(run, res, t0, label=f"[gpu {gpu}] {run['model']} {run['attention']} "
                                                   f"seq_len={run['seq_len']} repeat={run['repeat']}")
                    free.append(gpu)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        _interrupt(active)
        for run in sweep.runs:  # started but not landed (its launch may have been interrupted too)
            if run["status"] == "running":
                run["status"] = "pending"
        raise
