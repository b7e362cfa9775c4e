"""Fabricate a results folder in the format main.py/results.py write, for report tests and for
looking at the plots without a GPU. Numbers are made up but shaped like real ones: baseline
grows as T^2, linear as T, bigger models are slower, loss falls, warm-up steps are slow.

    python tests/fake_results.py OUT_ROOT     # writes a one-seq_len and a sweep folder
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from metrics.catalog import ID_COLUMNS, METRICS

SPEED = {"baseline": 1.0, "sdpa": 0.7, "flash": 0.5, "flex": 0.6, "flex_sparse": 0.45,
         "sliding_window": 0.4, "linear": 0.35, "lsh": 0.9, "gqa": 0.65, "tiny": 1.0}
SIZE = {"tiny": 0.05, "gpt2": 1.0, "gpt2-medium": 2.8, "gpt2-large": 6.2}
GPU_ONLY = ["gpu_memory_mb", "gpu_power_w", "gpu_power_counter_w", "gpu_util_percent", "energy_j", "joules_per_token",
            "gpu_memory_reserved_mb", "gpu_memory_nvml_mb", "mfu"]


def _batch_rows(run: dict, steps: int, warmup: int, bpe: int, device: str, rng) -> list[dict]:
    model, att, T, B = run["model"], run["attention"], run["seq_len"], run["batch_size"]
    quad = 1.0 if att == "baseline" else SPEED.get(att, 1.0)
    t = 0.02 * SIZE[model] * B * (T / 512 + quad * (T / 512) ** 2)
    rows = []
    for step in range(steps):
        noise = 1 + 0.05 * rng.standard_normal()
        tr = t * noise * (3.0 if step < warmup else 1.0)   # warm-up is slow: compile, allocator
        row = {c: np.nan for c in (m.column for m in METRICS)}
        row.update(run_id=run["run_id"], model=model, attention=att, kernel=run["kernel"], seq_len=T,
                   batch_size=B, repeat=run["repeat"], epoch=step // bpe, batch=step % bpe, step=step,
                   phase="warmup" if step < warmup else "measure",
                   flops=6 * 124e6 * SIZE[model] * B * T, cpu_percent=95 + rng.uniform(0, 5),
                   disk_read_mb=0.1 * rng.uniform(), disk_write_mb=0.0, inference_time_s=tr / 3,
                   loss=10.9 - 0.4 * step + 0.1 * rng.standard_normal() + SPEED.get(att, 1) * 0.1,
                   memory_gb=2.0 + SIZE[model], model_size_mb=497.8 * SIZE[model], train_time_s=tr,
                   forward_time_s=tr / 3, backward_time_s=tr / 2, optimizer_time_s=tr / 6,
                   tokens=B * T, real_tokens=B * T, tokens_per_s=B * T / tr, tflops_per_s=0.0)
        row["tflops_per_s"] = row["flops"] / tr / 1e12
        if device != "cpu":
            row.update(gpu_memory_mb=1500 * SIZE[model] + quad * B * T * T / 2e4, gpu_power_w=250 + 30 * noise,
                       gpu_util_percent=90 + 5 * noise, gpu_memory_reserved_mb=1.1 * 1500 * SIZE[model],
                       gpu_memory_nvml_mb=2000 * SIZE[model], energy_j=280 * tr)
            row["joules_per_token"] = row["energy_j"] / (B * T)
            row["gpu_power_counter_w"] = 280.0
        rows.append(row | {"samples_in_window": 5, "sample_fallback": False, "energy_flag": ""})
    return rows


def _summary_row(run: dict, rows: list[dict]) -> dict:
    out = {k: run[k] for k in ("run_id", "model", "attention", "kernel", "seq_len", "batch_size", "repeat",
                               "status", "reason")}
    meas = pd.DataFrame([r for r in rows if r["phase"] == "measure"])
    out["n_measured"] = len(meas)
    for m in METRICS:
        v = meas[m.column] if len(meas) else pd.Series([np.nan])
        # Fixture interval: min and max of the measured batches (contains the median, like a real CI).
        out[m.column], out[m.column + "_lo"], out[m.column + "_hi"] = v.median(), v.min(), v.max()
    e = meas["energy_j"].sum(min_count=1) if len(meas) else np.nan
    out.update(energy_j_run=e, joules_per_token_run=e / meas["tokens"].sum() if len(meas) else np.nan,
               idle_power_w=np.nan if np.isnan(e) else 60.0, compile_time_s=0.0)
    return out


def make_results(root, stamp="20250101-120000", device="cuda", preset="fixture", models=("gpt2", "gpt2-medium"),
                 attentions=("baseline", "sdpa", "linear"), seq_lens=(512,), oom=(("gpt2-medium", "baseline", 512),),
                 batches_per_epoch=3, epochs=2, warmup=2, repeats=1, batch_size=2, seed=0) -> Path:
    """Write root/<stamp>_<device>_<preset>/ with manifest.json, batches.csv, summary.csv, samples.csv."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / f"{stamp}_{device}_{preset}"
    folder.mkdir(parents=True)
    runs, batch_rows, summary = [], [], []
    for rep in range(repeats):
        for model in models:
            for T in seq_lens:
                for att in attentions:
                    failed = (model, att, T) in set(oom)
                    run = dict(run_id=f"{model}_{att}_T{T}_r{rep}", model=model, attention=att, seq_len=T,
                               batch_size=batch_size, repeat=rep, status="oom" if failed else "ok",
                               reason="CUDA out of memory. Tried to allocate 2.00 GiB" if failed else "",
                               kernel="eager" if att == "baseline" else f"{att}-kernel", wall_s=1.0,
                               compile_time_s=0.0)
                    rows = [] if failed else _batch_rows(run, batches_per_epoch * epochs, warmup,
                                                         batches_per_epoch, device, rng)
                    runs.append(run)
                    batch_rows += rows
                    summary.append(_summary_row(run, rows))
    cols = ID_COLUMNS + [m.column for m in METRICS] + ["samples_in_window", "sample_fallback", "energy_flag"]
    pd.DataFrame(batch_rows, columns=cols).to_csv(folder / "batches.csv", index=False)
    pd.DataFrame(summary).to_csv(folder / "summary.csv", index=False)
    pd.DataFrame({"run_id": [runs[0]["run_id"]] * 3, "t_s": [0, 0.05, 0.1], "gpu_power_w": [250.0] * 3,
                  "gpu_util_percent": [90.0] * 3, "gpu_memory_nvml_mb": [2000.0] * 3, "cpu_percent": [99.0] * 3,
                  "memory_gb": [3.0] * 3}).to_csv(folder / "samples.csv", index=False)
    nan_reasons = {"mfu": "peak TFLOP/s of this GPU is unknown"} if device != "cpu" else \
        {c: "no NVIDIA GPU (NVML unavailable)" for c in GPU_ONLY}
    manifest = {"preset": preset, "created": "2025-01-01T12:00:00", "finished": "2025-01-01T12:05:00",
                "config": {"preset": preset, "models": list(models), "seq_lens": list(seq_lens),
                           "batch_size": batch_size, "batches_per_epoch": batches_per_epoch, "epochs": epochs,
                           "warmup_steps": warmup, "repeats": repeats},
                "environment": {"python": "3.12.0", "torch": "2.13.0", "transformers": "5.0.0",
                                "cuda": None if device == "cpu" else "12.4", "driver": None,
                                "gpu": None if device == "cpu" else "NVIDIA H100 80GB HBM3", "gpu_count": 1,
                                "power_limit_w": 700.0, "cpu": "fake CPU", "cpu_count": 8, "memory_gb": 64.0,
                                "platform": "Linux", "hostname": "fixture"},
                "git_commit": "0123456789abcdef", "data": {"source": "fixture"}, "runs": runs,
                "metrics": {"nan_reasons": nan_reasons}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fake_results")
    print(make_results(root))
    print(make_results(root, stamp="20250102-120000", preset="sweep", models=("gpt2",),
                       attentions=("baseline", "sdpa", "flash", "linear", "lsh"), seq_lens=(512, 1024, 2048, 4096),
                       oom=(("gpt2", "baseline", 4096), ("gpt2", "lsh", 4096)), repeats=2))
    print(make_results(root, stamp="20250103-120000", device="cpu", preset="smoke", models=("tiny",),
                       attentions=("baseline", "sdpa"), seq_lens=(128,), oom=()))
