"""A run's batches, for training and for its held-out evaluation: Tulu chat (data.py) for the lm
task, generated multi-query associative recall (recall.py) for the recall task.

Evaluation batches have the run's own (batch_size, seq_len), so a compiled model evaluates with
the no-grad graph it already has (no recompilation), and there are ceil(eval_tokens / (B x T)) of
them. Held-out Tulu conversations are a split never trained on (data.py, held_out); held-out
MQAR rows come from another seed of the generator.
"""
from __future__ import annotations

from harness.run import data

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
