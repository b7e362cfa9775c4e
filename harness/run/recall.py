"""A recall probe that needs no download: multi-query associative recall (MQAR).

MQAR is from Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language
Models" (zoology/data/associative_recall.py, multiquery_ar). Efficient attentions (linear, sparse,
hashed) can match exact attention's perplexity and still fail at recall; MQAR measures recall
directly: a row lists key-value pairs, then asks for the value of each key again later.

Row layout (length T, n pairs; "_" is the filler, token 0):

    k1 v1 k2 v2 ... kn vn | _ _ kq _ _ _ _ _ kr _ _ ...
    labels:                       vq          vr          (-100 everywhere else)

- keys are distinct within a row, from [1, vocab // 2); values are distinct within a row too,
  from [vocab // 2, vocab), as in Zoology;
- every key is queried once, in a random order: the rest of the row is cut into (T - 2n) // 2
  two-token slots and each query takes a distinct slot, drawn uniformly (an odd T leaves one
  filler at the end). The gap between a key and its query ranges from 2 up to T - 2 tokens.
  Zoology draws the slots from a power law (power_a = 0.01) that favours early slots, i.e. short
  gaps; uniform slots make long gaps as common as short ones;
- as in Zoology, the slot after a query key holds the filler, not the value: the answer is only
  in the labels. Were the answers shown, a model that cannot bind keys to values could still
  rule out the values already answered and score (1 + 1/2 + ... + 1/n) / n (52% with 4 pairs)
  instead of 1/n. The filler is token 0 (Zoology by default draws it at random).

labels follow Hugging Face's GPT2LMHeadModel convention (the model shifts: the logits at position
i predict labels[i + 1]): labels[j] is the value of the key at j - 1 at each slot after a query
(input_ids[j] is the filler there), -100 everywhere else, the key-value pairs included.

Two baselines in the stats: chance_accuracy (a uniform guess among all values) and
no_recall_accuracy = 1 / n (knows the row's n values, not which key each belongs to: what a
model that has not learnt recall plateaus at).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from config import PRETRAINED_MAX_POSITIONS as PRETRAINED_POSITIONS, RECALL_VOCAB
from harness.errors import UserError

VOCAB = RECALL_VOCAB  # the probe model's default vocabulary: 4095 keys, 4096 values
IGNORE = -100   # Hugging Face's ignored label


def _check_positive(**ints) -> None:
    for name, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(f"recall probe: {name} must be a positive integer, got {value!r}")


def check_recall_args(seq_len: int, batch_size: int, n_batches: int, n_pairs: int,
                      vocab: int = VOCAB) -> None:
    """Raise UserError unless an MQAR set of these sizes can be built."""
    _check_positive(seq_len=seq_len, batch_size=batch_size, n_batches=n_batches,
                    n_pairs=n_pairs, vocab=vocab)
    if 4 * n_pairs > seq_len:
        raise UserError(f"recall probe: {n_pairs} pairs need seq_len >= {4 * n_pairs} "
                        f"(2 x {n_pairs} tokens for the pairs, 2 x {n_pairs} for the queries), "
                        f"got seq_len {seq_len}")
    n_keys = vocab // 2 - 1  # token 0 is the filler
    if n_keys < n_pairs:
        raise UserError(f"recall probe: vocab {vocab} has {max(n_keys, 0)} keys ([1, {vocab // 2})), "
                        f"too few for {n_pairs} distinct keys per row: use vocab >= {2 * n_pairs + 2}")


def _distinct(generator: torch.Generator, rows: int, choices: int, k: int) -> torch.Tensor:
    """(rows, k) long: a uniform random k-subset of [0, choices) per row, in a random order.

    k well below choices (keys and values of a large vocabulary): draw k with replacement and
    redraw the repeats until none are left; the process treats every index alike, so the subset
    is uniform, at a cost of O(k) per row instead of O(choices). Otherwise: the top k of uniform
    noise over all choices."""
    if 2 * k > choices:
        return torch.rand(rows, choices, generator=generator).topk(k, dim=1).indices
    draw = torch.randint(choices, (rows, k), generator=generator)
    while True:
        draw = draw.sort(dim=1).values
        repeat = torch.zeros_like(draw, dtype=torch.bool)
        repeat[:, 1:] = draw[:, 1:] == draw[:, :-1]
        n_repeats = int(repeat.sum())
        if n_repeats == 0:
            break
        draw[repeat] = torch.randint(choices, (n_repeats,), generator=generator)
    order = torch.rand(rows, k, generator=generator).argsort(dim=1)  # sorted -> random order
    return draw.gather(1, order)


def _batch(generator: torch.Generator, seq_len: int, rows: int, n_pairs: int, vocab: int) -> dict:
    half = vocab // 2
    keys = _distinct(generator, rows, half - 1, n_pairs) + 1
    values = _distinct(generator, rows, vocab - half, n_pairs) + half
    slots = _distinct(generator, rows, (seq_len - 2 * n_pairs) // 2, n_pairs)
    input_ids = torch.zeros(rows, seq_len, dtype=torch.long)
    input_ids[:, 0:2 * n_pairs:2] = keys
    input_ids[:, 1:2 * n_pairs:2] = values
    query = 2 * n_pairs + 2 * slots  # where each key is asked again
    input_ids.scatter_(1, query, keys)  # the slot after it stays filler: the answer is a label only
    labels = torch.full_like(input_ids, IGNORE)
    labels.scatter_(1, query + 1, values)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": torch.ones_like(input_ids)}


_MIX = 0x9E3779B97F4A7C15  # odd: (seed, i) -> seed * _MIX + i mod 2**64 differs for every i of one seed


class RecallBatches(Sequence):
    """n MQAR batches, each made when it is read: batch i comes from the generator seeded with
    (seed, i) alone, so any batch can be read in any order, by any process, and is the same every
    time. Nothing is stored: 6000 steps of 64 rows of 1024 tokens would be 9.4 GB of tensors."""

    def __init__(self, seq_len: int, rows: int, n: int, n_pairs: int, seed: int, vocab: int):
        self.seq_len, self.rows, self.n, self.n_pairs, self.seed, self.vocab = seq_len, rows, n, n_pairs, seed, vocab

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(f"MQAR batch {i} of {self.n}")
        i %= self.n
        generator = torch.Generator().manual_seed((self.seed * _MIX + i) % 2 ** 64)
        return _batch(generator, self.seq_len, self.rows, self.n_pairs, self.vocab)


def make_recall_batches(seq_len: int, batch_size: int, n_batches: int, n_pairs: int, seed: int,
                        vocab: int = VOCAB) -> tuple[RecallBatches, dict]:
    """n_batches MQAR batches of (batch_size, seq_len) long tensors input_ids, labels and
    attention_mask (all ones), made as they are read (RecallBatches), and their stats. The same
    arguments give the same batches."""
    check_recall_args(seq_len, batch_size, n_batches, n_pairs, vocab)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise UserError(f"recall probe: seed must be an integer in [0, 2**64), got {seed!r}")
    batches = RecallBatches(seq_len, batch_size, n_batches, n_pairs, seed, vocab)
    stats = {"source": "mqar (generated, Arora et al. 2023)", "n_pairs": n_pairs, "vocab": vocab,
             "seed": seed, "seq_len": seq_len, "batch_size": batch_size, "n_batches": n_batches,
             "tokens": n_batches * batch_size * seq_len,
             "queries": n_batches * batch_size * n_pairs,  # one labelled value per pair per row
             "chance_accuracy": 1 / (vocab - vocab // 2), "no_recall_accuracy": 1 / n_pairs}
    return batches, stats


def recall_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) over the labelled positions: argmax of logits[:, :-1] against
    labels[:, 1:] (the HF shift), -100 ignored. logits (B, T, V) in any float dtype."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise UserError(f"recall_accuracy: logits (B, T, V) and labels (B, T) expected, "
                        f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
    predicted = logits[:, :-1].argmax(dim=-1)  # argmax reads fp16/bf16 as they are: no fp32 copy
    target = labels[:, 1:].to(predicted.device)
    counted = target != IGNORE
    correct = (predicted == target) & counted
    return int(correct.sum()), int(counted.sum())


def model_config(seq_len: int, vocab: int = VOCAB, n_layer: int = 2, n_embd: int = 128,
                 n_head: int = 4):
    """The probe's small GPT-2 (Zoology trains 2 layers, d_model 64..512), built like
    harness.run.model.gpt2_config: no dropout, eager attention until one is installed, no cache."""
    from transformers import GPT2Config
    _check_positive(seq_len=seq_len, vocab=vocab, n_layer=n_layer, n_embd=n_embd, n_head=n_head)
    if n_embd % n_head:
        raise UserError(f"recall probe: n_embd {n_embd} is not a multiple of n_head {n_head}")
    return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab,
                      n_positions=max(PRETRAINED_POSITIONS, seq_len),
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      attn_implementation="eager", use_cache=False,
                      bos_token_id=None, eos_token_id=None)
