"""Held-out evaluation of a run and its learning-rate schedule.

evaluate() is a no-grad forward of each held-out batch (the run's own shape: a compiled model
reuses its no-grad graph) and the cross-entropy of every predicted token in fp32, row chunk by
row chunk so the fp32 logits never exceed about EVAL_CHUNK_TOKENS x vocab. It returns the mean
loss (nats/token), its perplexity, top-1 accuracy (on MQAR, the recall accuracy: only the queried
values are labelled) and the loss by position bucket: eval_loss_to_T8 is the mean over predicted
positions 1 .. T/8, eval_loss_to_T4 over T/8 .. T/4, and so on; a long-context mechanism that
forgets shows a later bucket no better than an earlier one. eval_rows() gives each evaluation
the tokens, steady-state seconds and joules spent before it (eval.csv); quality_info() the run's.
"""
from __future__ import annotations

import math
from itertools import accumulate

import torch
import torch.nn.functional as F

from harness.store import median_interval

BUCKETS = (8, 4, 2, 1)      # upper ends T/8, T/4, T/2, T of the position buckets
EVAL_CHUNK_TOKENS = 8192


def bucket_columns() -> list[str]:
    return [f"eval_loss_to_T{d}" if d > 1 else "eval_loss_to_T" for d in BUCKETS]


def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """The learning rate at `step` as a fraction of lr: constant, or linear warm-up over the first
    `warmup` of the steps then a cosine from 1 down to 0.1 at the last step."""
    if schedule == "constant":
        return 1.0
    n_warm = max(1, round(warmup * total)) if warmup else 0
    if step < n_warm:
        return (step + 1) / n_warm
    done = (step - n_warm) / max(1, total - 1 - n_warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def scheduler(opt, cfg, total: int):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total, cfg.lr_schedule, cfg.lr_warmup))


def token_losses(logits, labels):
    """(per-token cross-entropy, correct) of the predicted tokens, both (rows, T - 1), with the
    Hugging Face shift (logits at i predict labels at i + 1); unlabelled positions are 0 / False."""
    target = labels[:, 1:]
    step = max(1, EVAL_CHUNK_TOKENS // max(1, logits.shape[1]))
    losses, correct = [], []
    for r in range(0, logits.shape[0], step):
        lg = logits[r:r + step, :-1].float()
        t = target[r:r + step]
        losses.append(F.cross_entropy(lg.transpose(1, 2), t, ignore_index=-100, reduction="none"))
        correct.append((lg.argmax(-1) == t) & (t != -100))
    return torch.cat(losses), torch.cat(correct)


@torch.no_grad()
def evaluate(model, batches: list[dict], dtype, device) -> dict:
    """The held-out metrics of `model` over `batches` (see the module's docstring)."""
    T = batches[0]["input_ids"].shape[1]
    pos = torch.arange(1, T, device=device)                       # the predicted positions
    edges = [T // d for d in BUCKETS]
    which = torch.bucketize(pos, torch.tensor(edges, device=device), right=False).clamp(max=len(BUCKETS) - 1)
    sums = torch.zeros(len(BUCKETS), device=device, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    hits = torch.zeros((), device=device, dtype=torch.float64)
    for b in batches:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(input_ids=b["input_ids"], attention_mask=b.get("attention_mask")).logits
        loss, correct = token_losses(logits, b["labels"])
        seen = (b["labels"][:, 1:] != -100).double()
        sums.index_add_(0, which, (loss.double() * seen).sum(0))
        counts.index_add_(0, which, seen.sum(0))
        hits += correct.double().sum()
    n = float(counts.sum())
    mean = float(sums.sum()) / n if n else math.nan
    out = dict(eval_loss=mean, eval_ppl=math.exp(mean) if mean == mean and mean < 700 else math.nan,
               eval_accuracy=float(hits) / n if n else math.nan, eval_tokens=int(n))
    for col, s, c in zip(bucket_columns(), sums.tolist(), counts.tolist()):
        out[col] = s / c if c else math.nan
    return out


def eval_rows(run: dict, rows: list[dict], evals: list[dict], warmup: int) -> list[dict]:
    """eval.csv's rows: each evaluation with the tokens, training-step seconds and joules spent
    before it. Warm-up steps (compilation, autotuning) count at the median measured step's time and
    energy, so a budget of time or joules means steady-state training."""
    meas = [r for r in rows if r["phase"] == "measure"]
    med_t = median_interval([r["train_time_s"] for r in meas])[0]
    med_e = median_interval([r["energy_j"] for r in meas])[0]
    # spent before step k = the k-th prefix sum (index 0: nothing yet)
    tokens = [0, *accumulate(r["tokens"] for r in rows)]
    secs = [0.0, *accumulate(med_t if r["step"] < warmup else r["train_time_s"] for r in rows)]
    joules = [0.0, *accumulate(med_e if r["step"] < warmup else r["energy_j"] for r in rows)]
    who = dict(run_id=run["run_id"], model=run["model"], attention=run["attention"], seq_len=run["seq_len"],
               seed=run.get("seed", 0), n_pairs=run.get("n_pairs"))
    return [dict(who, step=ev["step"], tokens_seen=tokens[ev["step"]], train_s_cum=secs[ev["step"]],
                 energy_j_cum=math.nan if math.isnan(med_e) else joules[ev["step"]],
                 **{c: v for c, v in ev.items() if c != "step"}) for ev in evals]


def quality_info(cfg, rows: list[dict], evals: list[dict]) -> dict:
    """The run's quality and budget in its manifest entry: the last evaluation, the first (before
    any training: what the swap alone did, with --init pretrained), tokens, seconds and joules."""
    last = evals[-1] if evals else {}
    first = evals[0] if evals and evals[0]["step"] == 0 and len(evals) > 1 else {}
    acc = last.get("eval_accuracy", math.nan)
    return dict(eval_loss=last.get("eval_loss", math.nan), eval_ppl=last.get("eval_ppl", math.nan),
                eval_accuracy=acc, recall_accuracy=acc if cfg.task == "recall" else math.nan,
                eval_labelled=last.get("eval_tokens", math.nan),  # labelled tokens (MQAR: queries) scored
                eval_loss_start=first.get("eval_loss", math.nan), train_tokens=sum(r["tokens"] for r in rows),
                train_s_total=last.get("train_s_cum", math.nan), energy_j_total=last.get("energy_j_cum", math.nan))
