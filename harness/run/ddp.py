"""Data-parallel training of a configuration under torchrun, with the machinery PyTorch users
already run: torch.distributed (NCCL on GPUs, gloo on CPU) and DistributedDataParallel.

  torchrun --nproc_per_node N main.py --model gpt2 --attention sdpa ...

Detected by RANK, WORLD_SIZE and LOCAL_RANK in the environment. Every rank runs the sweep's runs
in-process, in plan order, in lockstep: no child per run, because the process group lives as
long as the ranks (so allocator and compile caches carry over between runs: give torchrun one
configuration at a time for the cleanest numbers). batch_size is the GLOBAL batch: rank r trains
rows [r*B/W, (r+1)*B/W) of every batch, so the loss curve is the single-process one (each rank's
loss is weighted by its share of predicted tokens, so DDP's gradient mean is the global token
mean even with padding); B must be a multiple of W. Each rank meters its own GPU
(cuda:LOCAL_RANK); rank 0 gathers every rank's rows (gather_object) and alone writes the
folder: batches.csv gets a `rank` column, summary.csv is computed over global steps
(global_steps: summed tokens, power and energy, the slowest rank's time, the largest per-rank
GPU memory). A failure that differs between ranks (OOM, an error) cannot be recorded without
the others hanging in a collective: that rank exits and torchrun stops the job; finished runs
are saved and `torchrun ... main.py --resume DIR` continues. --timeout is not enforced here.
--gpus and --shard (no torchrun) are in scaleout.py.
"""
from __future__ import annotations

import math
import os

from harness.errors import UserError

# -- torchrun: detect, init, teardown, rank info --------------------------------------------------


def launched() -> bool:
    """Started by torchrun (torch.distributed.run sets these for every worker)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def active() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return int(os.environ.get("RANK", 0)) if launched() else 0


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", 1)) if launched() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if launched() else 0


def init() -> None:
    """One process group: NCCL for CUDA tensors (gradients), gloo for CPU ones (the rows)."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"  # the GPU hosts forbid NVLink multicast
    os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
    import torch
    import torch.distributed as dist
    nccl = torch.cuda.is_available() and dist.is_nccl_available()
    if nccl and local_rank() < torch.cuda.device_count():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("cpu:gloo,cuda:nccl" if nccl else "gloo")


def teardown() -> None:
    import torch.distributed as dist
    if active():
        dist.barrier()
        dist.destroy_process_group()


def broadcast(obj):
    """rank 0's obj on every rank (pickled, over gloo)."""
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list | None:
    """Every rank's obj, in rank order, on rank 0; None elsewhere."""
    import torch.distributed as dist
    out = [None] * world() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


# -- hooks train.py calls (each a no-op outside torchrun) -----------------------------------------


def local_device(device):
    """cuda -> cuda:LOCAL_RANK, so each rank trains on and meters its own GPU."""
    import torch
    if not active() or device.type != "cuda":
        return device
    if local_rank() >= torch.cuda.device_count():
        raise UserError(f"torchrun started process LOCAL_RANK={local_rank()} but this host has "
                        f"{torch.cuda.device_count()} GPU(s): use --nproc_per_node <= that")
    return torch.device("cuda", local_rank())


def _predicted(labels) -> int:
    return int((labels[:, 1:] != -100).sum())  # GPT-2 predicts token t+1 from t; -100 is ignored


def shard_batches(batches: list[dict]) -> list[dict]:
    """This rank's contiguous rows of every global batch. Where ranks predict different token
    counts (padding), loss_weight = mine * W / total makes DDP's gradient average the global mean."""
    if not active():
        return batches
    import torch
    out = []
    for b in batches:
        n = b["input_ids"].shape[0] // world()
        part = {k: v[rank() * n:(rank() + 1) * n] for k, v in b.items()}
        mine, total = _predicted(part["labels"]), _predicted(b["labels"])
        if total and mine * world() != total:
            part["loss_weight"] = torch.tensor(mine * world() / total)
        out.append(part)
    return out


