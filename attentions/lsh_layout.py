"""lsh's slot layout: where each query and key of a hash round sits once the round's 2T items are
sorted by (bucket, position) and each bucket is padded to whole chunks, and the scatters and the
gather that move vectors into that layout and each query's row out of it (attentions/lsh.py
says how the layout is used; Kitaev et al. 2020, Reformer, section 2.2, with per-bucket chunks).
"""
from typing import NamedTuple

import torch


def n_slots(T, c, nb):
    """Slots of the chunked layout: a bound on the 2T items with every bucket padded to whole
    chunks of c, rounded up to a multiple of c."""
    return -(-(2 * T + nb * (c - 1)) // c) * c


class Assignment(NamedTuple):
    hq: torch.Tensor          # (B, H, R, T) bucket of each query
    hk: torch.Tensor          # (B, H, R, T) bucket of each key
    q_slot: torch.Tensor      # (B, H, R, T) slot of each query in the chunked layout
    k_slot: torch.Tensor      # (B, H, R, T) slot of each key
    slot_isk: torch.Tensor    # (B, H, R, S) slot holds a real (unpadded) key
    slot_bucket: torch.Tensor  # (B, H, R, S) bucket of the slot's item, -1 if empty
    bucket_slot: torch.Tensor  # (B, H, R, nb) first slot of each bucket (a multiple of c)


def slots(hq, hk, key_real, c, nb):
    """Per-bucket chunked layout of the 2T items; bucket regions padded to whole chunks of c."""
    T = hq.shape[-1]
    pos = torch.arange(T, device=hq.device)
    bucket = torch.cat([hq, hk], dim=-1)                                  # (B, H, R, 2T)
    item_pos = torch.cat([pos, pos]).expand_as(bucket)
    is_key = torch.cat([torch.zeros_like(pos), torch.ones_like(pos)])     # query before key at a tie
    order = (bucket * 2 * T + 2 * item_pos + is_key).argsort(dim=-1)      # sort by (bucket, position)
    sorted_bucket = bucket.gather(-1, order)
    counts = torch.zeros(*bucket.shape[:-1], nb, dtype=torch.long, device=hq.device)
    counts.scatter_add_(-1, bucket, torch.ones_like(bucket))
    start = counts.cumsum(-1) - counts                                    # first sorted index per bucket
    padded = (counts + c - 1) // c * c
    pstart = padded.cumsum(-1) - padded                                   # first slot per bucket
    rank = torch.arange(2 * T, device=hq.device) - start.gather(-1, sorted_bucket)
    item_slot = torch.empty_like(order).scatter_(-1, order, pstart.gather(-1, sorted_bucket) + rank)
    S = n_slots(T, c, nb)                                                 # bound on sum(padded)
    shape = (*bucket.shape[:-1], S)
    q_slot, k_slot = item_slot[..., :T], item_slot[..., T:]
    return Assignment(
        hq, hk, q_slot, k_slot,
        torch.zeros(shape, dtype=torch.bool, device=hq.device).scatter_(-1, k_slot, key_real.expand_as(hk)),
        torch.full(shape, -1, dtype=torch.long, device=hq.device).scatter_(-1, item_slot, bucket), pstart)


def orders(a: Assignment):
    """(B, H, R, T) each query's and each key's index in its bucket's (position, query before key)
    order: it counts only the items of its bucket at or before its position."""
    return a.q_slot - a.bucket_slot.gather(-1, a.hq), a.k_slot - a.bucket_slot.gather(-1, a.hk)


def round_codes(a: Assignment, c):
    """(B, H, T, R) per query and per key its code in every round, bucket * big + chunk: key j is
    in query i's window of round r (given j < i) iff 0 <= q[i, r] - k[j, r] <= 1 (same bucket,
    own or previous chunk; big >= the chunks per bucket + 2, so no other bucket is that close)."""
    T = a.hq.shape[-1]
    big = 2 * T // c + 2
    q_order, k_order = orders(a)
    dtype = torch.int32 if a.bucket_slot.shape[-1] * big < 2 ** 31 else torch.long
    return ((a.hq * big + q_order // c).to(dtype).transpose(-1, -2),
            (a.hk * big + k_order // c).to(dtype).transpose(-1, -2))


def place(x, slot, S):
    """x (B, H, T, D) -> (B, H, R, S, D): item t's vector at slot slot[..., t] of each round,
    zeros elsewhere. A scatter, not a gather from the slots: each item has ONE slot, so the
    backward is a gather (grad at the item's slot), where a gather's backward is a scatter_add
    (atomics, and the empty slots all hitting one address)."""
    B, H, R, T = slot.shape
    D = x.shape[-1]
    index = slot.unsqueeze(-1).expand(B, H, R, T, D)
    return x.new_zeros(B, H, R, S, D).scatter(3, index, x.unsqueeze(2).expand(B, H, R, T, D))


def place_flat(x, slot, S, lead):
    """x (B, H, T, D) -> (lead + B*H*R*S, D): place() for all (batch, head, round) rows in one flat
    layout after `lead` empty slots, so that a chunk and the chunk before it are both views."""
    B, H, R, T = slot.shape
    D = x.shape[-1]
    row = torch.arange(B * H * R, device=slot.device).view(B, H, R, 1) * S
    index = (slot + row + lead).view(B * H * R * T, 1).expand(-1, D)
    src = x.unsqueeze(2).expand(B, H, R, T, D).reshape(B * H * R * T, D)
    return x.new_zeros(lead + B * H * R * S, D).scatter(0, index, src)


class TakeSlots(torch.autograd.Function):
    """x.gather(3, index) for an index that never repeats (each query has one slot): the backward
    is a plain scatter into zeros, not scatter_add's atomics."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.slots = x.shape[3]
        return x.gather(3, index)

    @staticmethod
    def backward(ctx, grad):
        index, = ctx.saved_tensors
        shape = (*grad.shape[:3], ctx.slots, *grad.shape[4:])
        return grad.new_zeros(shape).scatter(3, index, grad), None


def take(x, slot):
    """x (B, H, R, S, D) -> (B, H, R, T, D): each query's row, at its slot."""
    return TakeSlots.apply(x, slot.unsqueeze(-1).expand(*slot.shape, x.shape[-1]))


def key_buckets(a: Assignment):
    """(B, H, R, S) the bucket of each slot's real key, -2 (no bucket) for every other slot."""
    return torch.where(a.slot_isk, a.slot_bucket, -2)
