"""One training step and one timed inference forward, with the fault hook the tests use.

The step is forward (under autocast), backward (through the gradient scaler: fp16 on pre-Ampere
GPUs needs it), optimizer step; StepTimer marks its three parts with CUDA events on a GPU (no
sync inside the step) or perf_counter on the CPU.
"""
from __future__ import annotations

import math
import os
import time

import torch


def fault_for(attention: str) -> str | None:
    """Test hook: AB_FAULT="sdpa=raise,linear=nan,lsh=oom,flex=sleep" makes faults on purpose.
    Read once per run, in prepare(), never inside the timed step."""
    faults = dict(f.split("=") for f in os.environ.get("AB_FAULT", "").split(",") if "=" in f)
    return faults.get(attention)


def inject_fault(kind: str, attention: str, step: int, loss):
    if kind == "raise":
        raise RuntimeError(f"injected fault in {attention}")
    if kind == "oom" and step >= 1:
        raise torch.OutOfMemoryError("CUDA out of memory. (injected)")
    if kind == "sleep":
        time.sleep(float(os.environ.get("AB_FAULT_SLEEP_S", "0.5")))
    if kind == "nan" and step >= 1:
        return loss * math.nan
    return loss


class StepTimer:
    """forward/backward/optimizer times: CUDA events on GPU (no sync inside the step), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def seconds(self, a, b) -> float:  # call after the step's synchronize
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    def parts(self, marks) -> tuple[float, float, float, float]:
        """(forward, backward, optimizer, whole step) seconds from train_step's four marks."""
        t0, t1, t2, t3 = marks
        return self.seconds(t0, t1), self.seconds(t1, t2), self.seconds(t2, t3), self.seconds(t0, t3)


def train_step(model, batch, opt, scaler, dtype, timer, attention, step, fault=None):
    autocast = torch.autocast("cuda" if timer.cuda else "cpu", dtype=dtype, enabled=dtype != torch.float32)
    t0 = timer.mark()
    with autocast:
        loss = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     labels=batch["labels"]).loss
    if "loss_weight" in batch:  # torchrun with padding: this rank's share of the global token mean
        loss = loss * batch["loss_weight"]
    if fault:
        loss = inject_fault(fault, attention, step, loss)
    t1 = timer.mark()
    scaler.scale(loss).backward()
    t2 = timer.mark()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    t3 = timer.mark()
    return loss.detach(), (t0, t1, t2, t3)


@torch.no_grad()
def inference_time(model, batch, dtype, device) -> float:
    """A no-grad forward of the same batch, timed on its own (outside the training step)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    sync()
    return time.perf_counter() - t
