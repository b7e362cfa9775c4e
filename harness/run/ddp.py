"""The per-rank side of data-parallel training under torchrun: torch.distributed (NCCL on GPUs,
gloo on CPU) and DistributedDataParallel, through hooks the training loop calls (each a no-op
outside torchrun). The sweep's side (rank 0 plans and writes) is harness/sweep/torchrun.py.

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
(harness/store.py's global_steps, by each column's rule across ranks in metrics/catalog.py). A failure that differs between ranks (OOM, an error) cannot be recorded without
the others hanging in a collective: that rank exits and torchrun stops the job; finished runs
are saved and `torchrun ... main.py --resume DIR` continues. --timeout is not enforced here.

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


def predicted(labels) -> int:
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
        mine, total = predicted(part["labels"]), predicted(b["labels"])
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


# -- per-rank results -> one result ----------------------------------------------------------


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
