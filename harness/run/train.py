"""One run: warm-up steps, then measured steps, a row of metrics per training batch.

Also the worker entry point: `python train.py SPEC.json RESULT.json` runs one configuration in a
fresh process (main.py starts one per run), so allocator state, compile caches, peak-memory
counters and NVML baselines never leak from one attention into the next. The result file is
written atomically with a status: ok, oom, nan, unavailable or error (+ traceback tail).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

import torch

import attentions
import data
import distributed
import model as models
from config import Config
from metrics.flops import palm_flops_per_token, train_step_flops
from metrics.meter import Meter
from metrics.peak import peak_tflops
from metrics.system import model_size_mb


class Unavailable(Exception):
    """The mechanism cannot run on this device (reason in the message)."""


class NonFiniteLoss(Exception):
    """Loss became NaN or inf: the run stops at once."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Unavailable(f"device {name} requested but torch sees no CUDA GPU")
    return torch.device(name)


def fault_for(attention: str) -> str | None:
    """Test hook: AB_FAULT="sdpa=raise,linear=nan,lsh=oom,flex=sleep" makes faults on purpose.
    Read once per run, in prepare(), never inside the timed step."""
    faults = dict(f.split("=") for f in os.environ.get("AB_FAULT", "").split(",") if "=" in f)
    return faults.get(attention)


def _inject_fault(kind: str, attention: str, step: int, loss):
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


def train_step(model, batch, opt, scaler, dtype, timer, attention, step, fault=None):
    autocast = torch.autocast("cuda" if timer.cuda else "cpu", dtype=dtype, enabled=dtype != torch.float32)
    t0 = timer.mark()
    with autocast:
        loss = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     labels=batch["labels"]).loss
    if "loss_weight" in batch:  # torchrun with padding: this rank's share of the global token mean
        loss = loss * batch["loss_weight"]
    if fault:
        loss = _inject_fault(fault, attention, step, loss)
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


def prepare(cfg: Config, run: dict, device: torch.device):
    """Everything before the timed loop: data on the device, model, optimizer, FLOP counts."""
    t_start = time.perf_counter()
    spec = attentions.get(run["attention"])
    reason = spec.unavailable_reason(device)
    if reason:
        raise Unavailable(reason)
    dtype, needs_scaler = models.pick_dtype(cfg.dtype, device)
    T, B = run["seq_len"], run["batch_size"]
    if run.get("data"):  # made once by the sweep's parent process (torchrun: in memory, from rank 0)
        saved = run["data"] if isinstance(run["data"], dict) else torch.load(run["data"])
        batches, data_stats = saved["batches"], saved["stats"]
    else:
        batches, data_stats = data.make_batches(cfg, data.get_tokenizer(cfg.offline), T, B, cfg.batches_per_epoch)
    batches = distributed.shard_batches(batches)  # torchrun: this rank's rows of each global batch
    B = batches[0]["input_ids"].shape[0]  # rows this process trains: FLOPs and kernel shape follow it
    real = [int(b["attention_mask"].sum()) for b in batches]  # counted on the host, before the loop
    # No mask for a batch without padding: the model then needs no per-step check (a GPU sync).
    batches = [{k: v for k, v in b.items() if k != "attention_mask" or r < v.numel()}
               for b, r in zip(batches, real)]
    batches = [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in batches]
    model, params = models.build(run["model"], run["attention"], T, cfg.init,
                                 cfg.attention_params.get(run["attention"]), cfg.seed)
    model.to(device).train()
    c = model.config
    H, D = c.n_head, c.n_embd // c.n_head
    kernel = spec.kernel(device, params, dtype=dtype, shape=(B, H, T, D))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler)
    flops = train_step_flops(c, B, T, spec.flops(B, H, T, D, params), kv_heads=params.get("kv_heads"))
    palm = palm_flops_per_token(models.n_params(model, non_embedding=True), c.n_layer, H, D, T)
    t_probe = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model(input_ids=batches[0]["input_ids"][:1])  # eager: masks and kernel probes built before compile
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_end = time.perf_counter()
    wrapped = distributed.wrap_model(model, device)  # DDP under torchrun, else the model itself
    step_model = compiled(wrapped, cfg)
    return dict(fault=fault_for(run["attention"]), spec=spec, dtype=dtype, batches=batches, real=real, data_stats=data_stats, model=model,
                step_model=step_model, params=params, kernel=kernel, opt=opt, scaler=scaler,
                flops=flops["total"], palm=palm, peak=peak_tflops(device, dtype),
                size_mb=model_size_mb(model),
                phases=dict(setup_s=t_probe - t_start, eager_probe_s=t_end - t_probe))


