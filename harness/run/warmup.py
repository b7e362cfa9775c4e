"""Compile a run's graphs before its measured steps, then put the run back where it started.

warm_graphs() takes one training step on a batch of each distinct shape (with and without a
padding mask: a compiled model has a graph for each) and a no-grad forward of each shape that
inference and evaluation will see, so the measured steps compile nothing. snapshot() before and
restore() after return the weights, buffers and random state to what prepare() made: the
measured steps then train exactly what an unwarmed run would (tests/test_overlap.py checks that
their losses are identical). The optimizer, its schedule and the loss scaler are made afresh by
the caller (train.reset_optimizer).
"""
from __future__ import annotations

import math
import time

import torch

from harness.run.batches import MadeOnRead
from harness.run.evaluate import evaluate, scheduler
from harness.run.gate import free_cached
from harness.run.step import StepTimer, inference_time, train_step


def signature(batch: dict) -> tuple:
    return tuple(batch["input_ids"].shape), "attention_mask" in batch


def distinct(batches: list[dict]) -> list[dict]:
    """The first batch of each signature (generated batches share one)."""
    if isinstance(batches, MadeOnRead):
        return [batches[0]]
    seen = {}
    for b in batches:
        seen.setdefault(signature(b), b)
    return list(seen.values())


def graph_count() -> int:
    """Graphs torch.compile has made in this process (Dynamo's count; 0 without compile)."""
    from torch._dynamo.utils import counters
    return int(counters.get("stats", {}).get("unique_graphs", 0))


def warm_graphs(s, cfg, run: dict, device) -> float:
    """Every graph the measured phase needs, compiled and run once; returns its seconds."""
    t0 = time.perf_counter()
    timer = StepTimer(device)
    for batch in distinct(s.batches):
        train_step(s.step_model, batch, s.opt, s.scaler, s.dtype, timer, run["attention"], 0)
    if cfg.measure_inference:
        for batch in distinct(s.batches):
            inference_time(s.step_model, batch, s.dtype, device)
    if s.evals:
        evaluate(s.step_model, distinct(s.evals), s.dtype, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def snapshot(s, device) -> dict:
    """Weights, buffers and random state as prepare() left them (a copy on the device)."""
    snap = dict(state={k: v.detach().clone() for k, v in s.model.state_dict().items()},
                cpu_rng=torch.get_rng_state())
    if device.type == "cuda":
        snap["cuda_rng"] = torch.cuda.get_rng_state(device)
    return snap


def restore(s, snap: dict, device) -> None:
    """Back to the snapshot, in place (the compiled graphs keep the same parameter tensors)."""
    with torch.no_grad():
        s.model.load_state_dict(snap["state"])
    s.model.zero_grad(set_to_none=True)
    torch.set_rng_state(snap["cpu_rng"])
    if "cuda_rng" in snap:
        torch.cuda.set_rng_state(snap["cuda_rng"], device)


def reset_optimizer(s, cfg, run: dict, device) -> None:
    """A fresh AdamW, its learning-rate schedule and loss scaler (after prepare and after a warm-up)."""
    s.opt = torch.optim.AdamW(s.model.parameters(), lr=cfg.lr_for(run["model"]), fused=device.type == "cuda")
    s.sched = scheduler(s.opt, cfg, len(s.batches) * cfg.epochs)
    s.scaler = torch.amp.GradScaler(device.type, enabled=s.scaler.is_enabled())


def compile_then_wait(cfg, run: dict, s, device, gate) -> list[int]:
    """Compile every graph (a step of each, which trains), restore the run to its start, free the
    step's memory, say ready, wait for the GPU; returns the pids beside the measured steps."""
    snap = snapshot(s, device)
    with gate.warming_up():
        s.phases["warm_s"] = warm_graphs(s, cfg, run, device)
        restore(s, snap, device)
        reset_optimizer(s, cfg, run, device)
        del snap
        free_cached(device.type == "cuda")
    gate.ready(dict(warm_s=s.phases["warm_s"], compile_cache=compile_cache()))
    t0 = time.perf_counter()
    go = gate.wait()
    s.phases["gate_wait_s"] = time.perf_counter() - t0
    s.phases["compiling_beside"] = len(go.get("compiling", []))
    return list(go.get("paused", [])) + list(go.get("compiling", []))


def compile_time(cfg, s, rows: list[dict]) -> float:
    """The training graph's compile: the warm-up phase of a gated run (its graphs, one step of
    each), else the first measured step less the median of the others."""
    if not cfg.compile:
        return math.nan
    if "warm_s" in s.phases:
        return s.phases["warm_s"]
    return first_minus_median([r["train_time_s"] for r in rows])


def compile_cache() -> dict:
    """torch.compile's cache hits and misses in this process (AOTAutograd graphs, Inductor graphs):
    after the precompile phase a measured run should only hit."""
    from torch._dynamo.utils import counters
    aot, ind = counters.get("aot_autograd", {}), counters.get("inductor", {})
    return dict(aot_hit=aot.get("autograd_cache_hit", 0), aot_miss=aot.get("autograd_cache_miss", 0),
                fx_hit=ind.get("fxgraph_cache_hit", 0), fx_miss=ind.get("fxgraph_cache_miss", 0))


def first_minus_median(times: list[float]) -> float:
    """Compile time: the first call (which compiles) less the median of the later ones."""
    later = sorted(times[1:]) or times[:1]
    return times[0] - later[len(later) // 2]
