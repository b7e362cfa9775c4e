"""Tulu v2 (hub) or the bundled sample -> Tulu chat format -> GPT-2 tokens -> batches.

Tokenizer: tokenizer.py (bundled tiktoken offline, GPT2TokenizerFast online).

Chat format: open-instruct's "tulu" template (allenai/open-instruct, CHAT_TEMPLATES["tulu"]):
"<|system|>\n{c}\n", "<|user|>\n{c}\n", "<|assistant|>\n{c}" + eos + "\n" (no "\n" after the last
message); content is not stripped. The text between eos tokens is encoded segment by segment and
joined by the eos id: the ids transformers gives for format_tulu(...), but unforgeable by content.

Records ({"dataset", "id", "messages": [{"role", "content"}]}): offline, JSON lines (the bundled
sample, or cfg.dataset when it is a local path); online, `datasets.load_dataset(..., streaming=True)`
from the hub or a local file/folder, reading only the first records needed. Bad rows are skipped
and counted by reason.

Batches: loaded conversations are shuffled by random.Random(cfg.seed), so every attention sees the
same batches. pack: conversations joined by eos and cut into full seq_len rows (GPT-2 pretraining
style; attention crosses documents), labels = input_ids. pad (the original project): one
conversation per row, truncated, right-padded with eos; attention_mask 0 and labels -100 there.
Too little data is cycled, each pass freshly shuffled; stats counts the passes.

Held-out split: a conversation is held out when a hash of (seed, its text) falls in the lowest
EVAL_PERCENT: fixed by the seed and the record alone (not by how many records a run reads), and
never trained on. split="train" skips those, split="eval" keeps only those.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
from collections import Counter
from contextlib import closing

import torch

from config import is_local_dataset
from harness.errors import UserError, unknown
from harness.run.tokenizer import ASSETS, EOS_TEXT, check_hub, set_offline_env

SAMPLE_FILE = os.path.join(ASSETS, "tulu_sample.jsonl")
ROLES = ("system", "user", "assistant")
CHUNK = 256   # records tokenized per call: big enough for batched encoding, small for lazy loading
_BAD_JSON = object()  # marks a line that is not a JSON object
EVAL_PERCENT = 10     # of the conversations, held out for evaluation
SPLITS = ("train", "eval")


def held_out(messages, seed: int) -> bool:
    """Whether a conversation belongs to the held-out split (of seed)."""
    text = json.dumps([seed, messages], sort_keys=True, ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") % 100 < EVAL_PERCENT


def format_tulu(messages) -> str:
    """The Tulu chat text of a conversation, with the eos as "<|endoftext|>" text."""
    return EOS_TEXT.join(_segments(messages))


def _segments(messages) -> list[str]:
    """The Tulu chat text split at each eos: one more segment than there are eos tokens."""
    segments, current = [], ""
    for i, m in enumerate(messages):
        current += f"<|{m['role']}|>\n{m['content']}"
        if m["role"] == "assistant":  # eos ends the turn; a newline follows unless it is the last message
            segments.append(current)
            current = "\n" if i < len(messages) - 1 else ""
        else:
            current += "\n"
    return segments + [current]


def tokenize_conversations(tokenizer, conversations) -> list[list[int]]:
    """Token ids of each conversation in the Tulu format, the eos ids placed by the format."""
    segs = [_segments(msgs) for msgs in conversations]
    flat = iter(tokenizer.encode_batch([s for group in segs for s in group]))  # one batched call: fast
    out = []
    for group in segs:
        ids = list(next(flat))
        for _ in group[1:]:
            ids.append(tokenizer.eos_id)
            ids += next(flat)
        out.append(ids)
    return out


def _problem(rec) -> str | None:
    """Why a record cannot be used, or None."""
    if rec is _BAD_JSON or not isinstance(rec, dict):
        return "not_a_json_object"
    msgs = rec.get("messages")
    if msgs is None or (isinstance(msgs, list) and not msgs):
        return "no_messages"
    if not isinstance(msgs, list):
        return "messages_not_a_list"
    for m in msgs:
        if not isinstance(m, dict):
            return "message_not_an_object"
        if m.get("role") not in ROLES:
            return "unknown_role"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return "empty_content"
    return None


def _open_source(cfg):
    """(iterator of raw records, description of the source) for cfg's dataset, offline or not."""
    local = is_local_dataset(cfg.dataset)
    path = os.path.abspath(os.path.expanduser(cfg.dataset)) if local else None
    if local and not os.path.exists(path):
        raise UserError(f"dataset not found: {path}")
    if cfg.offline:
        set_offline_env()
        return _read_jsonl(path or SAMPLE_FILE), (f"file {path}" if local else "bundled assets/tulu_sample.jsonl")
    if not local:
        check_hub(f"the dataset '{cfg.dataset}'")
    return _stream_datasets(cfg.dataset, path), (f"datasets {path}" if local else f"hub {cfg.dataset}")


