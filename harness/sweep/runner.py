"""A sweep from a config: tokenize once, create (or resume) the ledger, pick the launcher, run.

Bad input fails before anything is written: the config is validated, the data tokenized and the
GPUs checked before the results folder exists. The caller (main.py) writes the report after.
"""
from __future__ import annotations

import time
from pathlib import Path

from config import Config
from harness.errors import UserError
from harness.run import ddp
from harness.run.batches import data_key, run_data
from harness.run.data import describe
from harness.run.tokenizer import get_tokenizer
from harness.sweep import memory_plan, torchrun
from harness.sweep.launchers import GpuPool, OneAtATime, parse_gpus
from harness.sweep.ledger import Sweep
from harness.sweep.plan import plan, select_shard, shard_label


def prepare_data(cfg: Config, runs: list[dict]) -> dict:
    """Tokenize (or generate) once in the parent, before anything is written: a bad dataset fails
    here. {data_key: run_data}: the training and held-out batches of each shape."""
    tok = get_tokenizer(cfg.offline) if cfg.task == "lm" else None
    first = {data_key(r): r for r in reversed(runs)}
    made = {key: run_data(cfg, tok, run) for key, run in sorted(first.items())}
    for key, d in made.items():
        run = first[key]
        held = f"; held out: {d['eval_stats']['tokens']:,} tokens" if d["eval"] else ""
        pairs = f" pairs={run['n_pairs']}" if run.get("n_pairs") else ""
        print(f"T={run['seq_len']} batch={run['batch_size']}{pairs}: {describe(d['stats'])}{held}", flush=True)
    return made


def run_sweep(cfg: Config | None, resume: str | None = None, shard=None, gpus: str | None = None,
              progress: str = "lines", launcher=None) -> Path | None:
    """Run (or resume) a sweep; returns its results folder, or None when there was nothing to do
    (an empty shard; a torchrun rank other than 0). launcher: the one to use instead of the one
    the arguments choose (a test's in-process launcher)."""
    if resume and shard:
        raise UserError("--shard is fixed when a sweep is created; --resume DIR continues that shard")
    if ddp.launched():  # torchrun: every rank trains, rank 0 writes
        if gpus:
            parse_gpus(gpus, "cuda")  # the error that says why not
        return torchrun.ddp_sweep(cfg, resume, shard, prepare_data)
    if resume:
        sweep = Sweep.resume(resume)
        cfg = sweep.cfg
        gpu_list = parse_gpus(gpus, cfg.device) if gpus else None
        batches = prepare_data(cfg, sweep.pending())
    else:
        gpu_list = parse_gpus(gpus, cfg.device) if gpus else None
        cfg, batch_auto = memory_plan.resolve_batch(cfg)
        runs = select_shard(plan(cfg), shard)
        if not runs:
            print(f"shard {shard_label(shard)} holds no run of this {len(plan(cfg))}-run plan: nothing to do")
            return None
        batches = prepare_data(cfg, runs)
        sweep = Sweep.create(cfg, shard=shard)
        if batch_auto:
            sweep.manifest["batch_auto"] = batch_auto
            print(f"batch_size auto: {batch_auto['batch_size']} ({batch_auto['why']})")
    refuse_hopeless(sweep)
    sweep.save_data(batches)
    if gpu_list:
        sweep.manifest["gpus"] = gpu_list
    n = len(sweep.runs)
    print(f"attention-bench: preset {cfg.preset}, {n} run{'s' if n != 1 else ''} -> {sweep.folder}", flush=True)
    warn_cpu(cfg)
    sweep.run_all(launcher or (GpuPool(gpu_list) if gpu_list else OneAtATime(progress)))
    return sweep.folder


def refuse_hopeless(sweep: Sweep) -> None:
    """Each pending run's memory estimate into its manifest entry; a run far past the device's
    memory ends as oom at once, before minutes are spent finding out."""
    checked = memory_plan.check(sweep.cfg, sweep.pending())  # one device query for all of them
    for run in sweep.pending():
        est, why = checked[run["run_id"]]
        run["memory_estimate_gb"] = est / 1e9
        run["memory_resident_gb"] = memory_plan.resident(sweep.cfg, run) / 1e9
        if why:
            sweep.end(run, dict(status="oom", reason=why), time.perf_counter())
    sweep.save()


CPU_MINUTES_PER_RUN = {"gpt2": 4, "gpt2-medium": 12, "gpt2-large": 30}  # fast_test, offline, 2 cores


def warn_cpu(cfg: Config) -> None:
    """On a machine without a GPU the real GPT-2 sizes train slowly: say how slowly, before it starts."""
    import torch
    if cfg.device == "cpu" or not torch.cuda.is_available():
        slow = [m for m in cfg.models if m in CPU_MINUTES_PER_RUN]
        if slow:
            per = max(CPU_MINUTES_PER_RUN[m] for m in slow)
            print(f"note: no GPU here; {', '.join(slow)} on the CPU takes about {per} min per run of fast_test's "
                  f"size on 2 cores ({len(cfg.attention_list()) * len(cfg.seq_lens) * len(slow)} runs here). "
                  "The CPU preset is smoke (tiny model, about a minute)", flush=True)
