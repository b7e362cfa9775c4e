"""A sweep: the plan of runs, each run in a fresh process, results that survive anything.

plan(cfg) orders runs models x seq_lens x attentions, repeated in interleaved order (A B C A B C)
so slow drift of the machine (clocks, thermals) does not favour one attention. Each run is a
child process (train.py) whose exit is recorded: ok, oom, nan, unavailable, timeout, error.
After each run its rows land atomically (results.py) and the manifest says what is done, so
`--resume DIR` reruns only runs that never finished and nothing is duplicated.
Scale-out: `shard` keeps 1/N of the plan and `run_all(gpus=[...])` runs children side by side,
one per GPU (scaleout.py); under torchrun `_child` is an in-process DDP run (distributed.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

import distributed
import launcher
import precompile
import results
import scaleout
from config import Config

ROOT = Path(__file__).resolve().parent


def plan(cfg: Config) -> list[dict]:
    runs = []
    for repeat in range(cfg.repeats):
        for m in cfg.models:
            for t in cfg.seq_lens:
                for a in cfg.attention_list():
                    runs.append(dict(model=m, attention=a, seq_len=t, batch_size=cfg.batch_size_for(t),
                                     repeat=repeat, status="pending", reason=""))
    for i, r in enumerate(runs):
        r["run_id"] = f"{i:03d}_{r['model']}_{r['attention']}_T{r['seq_len']}_r{r['repeat']}"
    return runs


def _git_commit() -> str:
    """HEAD, and whether the tracked files differ from it: a copied working tree (a remote GPU
    machine) can carry code that HEAD there does not have, and the manifest must not pretend."""
    try:
        p = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=ROOT, capture_output=True,
                           text=True, timeout=5)
        if p.returncode != 0 or not p.stdout.strip():
            return "unknown (no git history)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return p.stdout.strip() + (" + uncommitted changes" if dirty.returncode == 0 and dirty.stdout.strip()
                                   else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """Python, torch, transformers, CUDA, driver, GPU, power limit, CPU, memory: recorded with results."""
    import psutil
    import torch
    import transformers
    env = dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
               platform=platform.platform(), hostname=platform.node(), cpu=platform.processor() or platform.machine(),
               cpu_count=os.cpu_count(), memory_gb=psutil.virtual_memory().total / 1e9,
               cuda=torch.version.cuda, gpu_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
               gpu=None, driver=None, power_limit_w=None)
    if env["gpu_count"]:
        # NVML, through the metrics' own reader: torch.cuda.get_device_name would open a CUDA
        # context in this parent process, holding GPU memory for the whole sweep.
        from metrics.nvml import NvmlReader
        nvml = NvmlReader(0)
        if nvml.available:
            env.update(gpu=nvml.name, driver=nvml.driver, power_limit_w=nvml.power_limit_w)
        else:
            env.update(nvml_error=nvml.reason, gpu=torch.cuda.get_device_name(0))
    return env


def device_label(env: dict) -> str:
    if not env.get("gpu"):
        return "cpu"
    name = env["gpu"].lower().replace("nvidia", "").strip()
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").split("-")[0] or "gpu"


class Sweep:
    def __init__(self, folder: Path, cfg: Config, manifest: dict, log=print):
        self.folder, self.cfg, self.manifest, self.log = folder, cfg, manifest, log
        self.runs = manifest["runs"]
        self.progress = "lines"  # or "bar": one progress bar over the runs (the notebook's cell 4)

    @classmethod
    def create(cls, cfg: Config, log=print, shard: tuple[int, int] | None = None) -> "Sweep":
        root = results.check_writable(cfg.out)
        env = environment()
        name = cfg.preset + (f"_shard{shard[0]}of{shard[1]}" if shard else "")  # shards may share a root
        folder = results.new_folder(root, device_label(env), name)
        full = plan(cfg)
        manifest = dict(preset=cfg.preset, created=datetime.now().isoformat(timespec="seconds"), finished=None,
                        config=cfg.to_dict(), environment=env, git_commit=_git_commit(),
                        runs=scaleout.select_shard(full, shard), data={}, metrics={},
                        command=" ".join(sys.argv), shard=scaleout.shard_label(shard),
                        plan_size=len(full), plan_run_ids=[r["run_id"] for r in full])
        if not cfg.offline or cfg.init == "pretrained":
            manifest["data_note"] = "hub data/weights"
        results.write_json(folder / "manifest.json", manifest)
        return cls(folder, cfg, manifest, log)

    @classmethod
    def resume(cls, folder: str | Path, log=print) -> "Sweep":
        from harness.errors import UserError
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.exists():
            raise UserError(f"cannot resume {folder}: no manifest.json there (is it a results folder?)")
        manifest = json.loads(path.read_text())
        cfg = Config.from_dict(manifest["config"])
        sweep = cls(folder, cfg, manifest, log)
        done = {r["run_id"] for r in sweep.runs if r["status"] in results.FINAL}
        for name in ("batches.csv", "samples.csv"):  # rows of a run cut off between writes
            df = results.read_csv(folder / name)
            if len(df) and not df["run_id"].isin(done).all():
                results.write_csv(folder / name, df[df["run_id"].isin(done)])
        for r in sweep.runs:
            if r["status"] not in results.FINAL:
                r["status"] = "pending"
        manifest.setdefault("resumed", []).append(datetime.now().isoformat(timespec="seconds"))
        return sweep

    def save_data(self, batches: dict) -> None:
        """Tokenized batches, made once by the parent, read by every child before its timed loop."""
        import torch
        tmp = self.folder / ".runs"
        tmp.mkdir(exist_ok=True)
        for (t, b), (bat, stats) in batches.items():
            torch.save({"batches": bat, "stats": stats}, tmp / f"data_T{t}_B{b}.pt")
            self.manifest["data"] = stats

    def pending(self) -> list[dict]:
        return [r for r in self.runs if r["status"] not in results.FINAL]

    def run_all(self, gpus: list[int] | None = None) -> None:
        """Every pending run: one at a time, or with `gpus` side by side, one per GPU."""
        todo = self.pending()
        skipped = len(self.runs) - len(todo)
        if skipped:
            self.log(f"resuming: {skipped} of {len(self.runs)} runs already done, {len(todo)} to go")
        try:
            warmed = precompile.run_phase(self, todo, gpus)
            if warmed:
                self.manifest.setdefault("precompile", []).append(warmed)
                self.save()
            if gpus:
                scaleout.run_pool(self, todo, gpus, skipped)
            else:
                with self._progress(len(todo), skipped) as bar:
                    for i, run in enumerate(todo, 1):
                        self._run_one(run, f"[{skipped + i}/{len(self.runs)}]")
                        if bar is not None:
                            bar.update(1)
        except KeyboardInterrupt:
            self.save()
            self.log(f"\ninterrupted: finished runs are saved in {self.folder}\n"
                     f"resume with: python main.py --resume {self.folder}")
            raise
        self.manifest["finished"] = datetime.now().isoformat(timespec="seconds")
        self.save()
        for data in (self.folder / ".runs").glob("data_*.pt"):  # only a resume needs them
            data.unlink()

    @contextlib.contextmanager
    def _progress(self, todo: int, done: int):
        """progress "bar": one bar over the runs, redrawn in place (also in a notebook, which
        streams main.py's output); each run's own step lines go to .runs/<run_id>.log and one
        line per run is written above the bar."""
        if self.progress != "bar":
            yield None
            return
        from tqdm import tqdm
        bar = tqdm(total=done + todo, initial=done, unit="run", file=sys.stdout, dynamic_ncols=True,
                   desc=self.cfg.preset)
        log = self.log
        self.log = lambda *a, **k: bar.write(" ".join(map(str, a)), file=sys.stdout)
        try:
            yield bar
        finally:
            self.log = log
            bar.close()

    def _run_one(self, run: dict, tag: str) -> None:
        t0 = self._begin(run, tag)
        self._end(run, self._child(run), t0)

    def _begin(self, run: dict, tag: str) -> float:
        """Log the run, mark it running in the manifest; returns its start time."""
        self.log(f"{tag} {run['model']} {run['attention']} seq_len={run['seq_len']} "
                 f"batch={run['batch_size']} repeat={run['repeat']}", flush=True)
        run["status"] = "running"
        self.save()
        return time.perf_counter()

    def _end(self, run: dict, res: dict, t0: float, label: str | None = None) -> None:
        """Record a finished run's status and info, land its rows, log one line (named by label
        when runs finish out of the order they started in: the --gpus pool)."""
        run["wall_s"] = time.perf_counter() - t0
        run.update(status=res["status"], reason=res.get("reason", ""))
        if res.get("traceback"):
            run["traceback"] = res["traceback"]
        info = res.get("info") or {}
        for k in ("kernel", "energy_j_run", "joules_per_token_run", "idle_power_w", "compile_time_s",
                  "phases", "compile_cache",
                  "attention_params", "dtype", "flops_per_step", "palm_flops_per_token", "peak_tflops",
                  "world_size", "gpu_memory_mb_by_rank", "nvml_by_rank"):  # the last three: torchrun only
            if k in info:
                run[k] = info[k]
        if info.get("data"):
            self.manifest["data"] = info["data"]
        if info.get("metrics"):
            self.manifest["metrics"] = info["metrics"]
        self._land(run, res)
        self.log(self._result_line(run, res, label), flush=True)

    def _child(self, run: dict) -> dict:
        """Run in a fresh process; its exit, timeout or death becomes a status."""
        proc = self._launch(run, log_path=self._files(run)[2] if self.progress == "bar" else None)
        try:
            rc = proc.wait(timeout=self.cfg.timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(proc, kill=True)
            return self.timed_out()
        except KeyboardInterrupt:
            self.stop(proc)
            run["status"] = "pending"
            raise
        return self._collect(run, rc)

    def _files(self, run: dict, warm: bool = False) -> tuple[Path, Path, Path]:
        """(spec, result, log) of a run's process in .runs/; a precompile process has its own."""
        stem = self.folder / ".runs" / (run["run_id"] + (".warm" if warm else ""))
        return stem.with_name(stem.name + ".spec.json"), stem.with_name(stem.name + ".result.json"), \
            stem.with_name(stem.name + ".log")

    def _launch(self, run: dict, env_extra: dict | None = None, log_path: Path | None = None,
                warm: bool = False):
        """Start `python train.py SPEC RESULT` for one run; env_extra pins a GPU (the pool),
        log_path takes its output (side-by-side runs would interleave on the terminal), warm
        makes it a precompile process (train.warm)."""
        (self.folder / ".runs").mkdir(exist_ok=True)
        spec, out, _ = self._files(run, warm)
        out.unlink(missing_ok=True)
        data = self.folder / ".runs" / f"data_T{run['seq_len']}_B{run['batch_size']}.pt"
        results.write_json(spec, dict(config=self.cfg.to_dict(), run=run, warm=warm,
                                      data=str(data) if data.exists() else None))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
        if self.cfg.offline:
            env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        return launcher.launch(spec, out, env, log_path)

    def _collect(self, run: dict, rc: int, warm: bool = False) -> dict:
        """The result a finished child wrote, or an error status saying how it died."""
        spec, out, log = self._files(run, warm)
        if out.exists():
            res = json.loads(out.read_text())
            out.unlink()
            spec.unlink(missing_ok=True)
            return res
        why = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
        where = f"; its output is in {log}" if log.exists() else ""
        return dict(status="error", reason=f"run process died without a result ({why}){where}")

    def timed_out(self) -> dict:
        return dict(status="timeout", reason=f"no result within {self.cfg.timeout_s} s")

    @staticmethod
    def stop(proc, kill: bool = False) -> None:
        """Ctrl-C: SIGINT first so the child can exit cleanly, then SIGKILL; timeout: SIGKILL."""
        if not kill:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait()

    def _land(self, run: dict, res: dict) -> None:
        """Rows, samples, summary and manifest: each rewritten atomically, in that order."""
        rows = res.get("rows") or []
        batches = results.append_rows(self.folder / "batches.csv", rows, results.BATCH_COLUMNS,
                                      drop_run_ids=[run["run_id"]])
        samples = [dict(run_id=run["run_id"], **s) for s in res.get("samples") or []]
        if samples:
            results.append_rows(self.folder / "samples.csv", samples, drop_run_ids=[run["run_id"]])
        done = [r for r in self.runs if r["status"] in results.FINAL]
        results.write_csv(self.folder / "summary.csv", results.summarize(batches, done))
        self.save()

    def save(self) -> None:
        results.write_json(self.folder / "manifest.json", self.manifest)

    @staticmethod
    def _result_line(run: dict, res: dict, label: str | None = None) -> str:
        head = f"    -> {label}: " if label else "    -> "
        rows = res.get("rows") or []
        if rows and "rank" in rows[0]:  # torchrun: one row per rank per step -> global steps
            rows = distributed.global_steps(pd.DataFrame(rows)).to_dict("records")
        rows = [r for r in rows if r["phase"] == "measure"]
        if run["status"] != "ok" or not rows:
            return f"{head}{run['status']}: {run['reason']}"
        med = results.median_interval
        t = med([r["train_time_s"] for r in rows])[0]
        tps = med([r["tokens_per_s"] for r in rows])[0]
        loss = rows[-1]["loss"]
        return (f"{head}ok in {run['wall_s']:.1f} s: {t * 1e3:.1f} ms/step, {tps:,.0f} tokens/s, "
                f"loss {loss:.3f}, kernel {run.get('kernel', '?')}")