def compiled(wrapped, cfg: Config):
    """torch.compile of the whole model, the same way for every attention. (Compiling each block
    instead, regional compilation, compiled 4x faster on the H200 but ran steps 2x slower.)"""
    return torch.compile(wrapped) if cfg.compile else wrapped


def _seeded_prepare(cfg: Config, run: dict):
    """The run's device and prepare(), after seeding: the same for a measured and a warm run."""
    torch.manual_seed(cfg.seed)
    device = distributed.local_device(resolve_device(cfg.device))  # torchrun: cuda:LOCAL_RANK
    return device, prepare(cfg, run, device)


def run(cfg: Config, run: dict, log=print) -> dict:
    """Train one configuration; returns {"rows", "info", "samples"}. Raises on failure."""
    device, p = _seeded_prepare(cfg, run)
    timer, rows = StepTimer(device), []
    meter = Meter(device, interval_s=cfg.sample_interval_s)
    meter.start()
    try:
        rows, energy, windows = _loop(cfg, run, p, device, timer, meter, log)
    finally:
        meter.stop()  # completes each step's sampled columns (power, utilisation, energy)
    for row, m in zip(rows, windows):
        row.update(m)
        row["joules_per_token"] = row["energy_j"] / row["tokens"]
        row["gpu_power_counter_w"] = row["energy_j"] / row["window_s"] if row["window_s"] > 0 else math.nan
    measured = [r for r in rows if r["phase"] == "measure"]
    tokens = sum(r["tokens"] for r in measured)
    first = rows[0]["train_time_s"]
    inference = [r["inference_time_s"] for r in rows]
    # Where a run's wall time goes (the manifest keeps it per run; `show` prints it).
    phases = dict(p["phases"], first_step_s=first, steps_s=sum(r["window_s"] for r in rows),
                  inference_s=sum(inference) if cfg.measure_inference else 0.0,
                  inference_compile_s=first_minus_median(inference)
                  if cfg.compile and cfg.measure_inference else math.nan)
    info = dict(kernel=p["kernel"], attention_params=p["params"], dtype=str(p["dtype"]).replace("torch.", ""),
                device=str(device), data=p["data_stats"], energy_j_run=energy,
                joules_per_token_run=energy / tokens if tokens else math.nan,
                compile_time_s=first_minus_median([r["train_time_s"] for r in rows]) if cfg.compile else math.nan,
                flops_per_step=p["flops"], palm_flops_per_token=p["palm"], peak_tflops=p["peak"],
                metrics=meter.info(), phases=phases, compile_cache=compile_cache())
    info["idle_power_w"] = info["metrics"].get("idle_power_w", math.nan)
    return {"rows": rows, "info": info, "samples": meter.samples()}


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


def warm(cfg: Config, run: dict) -> dict:
    """Fill torch.compile's on-disk caches for this run (sweep.py's precompile phase): the same
    prepare(), one training step and one no-grad forward, nothing measured. Graphs are keyed on
    code and shapes, so the measured run that follows loads them instead of compiling again."""
    t0 = time.perf_counter()
    device, p = _seeded_prepare(cfg, run)
    batch = p["batches"][0]
    train_step(p["step_model"], batch, p["opt"], p["scaler"], p["dtype"], StepTimer(device), run["attention"], 0)
    if cfg.measure_inference:
        inference_time(p["step_model"], batch, p["dtype"], device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"rows": [], "samples": [], "info": {"warm_s": time.perf_counter() - t0, "compile_cache": compile_cache()}}


