"""Memory before anything runs: each run's estimated peak (metrics/memory.py) against the memory
of the device it will run on; `batch_size = "auto"` resolved to the largest batch the plan's
hungriest mechanism fits at every length. Asks NVML, never CUDA: this is the parent process."""
from __future__ import annotations

import dataclasses

from config import Config
from harness.run.model import PRETRAINED_POSITIONS, SIZES, vocab_of
from metrics.memory import AUTO_TOKENS, HEADROOM, estimate_bytes, floor_bytes, largest_batch, resident_bytes

CPU_BATCH = 2       # batch auto on the CPU: small, as the CPU presets always were
REFUSE = 2.0        # a run estimated past REFUSE x the device's memory is not started (status oom)


def device_memory(cfg: Config) -> tuple[float, str]:
    """(bytes, where from) of the device the runs will use: the GPU's memory, or the host's RAM."""
    import psutil
    import torch
    on_gpu = cfg.device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        from metrics.nvml import NvmlReader
        index = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
        nvml = NvmlReader(index)
        total = nvml.memory_total_mb() * 1e6 if nvml.available else float("nan")
        if total == total:
            return total, f"GPU {index} ({nvml.name}), NVML"
    return float(psutil.virtual_memory().total), "host RAM (psutil)"


def dtype_bytes(cfg: Config, on_gpu: bool) -> int:
    return 4 if cfg.dtype == "fp32" or not on_gpu else 2


def model_shape(cfg: Config, run: dict) -> tuple[int, int, int, int, int]:
    """(n_layer, n_embd, n_head, vocab, positions) of the run's model, as the memory formulas take them."""
    n_layer, n_embd, n_head = SIZES[run["model"]]
    return n_layer, n_embd, n_head, vocab_of(run["model"], cfg.recall_vocab), max(PRETRAINED_POSITIONS, run["seq_len"])


def estimate(cfg: Config, run: dict, on_gpu: bool) -> float:
    return estimate_bytes(*model_shape(cfg, run), run["batch_size"], run["seq_len"], run["attention"],
                          cfg.attention_params.get(run["attention"]), dtype_bytes(cfg, on_gpu))


def floor(cfg: Config, run: dict, on_gpu: bool) -> float:
    """Bytes the run's step must hold at least (metrics/memory.py: floor_bytes)."""
    return floor_bytes(*model_shape(cfg, run), run["batch_size"], run["seq_len"], run["attention"],
                       dtype_bytes(cfg, on_gpu))


def resident(cfg: Config, run: dict) -> float:
    """Bytes the run's process keeps between its steps (metrics/memory.py: resident_bytes)."""
    n_layer, n_embd, _, vocab, positions = model_shape(cfg, run)
    return resident_bytes(n_layer, n_embd, vocab, positions)


def resolve_batch(cfg: Config) -> tuple[Config, dict | None]:
    """cfg with batch_size "auto" made a number (and the manifest's record of how), else cfg."""
    if cfg.batch_size != "auto":
        return cfg, None
    memory, where = device_memory(cfg)
    on_gpu = where.startswith("GPU")
    if not on_gpu:
        return dataclasses.replace(cfg, batch_size=CPU_BATCH), dict(batch_size=CPU_BATCH, why="CPU: small batches")
    names = cfg.attention_list()

    def fits(B, model, T):
        return all(estimate(cfg, dict(model=model, seq_len=T, batch_size=B, attention=a), True) <= HEADROOM * memory
                   for a in names)

    B = min(largest_batch(lambda b: fits(b, m, T), T) for m in cfg.models for T in cfg.seq_lens)
    return dataclasses.replace(cfg, batch_size=B), dict(
        batch_size=B, memory_gb=memory / 1e9, memory_from=where, headroom=HEADROOM,
        why=f"the largest batch whose estimated peak fits {HEADROOM:.0%} of the device for every mechanism "
            f"and length of the plan, at most {AUTO_TOKENS} tokens a step")


def check(cfg: Config, runs: list[dict], log=print) -> dict[str, tuple[float, str | None]]:
    """{run_id: (estimated peak bytes, None or why the run is not started)}; warns past the memory."""
    memory, where = device_memory(cfg)
    on_gpu = where.startswith("GPU")
    out = {}
    for r in runs:
        est, least = estimate(cfg, r, on_gpu), floor(cfg, r, on_gpu)
        why = None
        if least > memory:
            why = (f"not started: it must hold at least {least / 1e9:.1f} GB at once (weights, gradients, "
                   f"AdamW's moments and the attention probabilities eager attention keeps for the "
                   f"backward), over the {memory / 1e9:.1f} GB of the {where}")
        elif est > REFUSE * memory:
            why = (f"not started: its estimated peak {est / 1e9:.1f} GB is over {REFUSE:g}x the "
                   f"{memory / 1e9:.1f} GB of the {where}")
        elif est > memory:
            log(f"warning: {r['attention']} seq_len={r['seq_len']} batch={r['batch_size']}: estimated peak "
                f"{est / 1e9:.1f} GB > {memory / 1e9:.1f} GB ({where}): it may run out of memory")
        out[r["run_id"]] = (est, why)
    return out