def _read_jsonl(path: str):
    """Records from a JSON-lines file or folder of them, read lazily, with no hub library imported."""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith((".jsonl", ".json")))
    if not files:
        raise UserError(f"no .jsonl or .json files in the dataset folder {path}")
    for file in files:
        try:
            with open(file, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError:
                            yield _BAD_JSON
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the dataset file {file}: {e}") from e


def _stream_datasets(dataset: str, path: str | None):
    """The real (Colab) path: `datasets` streaming, which reads only the records taken."""
    try:
        import datasets
    except ImportError as e:
        raise UserError("the online data path needs `datasets`: pip install datasets "
                        "(or run with --offline to use the bundled sample)") from e
    try:
        if path and os.path.isfile(path):
            builder = "parquet" if path.endswith(".parquet") else "json"
            ds = datasets.load_dataset(builder, data_files=path, split="train", streaming=True)
        else:
            ds = datasets.load_dataset(path or dataset, split="train", streaming=True)
        yield from ds
    except Exception as e:  # network, schema and format errors alike: name the dataset and the cause
        raise UserError(f"cannot read the dataset '{dataset}': {type(e).__name__}: {e}") from e


def _usable(records, skipped: Counter, split: str | None = None, seed: int = 0):
    """Usable conversations; with a split, only those of that split."""
    for rec in records:
        reason = _problem(rec)
        if reason:
            skipped[reason] += 1
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
        if split is None or held_out(messages, seed) == (split == "eval"):
            yield messages


def _nothing_usable(source: str, skipped: Counter, split: str | None = None) -> UserError:
    why = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items())) or "it is empty"
    part = f" (its {split} split)" if split else ""
    return UserError(f"no usable conversations in {source}{part}: skipped {why}")


def load_records(cfg, limit: int):
    """The first `limit` usable conversations (lists of messages) and stats about the reading."""
    records, source = _open_source(cfg)
    skipped = Counter()
    with closing(records):
        convs = list(itertools.islice(_usable(records, skipped), limit))
    if not convs:
        raise _nothing_usable(source, skipped)
    return convs, {"source": source, "records_used": len(convs), "records_skipped": dict(skipped),
                   "exhausted": len(convs) < limit}


def _load_docs(cfg, tokenizer, need: int, pack: bool, split: str):
    """Tokenized conversations of a split, read chunk by chunk until `need` tokens (pack) or rows (pad)."""
    records, source = _open_source(cfg)
    skipped, docs, have = Counter(), [], 0
    with closing(records):
        usable = _usable(records, skipped, split, cfg.seed)
        while have < need:
            chunk = list(itertools.islice(usable, CHUNK))
            for ids in tokenize_conversations(tokenizer, chunk):
                if pack and ids[-1] != tokenizer.eos_id:
                    ids.append(tokenizer.eos_id)  # eos separates documents in the packed stream
                docs.append(ids)
                have += len(ids) if pack else 1
            if len(chunk) < CHUNK:
                break
    if not docs:
        raise _nothing_usable(source, skipped, split)
    return docs, {"source": source, "split": split, "tokenizer": tokenizer.source, "records_loaded": len(docs),
                  "records_skipped": dict(skipped), "data_exhausted": have < need}