def _loop(cfg, run, p, device, timer, meter, log):
    rows, windows, n, e0 = [], [], len(p["batches"]), math.nan
    total = n * cfg.epochs
    every = max(1, total // 5)
    for epoch in range(cfg.epochs):
        for b, batch in enumerate(p["batches"]):
            step = epoch * n + b
            phase = "warmup" if step < cfg.warmup_steps else "measure"
            if step == cfg.warmup_steps:
                e0 = meter.energy_counter_j()
            with meter.step() as m:
                loss, marks = train_step(p["step_model"], batch, p["opt"], p["scaler"], p["dtype"], timer,
                                         run["attention"], step, p["fault"])
                if device.type == "cuda":
                    torch.cuda.synchronize()  # closes the step's measurement window
            loss = float(distributed.global_loss(loss))  # torchrun: the whole global batch's loss
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss} at step {step}")
            rows.append(_row(run, p, epoch, b, step, phase, loss, marks, timer, batch))
            windows.append(m)
            if (step + 1) % every == 0 or step + 1 == total:
                r = rows[-1]
                log(f"    step {step + 1}/{total} [{phase}] loss {loss:.3f}  {r['train_time_s']:.3f} s  "
                    f"{r['tokens_per_s']:,.0f} tokens/s", flush=True)
    energy = meter.energy_counter_j() - e0  # the measured training phase, nothing else in between
    for row in rows:  # inference timed after training so it never sits inside the energy window
        row["inference_time_s"] = inference_time(p["step_model"], p["batches"][row["batch"]], p["dtype"],
                                                 device) if cfg.measure_inference else math.nan
    return rows, energy, windows


def _row(run, p, epoch, b, step, phase, loss, marks, timer, batch):
    t0, t1, t2, t3 = marks
    fwd, bwd, opt, train = (timer.seconds(t0, t1), timer.seconds(t1, t2), timer.seconds(t2, t3),
                            timer.seconds(t0, t3))
    tokens = batch["input_ids"].numel()
    tps = tokens / train
    tflops = p["flops"] / train / 1e12
    row = dict(run_id=run["run_id"], model=run["model"], attention=run["attention"], kernel=p["kernel"],
               seq_len=run["seq_len"], batch_size=run["batch_size"], repeat=run.get("repeat", 0),
               epoch=epoch, batch=b, step=step, phase=phase, flops=p["flops"], loss=loss,
               inference_time_s=math.nan, model_size_mb=p["size_mb"], train_time_s=train,
               forward_time_s=fwd, backward_time_s=bwd, optimizer_time_s=opt, tokens=tokens,
               real_tokens=p["real"][b], tokens_per_s=tps, tflops_per_s=tflops,
               mfu=p["palm"] * tps / (p["peak"] * 1e12))
    return row


def main(spec_path: str, out_path: str) -> int:
    """Worker: run one configuration, write {status, reason, ...} atomically to out_path."""
    from transformers.utils import logging as hf_logging
    from results import write_json
    hf_logging.set_verbosity_error()
    spec = json.load(open(spec_path))
    cfg, run_ = Config.from_dict(spec["config"]), dict(spec["run"], data=spec.get("data"))
    result = {"status": "error", "reason": "", "rows": [], "info": {}, "samples": []}
    try:
        result.update((warm if spec.get("warm") else run)(cfg, run_), status="ok")
    except Unavailable as e:
        result.update(status="unavailable", reason=str(e))
    except torch.OutOfMemoryError as e:
        result.update(status="oom", reason=str(e).splitlines()[0][:300])
    except NonFiniteLoss as e:
        result.update(status="nan", reason=str(e))
    except Exception as e:  # any other failure is a result too; the sweep goes on
        tb = traceback.format_exc().strip().splitlines()
        result.update(status="error", reason=f"{type(e).__name__}: {e}"[:500], traceback="\n".join(tb[-12:]))
    write_json(out_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
