"""One run: warm-up steps, then measured steps, a row of metrics per training batch.

prepare() does everything before the timed loop (data on the device, model, optimizer, FLOP
counts, the kernel that will run) and returns a Setup; run() trains and meters it. With a gate
(harness/run/gate.py) run() first compiles every graph beside other runs, resets, and waits for
its turn on the GPU; warm() only compiles, to fill torch.compile's caches for a measured run in
another process (the --gpus pool's precompile phase). The process around a run (its spec and
result files, its status) is worker.py.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import torch

import attentions
from config import Config
from harness.run import ddp, warmup
from harness.run import model as models
from harness.run.batches import on_device, run_data, to_device
from harness.run.evaluate import eval_rows, evaluate, quality_info
from harness.run.recall import RecallBatches
from harness.run.step import StepTimer, fault_for, inference_time, train_step
from harness.run.tokenizer import get_tokenizer
from harness.run.warmup import (compile_cache, compile_then_wait, compile_time, first_minus_median,
                                reset_optimizer)
from metrics.flops import fvcore_forward_flops, palm_flops_per_token, palm_n_params, train_step_flops
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


@dataclass
class Setup:
    """What prepare() made for the timed loop."""
    spec: attentions.AttentionSpec
    dtype: torch.dtype
    batches: list[dict]          # on the device; a batch without padding has no attention_mask
    real: list[int]              # non-padding tokens of each batch, counted on the host
    data_stats: dict
    model: torch.nn.Module
    step_model: torch.nn.Module  # the model as trained: DDP-wrapped, compiled
    params: dict                 # the attention's effective parameters
    kernel: str                  # the kernel that runs, recorded with every row
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    flops: float                 # one training step, analytic
    flops_forward: float         # one forward of the batch, analytic (fvcore's cross-check counts this)
    palm: float                  # PaLM training FLOPs per token (MFU's numerator)
    peak: float                  # the device's peak TFLOP/s at this dtype (NaN if unknown)
    size_mb: float
    evals: list[dict] = field(default_factory=list)  # held-out batches, on the device
    sched: object = None         # the learning-rate schedule (evaluate.scheduler)
    fault: str | None = None
    phases: dict = field(default_factory=dict)


def load_batches(cfg: Config, run: dict) -> dict:
    """The run's training and held-out batches (batches.run_data): made once by the sweep's parent
    (a file; in memory under torchrun), or here."""
    if run.get("data"):
        if isinstance(run["data"], dict):
            return run["data"]
        with torch.serialization.safe_globals([RecallBatches]):  # MQAR's batches, made on read
            return torch.load(run["data"])
    return run_data(cfg, get_tokenizer(cfg.offline) if cfg.task == "lm" else None, run)


def prepare(cfg: Config, run: dict, device: torch.device) -> Setup:
    """Everything before the timed loop: data on the device, model, optimizer, FLOP counts."""
    t_start = time.perf_counter()
    spec = attentions.get(run["attention"])
    reason = spec.unavailable_reason(device)
    if reason:
        raise Unavailable(reason)
    dtype, needs_scaler = models.pick_dtype(cfg.dtype, device)
    made = load_batches(cfg, run)
    batches, real = on_device(made["batches"], device)  # torchrun: this rank's rows of each global batch
    T, B = run["seq_len"], batches[0]["input_ids"].shape[0]  # rows this process trains
    evals = to_device(made.get("eval") or [], device)[0]  # under torchrun every rank evaluates all
    model, params = models.build(run["model"], run["attention"], T, cfg.init,
                                 cfg.attention_params.get(run["attention"]), run.get("seed", cfg.seed),
                                 n_layer=run.get("n_layer"),  # set by benchmarks/compiled_check.py only
                                 recall_vocab=cfg.recall_vocab)
    model.to(device).train()
    c = model.config
    H, D = c.n_head, c.n_embd // c.n_head
    flops = train_step_flops(c, B, T, spec.flops(B, H, T, D, params), kv_heads=params.get("kv_heads"))
    s = Setup(spec=spec, dtype=dtype, batches=batches, real=real, data_stats=made["stats"], model=model,
              step_model=model, params=params, kernel=spec.kernel(device, params, dtype=dtype, shape=(B, H, T, D)),
              opt=None, scaler=torch.amp.GradScaler(device.type, enabled=needs_scaler), flops=flops["total"],
              flops_forward=flops["forward"],
              palm=palm_flops_per_token(palm_n_params(model), c.n_layer, H, D, T),
              peak=peak_tflops(device, dtype), size_mb=model_size_mb(model), fault=fault_for(run["attention"]),
              evals=evals)
    reset_optimizer(s, cfg, run, device)
    t_probe = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model(input_ids=batches[0]["input_ids"][:1])  # eager: masks and kernel probes built before compile
    if device.type == "cuda":
        torch.cuda.synchronize()
    s.phases = dict(setup_s=t_probe - t_start, eager_probe_s=time.perf_counter() - t_probe)
    s.step_model = compiled(ddp.wrap_model(model, device), cfg)  # DDP under torchrun, else the model
    return s


def compiled(wrapped, cfg: Config):
    """torch.compile of the whole model, the same way for every attention. (Compiling each block
    instead, regional compilation, compiled 4x faster on the H200 but ran steps 2x slower.)"""
    return torch.compile(wrapped, backend=compile_backend()) if cfg.compile else wrapped


def compile_backend() -> str:
    """torch.compile's backend: inductor, unless AB_COMPILE_BACKEND names another (aot_eager traces
    and builds the forward and backward graphs without generating kernels: the way to tell a
    Dynamo or AOTAutograd problem from an Inductor one, and what the CPU tests of the overlap use)."""
    return os.environ.get("AB_COMPILE_BACKEND", "inductor")


def fvcore_check(s: Setup) -> dict:
    """fvcore's count of one forward of the batch (one row traced, times the rows: every product
    is per row), beside the analytic count; NaN with the reason where fvcore cannot run."""
    t0 = time.perf_counter()
    ids = s.batches[0]["input_ids"]
    one, why = fvcore_forward_flops(s.model, ids[:1])
    return dict(flops_forward=s.flops_forward, flops_fvcore_forward=one * ids.shape[0],
                flops_fvcore_reason=why, fvcore_s=time.perf_counter() - t0)


def seeded_prepare(cfg: Config, run: dict):
    """The run's device and prepare(), after seeding: the same for a measured and a warm run."""
    torch.manual_seed(run.get("seed", cfg.seed))
    device = ddp.local_device(resolve_device(cfg.device))  # torchrun: cuda:LOCAL_RANK
    return device, prepare(cfg, run, device)


