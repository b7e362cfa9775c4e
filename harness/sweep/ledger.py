"""The sweep ledger: a results folder's manifest of runs, kept true at every moment.

A sweep is created (folder, environment, plan) or resumed; a launcher (launchers.py) runs its
pending runs and tells the ledger when each begins and ends. When a run ends its rows land
atomically (harness/store.py) and the manifest says what is done, so `--resume DIR` reruns only
runs that never finished and nothing is duplicated. Statuses: ok, oom, nan, unavailable,
timeout, error (final), and pending, running, interrupted (run again on resume).
"""
from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

from config import Config
from harness import store
from harness.errors import Interrupted, Terminated, UserError
from harness.sweep.environment import device_label, environment, git_commit
from harness.sweep.plan import plan, run_tags, select_shard, shard_label

# What a finished run's result info puts into its manifest entry (the last three: torchrun only).
RUN_INFO = ("kernel", "energy_j_run", "joules_per_token_run", "idle_power_w", "compile_time_s", "phases",
            "compile_cache", "attention_params", "dtype", "flops_per_step", "palm_flops_per_token",
            "peak_tflops", "flops_forward", "flops_fvcore_forward", "flops_fvcore_reason", "fvcore_s",
            "compile_backend", "device", "other_gpu_processes", "emulated_capability", "eval_loss", "eval_ppl",
            "eval_accuracy", "recall_accuracy", "eval_labelled", "eval_loss_start", "train_tokens", "train_s_total",
            "energy_j_total",
            "world_size", "gpu_memory_mb_by_rank", "nvml_by_rank")


def now() -> str:
    return datetime.now().isoformat(timespec="seconds")