def _shuffled(n: int, rng: random.Random, passes: Counter):
    """Indices 0..n-1, freshly shuffled on each pass, without end: a second pass means cycling."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        passes["passes"] += 1
        yield from order


def _pack(docs, seq_len: int, rows: int, rng: random.Random):
    need, stream, used, passes = rows * seq_len, [], set(), Counter()
    for i in _shuffled(len(docs), rng, passes):
        stream += docs[i]
        used.add(i)
        if len(stream) >= need:  # stop before drawing again, which would start a pass
            break
    ids = torch.tensor(stream[:need], dtype=torch.long).view(rows, seq_len)  # (rows, T)
    return ids, torch.ones_like(ids), {**passes, "records_used": len(used)}


def _pad(docs, seq_len: int, rows: int, rng: random.Random, eos: int):
    passes = Counter()
    order = list(itertools.islice(_shuffled(len(docs), rng, passes), rows))
    ids = torch.full((rows, seq_len), eos, dtype=torch.long)  # (rows, T), right padding with eos
    mask = torch.zeros((rows, seq_len), dtype=torch.long)
    for r, i in enumerate(order):
        n = min(len(docs[i]), seq_len)
        ids[r, :n] = torch.tensor(docs[i][:n], dtype=torch.long)
        mask[r, :n] = 1
    truncated = sum(len(docs[i]) > seq_len for i in order)
    return ids, mask, {**passes, "records_used": len(set(order)), "rows_truncated": truncated}


def make_batches(cfg, tokenizer, seq_len: int, batch_size: int, n_batches: int, split: str = "train"):
    """n_batches dicts of (B, T) long tensors input_ids, labels, attention_mask; and stats."""
    for name, v, low in (("seq_len", seq_len, 2), ("batch_size", batch_size, 1), ("n_batches", n_batches, 1)):
        if not isinstance(v, int) or v < low:
            raise UserError(f"{name} must be an integer >= {low}, got {v!r}")
    if cfg.packing not in ("pack", "pad"):
        raise unknown("packing", cfg.packing, ["pack", "pad"])
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    pack, rows = cfg.packing == "pack", batch_size * n_batches
    docs, stats = _load_docs(cfg, tokenizer, rows * seq_len if pack else rows, pack, split)
    rng = random.Random(cfg.seed)  # depends on the seed and the data only: the same for every attention
    ids, mask, more = _pack(docs, seq_len, rows, rng) if pack else _pad(docs, seq_len, rows, rng, tokenizer.eos_id)
    labels = ids.masked_fill(mask == 0, -100)  # -100: ignored by the loss
    batches = [{"input_ids": ids[i:i + batch_size].clone(), "labels": labels[i:i + batch_size].clone(),
                "attention_mask": mask[i:i + batch_size].clone()} for i in range(0, rows, batch_size)]
    stats.update(more, packing=cfg.packing, seed=cfg.seed, seq_len=seq_len, batch_size=batch_size,
                 n_batches=n_batches, tokens=ids.numel(), real_tokens=int(mask.sum()), cycled=more["passes"] > 1)
    return batches, stats


def synthetic(source: str | None) -> bool:
    """Whether a data source (stats["source"], the manifest's data source) is the bundled sample:
    synthetic text, whose loss is no quality signal."""
    return bool(source) and source.startswith("bundled")


def describe(stats: dict) -> str:
    """One line on what the data was: its source (and whether synthetic), the tokenizer, the
    records used and skipped by cause, and whether it was cycled; for generated data (the recall
    probe) its shape instead, since it has no tokenizer, records or passes."""
    source = stats.get("source", "?")
    if "n_pairs" in stats and "records_used" not in stats:
        return (f"data: {source}; {stats['n_pairs']} key-value pairs a row, vocabulary {stats.get('vocab', '?')}, "
                f"{stats.get('queries', 0):,} queried values, seed {stats.get('seed', '?')}; chance "
                f"{stats.get('chance_accuracy', math.nan):.2g}, no recall {stats.get('no_recall_accuracy', math.nan):.2g}")
    if synthetic(source):
        source += " (synthetic, Tulu-shaped: assets/make_sample.py; its loss is no quality signal)"
    skipped = stats.get("records_skipped") or {}
    skip = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none"
    passes = stats.get("passes", 1)
    cycled = f"cycled: {passes} passes over too few tokens" if stats.get("cycled") else "not cycled"
    return (f"data: {source}; tokenizer {stats.get('tokenizer', '?')}; {stats.get('records_used', '?')} records "
            f"used, skipped: {skip}; {cycled}")