def run(cfg: Config, run: dict, log=print, gate=None) -> dict:
    """Train one configuration; returns {"rows", "info", "samples"}. Raises on failure. gate: compile
    first, beside other runs, then measure when the sweep says so (harness/run/gate.py)."""
    device, s = seeded_prepare(cfg, run)
    paused = compile_then_wait(cfg, run, s, device, gate) if gate is not None else []
    graphs = warmup.graph_count()
    meter = Meter(device, interval_s=cfg.sample_interval_s, siblings=paused)
    meter.start()
    try:
        rows, energy, windows, evals = loop(cfg, run, s, device, StepTimer(device), meter, log)
    finally:
        meter.stop()  # completes each step's sampled columns (power, utilisation, energy)
        if gate is not None:
            gate.measured()
    s.phases.update(paused_runs=len(paused), graphs_compiled_measuring=warmup.graph_count() - graphs)
    for row, m in zip(rows, windows):
        row.update(m)
        row["joules_per_token"] = row["energy_j"] / row["tokens"]
        row["gpu_power_counter_w"] = row["energy_j"] / row["window_s"] if row["window_s"] > 0 else math.nan
    evals = eval_rows(run, rows, evals, cfg.warmup_steps)
    # fvcore traces the model: after the measured steps and their compiled graphs, outside the meter
    info = dict(run_info(cfg, s, device, rows, energy, meter), **fvcore_check(s), **quality_info(cfg, rows, evals))
    return {"rows": rows, "info": info, "samples": meter.samples(), "evals": evals}


