"""A run's batches, for training and for its held-out evaluation: Tulu chat (data.py) for the lm
task, generated multi-query associative recall (recall.py) for the recall task.

Evaluation batches have the run's own (batch_size, seq_len), so a compiled model evaluates with
the no-grad graph it already has (no recompilation), and there are ceil(eval_tokens / (B x T)) of
them. Held-out Tulu conversations are a split never trained on (data.py, held_out); held-out
MQAR rows come from another seed of the generator.

On the device (on_device): Tulu batches are moved there before the timed loop, all of them; MQAR
batches are made as they are read (recall.RecallBatches), each moved to the device when the loop
reads it, before the step's measurement window opens.
"""
from __future__ import annotations

from collections.abc import Sequence

from harness.run import data, ddp

EVAL_SEED_OFFSET = 1_000_003  # MQAR's held-out rows: the generator at seed + this


def data_key(run: dict) -> str:
    """The name of a run's batches: runs of one shape (and MQAR pair count) share them."""
    return f"T{run['seq_len']}_B{run['batch_size']}" + (f"_P{run['n_pairs']}" if run.get("n_pairs") else "")


def eval_count(cfg, run: dict) -> int:
    """Evaluation batches of a run: 0 without evaluation."""
    tokens = run["seq_len"] * run["batch_size"]
    return -(-cfg.eval_tokens // tokens) if cfg.eval_tokens else 0


def train_batches(cfg, tokenizer, run: dict):
    """The run's training batches and their stats."""
    T, B = run["seq_len"], run["batch_size"]
    if cfg.task == "recall":
        from harness.run import recall
        return recall.make_recall_batches(T, B, cfg.n_batches, run["n_pairs"], cfg.seed, cfg.recall_vocab)
    return data.make_batches(cfg, tokenizer, T, B, cfg.n_batches, split="train")


def eval_batches(cfg, tokenizer, run: dict):
    """The run's held-out batches and their stats; ([], {}) without evaluation."""
    n = eval_count(cfg, run)
    if not n:
        return [], {}
    T, B = run["seq_len"], run["batch_size"]
    if cfg.task == "recall":
        from harness.run import recall
        return recall.make_recall_batches(T, B, n, run["n_pairs"], cfg.seed + EVAL_SEED_OFFSET, cfg.recall_vocab)
    return data.make_batches(cfg, tokenizer, T, B, n, split="eval")


def run_data(cfg, tokenizer, run: dict) -> dict:
    """{"batches", "stats", "eval", "eval_stats"}: what a run reads before its timed loop."""
    bat, stats = train_batches(cfg, tokenizer, run)
    ev, ev_stats = eval_batches(cfg, tokenizer, run)
    return {"batches": bat, "stats": stats, "eval": ev, "eval_stats": ev_stats}


def to_device(batches: list[dict], device) -> tuple[list[dict], list[int]]:
    """Batches on the device, and their real-token counts. No mask for a batch without padding:
    the model then needs no per-step check (a GPU sync)."""
    real = [int(b["attention_mask"].sum()) for b in batches]  # counted on the host, before the loop
    batches = [{k: v for k, v in b.items() if k != "attention_mask" or r < v.numel()}
               for b, r in zip(batches, real)]
    return [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in batches], real


class MadeOnRead(Sequence):
    """Generated batches without padding (recall.RecallBatches), this rank's rows of each moved
    to the device when read. The last batch read is kept: the loop and its batches.csv row read
    it twice. Every batch has the same shape."""

    def __init__(self, host: Sequence, device):
        self.host, self.device, self.last = host, device, (None, None)

    def __len__(self) -> int:
        return len(self.host)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self.last[0] != i:
            part = ddp.shard_batches([self.host[i]])[0]  # torchrun: this rank's rows
            self.last = (i, {k: v.to(self.device, non_blocking=True) for k, v in part.items()
                             if k != "attention_mask"})  # all ones: no padding in generated rows
        return self.last[1]


def on_device(batches, device) -> tuple[Sequence, list[int]]:
    """A run's training batches on the device, and their real-token counts (to_device): a list
    for batches made beforehand, MadeOnRead for generated ones."""
    if isinstance(batches, list):
        return to_device(ddp.shard_batches(batches), device)
    lazy = MadeOnRead(batches, device)
    return lazy, [lazy[0]["input_ids"].numel()] * len(lazy)