def wrap_model(model, device):
    """DistributedDataParallel under torchrun. broadcast_buffers off: GPT-2's buffers are constants,
    and a broadcast in every forward would be timed as part of the step."""
    if not active():
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP
    # torch >= 2.13 renames the switch (and still syncs buffers once, at init: that is not timed)
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters \
        else "broadcast_buffers"
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **{no_sync: False})


def global_loss(loss):
    """The loss of the whole global batch: the mean of the ranks' (weighted) losses."""
    if not active():
        return loss
    import torch.distributed as dist
    total = loss.detach().float().clone()
    dist.all_reduce(total)
    return total / world()


# -- per-rank rows -> one result, one row per global step -----------------------------------------

SUM = ("tokens", "real_tokens", "flops", "energy_j", "gpu_power_w", "gpu_power_counter_w", "cpu_percent", "memory_gb",
       "disk_read_mb", "disk_write_mb")             # resources every rank spends: add them up
MAX = ("train_time_s", "forward_time_s", "backward_time_s", "optimizer_time_s", "inference_time_s",
       "window_s", "gpu_memory_mb", "gpu_memory_reserved_mb", "gpu_memory_nvml_mb")  # slowest / per-GPU peak
MEAN = ("gpu_util_percent",)


def global_steps(batches):
    """batches.csv rows with a `rank` column -> one row per (run, step): summed resources, the
    slowest rank's times, the largest per-rank GPU memory; throughput = global tokens / slowest time."""
    if batches.empty or "rank" not in batches.columns:
        return batches
    w = int(batches["rank"].nunique())
    g = batches.groupby(["run_id", "step"], sort=False)
    out = g.first()  # identity columns, loss (already the global loss on every rank), flags
    cols = lambda names: [c for c in names if c in batches.columns]  # noqa: E731
    out[cols(SUM)] = g[cols(SUM)].sum(min_count=w)  # NaN unless every rank measured it, never 0
    out[cols(MAX)] = g[cols(MAX)].max()
    out[cols(MEAN)] = g[cols(MEAN)].mean()
    t = out["train_time_s"]
    out["tokens_per_s"] = out["tokens"] / t
    out["tflops_per_s"] = out["flops"] / t / 1e12
    out["joules_per_token"] = out["energy_j"] / out["tokens"]
    if "mfu" in batches:  # each rank's achieved FLOP/s over the slowest step, averaged over GPUs
        out["mfu"] = (batches["mfu"] * batches["train_time_s"]).groupby(
            [batches["run_id"], batches["step"]], sort=False).sum(min_count=w) / (w * t)
    out = out.reset_index().drop(columns="rank")
    return out[[c for c in batches.columns if c in out] + [c for c in out if c not in batches.columns]]


def combine(parts: list[dict]) -> dict:
    """Every rank's result -> one: rows and samples tagged with their rank, energy summed."""
    bad = [p for p in parts if p["status"] != "ok"]
    if bad:  # only failures every rank sees alike get here (unavailable, nan)
        return dict(bad[0], rows=[], samples=[])
    rows = [dict(r, rank=i) for i, p in enumerate(parts) for r in p["rows"]]
    samples = [dict(s, rank=i) for i, p in enumerate(parts) for s in p["samples"]]
    info = dict(parts[0]["info"], world_size=len(parts))
    add = lambda k: math.fsum(p["info"].get(k, math.nan) for p in parts)  # noqa: E731 (NaN stays NaN)
    info["energy_j_run"], info["idle_power_w"] = add("energy_j_run"), add("idle_power_w")
    tokens = sum(r["tokens"] for r in rows if r["phase"] == "measure")
    info["joules_per_token_run"] = info["energy_j_run"] / tokens if tokens else math.nan
    info["gpu_memory_mb_by_rank"] = [max((r["gpu_memory_mb"] for r in p["rows"] if r["phase"] == "measure"
                                          and r["gpu_memory_mb"] == r["gpu_memory_mb"]), default=math.nan)
                                     for p in parts]  # each rank's peak over measured steps (NaN skipped)
    info["nvml_by_rank"] = [{k: p["info"]["metrics"].get(k) for k in ("device", "nvml_index", "nvml_match",
                                                                       "gpu_name")} for p in parts]
    return dict(status="ok", reason="", rows=rows, info=info, samples=samples)