def eval_point(s: Setup, step: int, device, meter: Meter) -> dict:
    """One evaluation between training steps, with its own time and energy (kept out of the run's)."""
    t0, e0 = time.perf_counter(), meter.energy_counter_j()
    out = evaluate(s.step_model, s.evals, s.dtype, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return dict(out, step=step, eval_s=time.perf_counter() - t0, eval_energy_j=meter.energy_counter_j() - e0)


def eval_line(ev: dict, task: str) -> str:
    """A progress line for one held-out evaluation: its loss and, on MQAR, its recall."""
    what = "recall" if task == "recall" else "top-1 accuracy"
    return (f"    eval at step {ev['step']}: loss {ev['eval_loss']:.3f} nats/token, "
            f"{what} {ev['eval_accuracy']:.3f} ({ev['eval_tokens']:,} labelled tokens)")


def run_info(cfg: Config, s: Setup, device, rows: list[dict], energy: float, meter: Meter) -> dict:
    """The run's manifest entry: kernel, dtype, data, energy, FLOPs, and where its wall time went."""
    tokens = sum(r["tokens"] for r in rows if r["phase"] == "measure")
    inference = [r["inference_time_s"] for r in rows]
    phases = dict(s.phases, first_step_s=rows[0]["train_time_s"], steps_s=sum(r["window_s"] for r in rows),
                  inference_s=sum(inference) if cfg.measure_inference else 0.0,
                  inference_compile_s=first_minus_median(inference)
                  if cfg.compile and cfg.measure_inference else math.nan)
    info = dict(kernel=s.kernel, attention_params=s.params, dtype=str(s.dtype).replace("torch.", ""),
                device=str(device), data=s.data_stats, energy_j_run=energy,
                joules_per_token_run=energy / tokens if tokens else math.nan,
                compile_time_s=compile_time(cfg, s, rows),
                flops_per_step=s.flops, palm_flops_per_token=s.palm, peak_tflops=s.peak,
                metrics=meter.info(), phases=phases, compile_cache=compile_cache())
    info["idle_power_w"] = info["metrics"].get("idle_power_w", math.nan)
    info["other_gpu_processes"] = info["metrics"].get("other_gpu_processes")
    info["compile_backend"] = compile_backend() if cfg.compile else None
    from attentions.device import emulated
    info["emulated_capability"] = ".".join(map(str, emulated())) if emulated() and device.type == "cuda" else None
    return info


def warm(cfg: Config, run: dict) -> dict:
    """Fill torch.compile's on-disk caches for this run (the sweep's precompile phase): the same
    prepare(), one training step and one no-grad forward, nothing measured. Graphs are keyed on
    code and shapes, so the measured run that follows loads them instead of compiling again."""
    t0 = time.perf_counter()
    device, s = seeded_prepare(cfg, run)
    warmup.warm_graphs(s, cfg, run, device)
    return {"rows": [], "samples": [], "info": {"warm_s": time.perf_counter() - t0, "compile_cache": compile_cache()}}


def loop(cfg: Config, run: dict, s: Setup, device, timer: StepTimer, meter: Meter, log):
    """The timed steps, each inside the meter's window; then the timed inference forwards."""
    rows, windows, n, e0 = [], [], len(s.batches), math.nan
    total = n * cfg.epochs
    every = max(1, total // 5)
    evals = [eval_point(s, 0, device, meter)] if s.evals and cfg.eval_every else []
    for step in range(total):
        epoch, b = divmod(step, n)
        phase = "warmup" if step < cfg.warmup_steps else "measure"
        if step == cfg.warmup_steps:
            e0 = meter.energy_counter_j()
        batch = s.batches[b]  # generated batches are made here, outside the step's window
        with meter.step() as m:
            loss, marks = train_step(s.step_model, batch, s.opt, s.scaler, s.dtype, timer,
                                     run["attention"], step, s.fault)
            if device.type == "cuda":
                torch.cuda.synchronize()  # closes the step's measurement window
        loss = float(ddp.global_loss(loss))  # torchrun: the whole global batch's loss
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss} at step {step}")
        s.sched.step()
        rows.append(row(run, s, epoch, b, step, phase, loss, timer.parts(marks)))
        windows.append(m)
        if s.evals and cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < total:
            evals.append(eval_point(s, step + 1, device, meter))
            log(eval_line(evals[-1], cfg.task), flush=True)
        if (step + 1) % every == 0 or step + 1 == total:
            r = rows[-1]
            log(f"    step {step + 1}/{total} [{phase}] loss {loss:.3f}  {r['train_time_s']:.3f} s  "
                f"{r['tokens_per_s']:,.0f} tokens/s", flush=True)
    # the measured training phase, less the evaluations inside it
    energy = meter.energy_counter_j() - e0 - sum(e["eval_energy_j"] for e in evals if e["step"] > cfg.warmup_steps)
    if s.evals:
        evals.append(eval_point(s, total, device, meter))
        log(eval_line(evals[-1], cfg.task), flush=True)
    for r in rows:  # inference timed after training so it never sits inside the energy window
        r["inference_time_s"] = inference_time(s.step_model, s.batches[r["batch"]], s.dtype, device) \
            if cfg.measure_inference else math.nan
    return rows, energy, windows, evals


def row(run: dict, s: Setup, epoch: int, b: int, step: int, phase: str, loss: float, times) -> dict:
    """One batches.csv row (the meter's sampled columns are added after the run)."""
    fwd, bwd, opt, train = times
    tokens = s.batches[b]["input_ids"].numel()
    tps = tokens / train
    return dict(run_id=run["run_id"], model=run["model"], attention=run["attention"], kernel=s.kernel,
                seq_len=run["seq_len"], batch_size=run["batch_size"], repeat=run.get("repeat", 0),
                epoch=epoch, batch=b, step=step, phase=phase, flops=s.flops, loss=loss,
                inference_time_s=math.nan, model_size_mb=s.size_mb, train_time_s=train,
                forward_time_s=fwd, backward_time_s=bwd, optimizer_time_s=opt, tokens=tokens,
                real_tokens=s.real[b], tokens_per_s=tps, tflops_per_s=s.flops / train / 1e12,
                mfu=s.palm * tps / (s.peak * 1e12), attention_density=s.spec.density(run["seq_len"], s.params))