class Sweep:
    def __init__(self, folder: Path, cfg: Config, manifest: dict, log=print):
        self.folder, self.cfg, self.manifest, self.log = Path(folder), cfg, manifest, log
        self.runs = manifest["runs"]

    @classmethod
    def create(cls, cfg: Config, log=print, shard: tuple[int, int] | None = None) -> "Sweep":
        root = store.check_writable(cfg.out)
        env = environment()
        name = cfg.preset + (f"_shard{shard[0]}of{shard[1]}" if shard else "")  # shards may share a root
        folder = store.new_folder(root, device_label(env), name)
        full = plan(cfg)
        manifest = dict(preset=cfg.preset, created=now(), finished=None, config=cfg.to_dict(), environment=env,
                        git_commit=git_commit(), runs=select_shard(full, shard), data={}, metrics={},
                        command=" ".join(sys.argv), shard=shard_label(shard), plan_size=len(full),
                        plan_run_ids=[r["run_id"] for r in full])
        if not cfg.offline or cfg.init == "pretrained":
            manifest["data_note"] = "hub data/weights"
        store.write_json(folder / "manifest.json", manifest)
        return cls(folder, cfg, manifest, log)

    @classmethod
    def resume(cls, folder: str | Path, log=print) -> "Sweep":
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.exists():
            raise UserError(f"cannot resume {folder}: no manifest.json there (is it a results folder?)")
        manifest = json.loads(path.read_text())
        sweep = cls(folder, Config.from_dict(manifest["config"]), manifest, log)
        done = {r["run_id"] for r in sweep.runs if r["status"] in store.FINAL}
        for name in ("batches.csv", "samples.csv", "eval.csv"):  # rows of a run cut off between writes
            df = store.read_csv(folder / name)
            if len(df) and not df["run_id"].isin(done).all():
                store.write_csv(folder / name, df[df["run_id"].isin(done)])
        for r in sweep.runs:
            if r["status"] not in store.FINAL:
                r["status"] = "pending"
        manifest.setdefault("resumed", []).append(now())
        return sweep

    def save_data(self, batches: dict) -> None:
        """Tokenized batches, made once by the parent, read by every child before its timed loop."""
        import torch
        tmp = self.folder / ".runs"
        tmp.mkdir(exist_ok=True)
        for key, made in batches.items():
            torch.save(made, tmp / f"data_{key}.pt")
            self.manifest["data"] = made["stats"]

    def pending(self) -> list[dict]:
        return [r for r in self.runs if r["status"] not in store.FINAL]

    def run_all(self, launcher) -> None:
        """Every pending run, through the launcher (one at a time, a GPU pool, or torchrun's ranks).
        Ctrl-C or SIGTERM marks the runs in flight `interrupted`, saves, and raises Interrupted."""
        todo = self.pending()
        skipped = len(self.runs) - len(todo)
        if skipped:
            self.log(f"resuming: {skipped} of {len(self.runs)} runs already done, {len(todo)} to go")
        try:
            launcher.run(self, todo, skipped)
        except KeyboardInterrupt as e:  # Terminated (SIGTERM) too
            for run in self.runs:
                if run["status"] == "running":
                    run.update(status="interrupted", reason="the sweep was interrupted during this run")
            self.save()
            raise Interrupted(self.folder, 143 if isinstance(e, Terminated) else 130) from None
        self.manifest["finished"] = now()
        self.save()
        for data in (self.folder / ".runs").glob("data_*.pt"):  # only a resume needs them
            data.unlink()

    def begin(self, run: dict, tag: str) -> float:
        """Log the run, mark it running in the manifest; returns its start time."""
        self.log(f"{tag} {run['model']} {run['attention']} seq_len={run['seq_len']} "
                 f"batch={run['batch_size']}{run_tags(run)}", flush=True)
        run["status"] = "running"
        self.save()
        return time.perf_counter()

    def end(self, run: dict, res: dict, t0: float, label: str | None = None) -> None:
        """Record a finished run's status and info, land its rows, log one line (named by label
        when runs finish out of the order they started in: the GPU pool)."""
        run["wall_s"] = time.perf_counter() - t0
        run.update(status=res["status"], reason=res.get("reason", ""))
        if res.get("traceback"):
            run["traceback"] = res["traceback"]
        info = res.get("info") or {}
        run.update({k: info[k] for k in RUN_INFO if k in info})
        for key in ("data", "metrics"):
            if info.get(key):
                self.manifest[key] = info[key]
        self.land(run, res)
        self.log(self.result_line(run, res, label), flush=True)

    def land(self, run: dict, res: dict) -> None:
        """Rows, samples, summary and manifest: each rewritten atomically, in that order."""
        batches = store.append_rows(self.folder / "batches.csv", res.get("rows") or [], store.BATCH_COLUMNS,
                                    drop_run_ids=[run["run_id"]])
        samples = [dict(run_id=run["run_id"], **s) for s in res.get("samples") or []]
        if samples:
            store.append_rows(self.folder / "samples.csv", samples, drop_run_ids=[run["run_id"]])
        if res.get("evals"):
            store.append_rows(self.folder / "eval.csv", res["evals"], drop_run_ids=[run["run_id"]])
        done = [r for r in self.runs if r["status"] in store.FINAL]
        store.write_csv(self.folder / "summary.csv", store.summarize(batches, done))
        self.save()

    def save(self) -> None:
        store.write_json(self.folder / "manifest.json", self.manifest)

    @staticmethod
    def result_line(run: dict, res: dict, label: str | None = None) -> str:
        import pandas as pd
        head = f"    -> {label}: " if label else "    -> "
        rows = res.get("rows") or []
        if rows and "rank" in rows[0]:  # torchrun: one row per rank per step -> global steps
            rows = store.global_steps(pd.DataFrame(rows)).to_dict("records")
        rows = [r for r in rows if r["phase"] == "measure"]
        if run["status"] != "ok" or not rows:
            return f"{head}{run['status']}: {run['reason']}"
        t = store.median_interval([r["train_time_s"] for r in rows])[0]
        tps = store.median_interval([r["tokens_per_s"] for r in rows])[0]
        loss = rows[-1]["loss"]
        loss_text = f"{loss:.3f}" if math.isfinite(loss) else "-"
        return (f"{head}ok in {run['wall_s']:.1f} s: {t * 1e3:.1f} ms/step, {tps:,.0f} tokens/s, "
                f"loss {loss_text}, kernel {run.get('kernel', '?')}")