# -- main.py under torchrun -----------------------------------------------------------------------


def run_local(cfg, run: dict, batches: dict) -> dict:
    """One run in this rank's process. Failures every rank meets alike become a status; any other
    exception ends the rank (the others would wait in a collective) and torchrun stops the job."""
    import train
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    bat, stats = batches[(run["seq_len"], run["batch_size"])]
    spec = dict(run, data={"batches": bat, "stats": stats})
    try:
        res = train.run(cfg, spec, log=print if rank() == 0 else (lambda *a, **k: None))
        return dict(res, status="ok", reason="")
    except train.Unavailable as e:
        return dict(status="unavailable", reason=str(e))
    except train.NonFiniteLoss as e:  # the loss is global, so every rank stops at the same step
        return dict(status="nan", reason=str(e))


def _ddp_child(cfg, batches: dict, run: dict) -> dict | None:
    """Sweep._child under torchrun: train in-process, gather to rank 0, combine there."""
    try:
        parts = gather(run_local(cfg, run, batches))
    except KeyboardInterrupt:
        run["status"] = "pending"
        raise
    return combine(parts) if parts is not None else None


def _rank0_setup(cfg, resume, shard, prepare_data):
    """What the serial parent does before running: returns (sweep, payload for every rank)."""
    from scaleout import select_shard, shard_label
    from sweep import Sweep, plan
    try:
        sweep = Sweep.resume(resume) if resume else None
        cfg = sweep.cfg if sweep else cfg
        todo = sweep.pending() if sweep else select_shard(plan(cfg), shard)
        bad = sorted({r["batch_size"] for r in todo if r["batch_size"] % world()})
        if bad:
            raise UserError(f"batch_size is the global batch, split across the {world()} torchrun "
                            f"processes: {bad[0]} is not a multiple of {world()}")
        if not todo and not resume:
            print(f"shard {shard_label(shard)} holds no run of this plan: nothing to do")
            return None, dict(runs=None)
        batches = prepare_data(cfg, todo)
        sweep = sweep or Sweep.create(cfg, shard=shard)
    except UserError as e:
        return None, dict(error=str(e))
    import torch.distributed as dist
    sweep.manifest["distributed"] = dict(world_size=world(), backend=str(dist.get_backend()),
                                         batch="batch_size is the global batch, split evenly across ranks")
    if cfg.timeout_s:
        print(f"note: --timeout {cfg.timeout_s} is not enforced under torchrun (no child per run)")
    return sweep, dict(config=cfg.to_dict(), runs=sweep.pending(), batches=batches)


def ddp_sweep(cfg, resume, shard, prepare_data, finish):
    """main.py's sweep when launched by torchrun: rank 0 plans, tokenizes and writes; all train."""
    from functools import partial

    from config import Config
    init()
    sweep, payload = _rank0_setup(cfg, resume, shard, prepare_data) if rank() == 0 else (None, None)
    payload = broadcast(payload)
    if "error" in payload or payload["runs"] is None:
        teardown()
        if "error" in payload:
            raise UserError(payload["error"])
        return None
    child = partial(_ddp_child, Config.from_dict(payload["config"]), payload["batches"])
    if sweep is not None:
        print(f"attention-bench: torchrun x{world()}, {len(sweep.runs)} runs -> {sweep.folder}", flush=True)
        sweep._child = child  # the one swap: same bookkeeping as the serial path, DDP in-process
        sweep.run_all()
    else:
        for run in payload["runs"]:
            child(run)
    teardown()
    if sweep is not None:
        finish(sweep.folder)
    return sweep
