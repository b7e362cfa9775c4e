"""The catalog of every per-batch column: name, unit, meaning, how it is summarised.

One source of truth: the CSV headers, the README table and the plot labels all come from here.
Units are SI: MB = 10^6 bytes, GB = 10^9 bytes, W, J, s.
`seed` names the metric of the original project the column answers (12 of them).
`agg` says how summary.csv reduces the measured batches of one run:
  "median" -> median and 95% interval over measured batches;
  "last"   -> constant per run (model size), the last value;
  "sum"    -> summed over measured batches (energy: the run-level total, no interval);
  "ratio"  -> sum of one column / sum of another over measured batches (`of`: joules per token,
              the run-level value: per-step energies are coarse, their sums exact);
  "none"   -> not summarised (flags in QUALITY_COLUMNS).
`ranks` says how one step's rows of the ranks of a torchrun run combine into one global step:
  "sum" (resources every rank spends), "max" (the slowest rank's time, the largest per-GPU peak),
  "mean" (utilisation), "first" (the same on every rank, or recomputed from the others:
  loss is already the global loss; tokens_per_s = global tokens / slowest time).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    column: str
    unit: str       # "" for dimensionless counts
    meaning: str
    agg: str = "median"
    seed: str | None = None   # the original project's name for it, if any
    higher_is_better: bool = False
    of: tuple[str, str] | None = None   # agg "ratio": (numerator column, denominator column)
    ranks: str = "first"     # across torchrun ranks: sum, max, mean or first (see above)

    @property
    def label(self) -> str:
        return f"{self.column} ({self.unit})" if self.unit else self.column


# The twelve metrics of the original project, in its order.
SEED_METRICS = [
    Metric("flops", "FLOP", "FLOPs of one training step (fwd + bwd), analytic, 2 FLOPs per multiply-add; "
           "causal attention counts only the unmasked half", "median", "FLOPS", ranks="sum"),
    Metric("cpu_percent", "%", "this process's CPU use over the step, percent of one core", "median",
           "CPU usage percentage", ranks="sum"),
    Metric("disk_read_mb", "MB", "bytes this process read from storage during the step", "median",
           "disk I/O read", ranks="sum"),
    Metric("disk_write_mb", "MB", "bytes this process wrote to storage during the step", "median",
           "disk I/O write", ranks="sum"),
    Metric("gpu_memory_mb", "MB", "peak torch-allocated GPU memory within the step", "median", "GPU memory", ranks="max"),
    Metric("gpu_power_w", "W", "mean board power over the step (NVML)", "median", "GPU power", ranks="sum"),
    Metric("gpu_util_percent", "%", "mean NVML GPU utilisation over the step", "median", "GPU utilization", ranks="mean"),
    Metric("inference_time_s", "s", "no-grad forward of the same batch, timed on its own", "median",
           "inference time", ranks="max"),
    Metric("loss", "nats/token", "mean cross-entropy per predicted (non-padding) token", "median", "loss"),
    Metric("memory_gb", "GB", "process resident memory (RSS) at the end of the step", "median", "memory usage", ranks="sum"),
    Metric("model_size_mb", "MB", "parameters + buffers, bytes as stored", "last", "model size"),
    Metric("train_time_s", "s", "forward + backward + optimizer step", "median", "training time", ranks="max"),
]

DERIVED_METRICS = [
    Metric("forward_time_s", "s", "forward pass of the training step", ranks="max"),
    Metric("backward_time_s", "s", "backward pass of the training step", ranks="max"),
    Metric("optimizer_time_s", "s", "optimizer step (and gradient scaler, if any)", ranks="max"),
    Metric("tokens", "tokens", "token positions in the batch, padding included (B x T)", ranks="sum"),
    Metric("real_tokens", "tokens", "non-padding tokens in the batch", ranks="sum"),
    Metric("tokens_per_s", "tokens/s", "tokens / train_time_s", higher_is_better=True),
    Metric("tflops_per_s", "TFLOP/s", "flops / train_time_s / 1e12", higher_is_better=True),
    Metric("mfu", "fraction", "PaLM flops/token (6N + 12*L*H*Q*T, metrics/flops.py) x tokens_per_s / the "
           "GPU's peak dense bf16/fp16 FLOP/s (metrics/peak.py; NaN if unknown)", higher_is_better=True),
    Metric("energy_j", "J", "GPU energy over the step from NVML's cumulative counter (summary: the total "
           "over measured steps)", "sum", ranks="sum"),
    Metric("joules_per_token", "J/token", "energy_j / tokens (summary: total energy / total tokens of the "
           "measured steps)", "ratio", of=("energy_j", "tokens")),
    Metric("gpu_power_counter_w", "W", "mean board power over the step from NVML's energy counter "
           "(energy_j / window_s; not the ~1 s trailing average gpu_power_w reads; summary: total energy / "
           "total time of the measured steps)", "ratio", of=("energy_j", "window_s"), ranks="sum"),
    Metric("attention_density", "fraction", "fraction of the causal query/key pairs the attention computes "
           "at this seq_len, from the same pair count as its FLOP formula (1 = exact attention)", "last"),
    Metric("gpu_memory_reserved_mb", "MB", "peak torch-reserved GPU memory within the step", ranks="max"),
    Metric("gpu_memory_nvml_mb", "MB", "device memory in use, NVML (all processes), max over the step's samples", ranks="max"),
]

METRICS = SEED_METRICS + DERIVED_METRICS

# How far to trust a row's sampled and energy columns (metrics/meter.py). Not in METRICS:
# they are not summarised or plotted as metrics, but batches.csv carries them.
QUALITY_COLUMNS = [
    Metric("window_s", "s", "the step's wall time as the meter saw it (its sampling window)", ranks="max"),
    Metric("samples_in_window", "", "sampler readings inside the step; 0 = see sample_fallback"),
    Metric("sample_fallback", "", "True: no reading inside the step, the nearest one was used", "none"),
    Metric("energy_flag", "", "ok | short_window (window < 100 ms, the NVML energy counter's "
           "update period: coarse per step, exact when summed) | nan (no counter)", "none"),
]
# A run's held-out quality and budget (harness/run/evaluate.py): one value per run in summary.csv;
# eval.csv has a row per evaluation with the eval_* columns and what was spent before it.
RUN_METRICS = [
    Metric("eval_loss", "nats/token", "mean cross-entropy on the held-out split at the run's last evaluation", "last"),
    Metric("eval_ppl", "", "exp(eval_loss)", "last"),
    Metric("eval_accuracy", "fraction", "top-1 next-token accuracy on the held-out split's labelled tokens",
           "last", higher_is_better=True),
    Metric("recall_accuracy", "fraction", "recall task: share of the queried MQAR values predicted exactly "
           "(held-out rows)", "last", higher_is_better=True),
    Metric("eval_labelled", "tokens", "labelled tokens of the run's last evaluation (recall task: the held-out "
           "queries recall_accuracy is over)", "last"),
    Metric("eval_loss_start", "nats/token", "eval_loss before the first step (--init pretrained: what the "
           "swap alone did; needs eval_every > 0)", "last"),
    Metric("train_tokens", "tokens", "tokens the run trained on", "last"),
    Metric("train_s_total", "s", "training-step seconds of the run, warm-up steps counted at the median step's", "last"),
    Metric("energy_j_total", "J", "GPU energy of the run's training steps, warm-up at the median step's", "last"),
]
BY_COLUMN = {m.column: m for m in METRICS + QUALITY_COLUMNS + RUN_METRICS}

# Identity columns of a batches.csv row, before the metrics.
ID_COLUMNS = ["run_id", "model", "attention", "kernel", "seq_len", "batch_size", "repeat",
              "epoch", "batch", "step", "phase"]


def label(column: str) -> str:
    """Plot/table label with unit, for any catalogued column (the column itself otherwise)."""
    m = BY_COLUMN.get(column)
    return m.label if m else column


def markdown_table(metrics=None) -> str:
    """The README's metric table (or that of `metrics`, such as RUN_METRICS), from the catalog."""
    rows = ["| column | unit | original metric | meaning | summary |", "|---|---|---|---|---|"]
    for m in METRICS if metrics is None else metrics:
        rows.append(f"| {m.column} | {m.unit or '-'} | {m.seed or '-'} | {m.meaning} | {m.agg} |")
    return "\n".join(rows)
