"""lsh's FlexAttention path (impl="flex", CUDA): all chunks of all rounds as ONE flex_attention
call over compact rows (attentions/lsh.py describes the algorithm; FlexAttention: Dong et al.
2024, torch.nn.attention.flex_attention).
"""
from typing import NamedTuple

import torch

from attentions.common import compiled_flex
from attentions.lsh_layout import Assignment, place, take

FLEX_BLOCK = 128  # FlexAttention's block size: the flex path's rows are padded to a multiple of it


class FlexRows(NamedTuple):
    """lsh's compact FlexAttention layout (rows of L = T rounded up to FLEX_BLOCK per (batch, head,
    round)): queries in the order of their slots, keys in the order of theirs - no empty, padding
    or other-kind slots. q_rank/k_rank (B, H, R, T) give each query's/key's row; the rest are
    (B, H*R, L), rounds as heads."""
    q_rank: torch.Tensor
    k_rank: torch.Tensor
    q_code: torch.Tensor    # int32 bucket * span + slot of each query row (0 on the padding rows)
    k_code: torch.Tensor    # int32 the same for each real key, UNSEEN for padded keys and padding rows
    q_first: torch.Tensor   # (B, H*R, L / FLEX_BLOCK) first key row each query block can see
    q_last: torch.Tensor    # (B, H*R, L / FLEX_BLOCK) last one (< q_first: none)


UNSEEN = -(2 ** 30)  # k_code of keys no query sees: below every query's window


def flex_rows(a: Assignment, c):
    """The compact layout of an assignment. A query at slot s of bucket b sees the real keys of
    bucket b at slots (s // c - 1) * c .. s - 1. Coding each item as b * span + slot (span >= S + c,
    a multiple of c) turns that into ONE window of codes, (q_code // c - 1) * c <= k_code < q_code:
    the bucket check is in it, and the mask reads one int32 per query row and one per key row."""
    B, H, R, T = a.q_slot.shape
    S = a.slot_bucket.shape[-1]
    L = -(-T // FLEX_BLOCK) * FLEX_BLOCK
    span = (S // c + 1) * c
    # S >= nb * (c - 1) (n_slots), so codes < nb * span <= (S / (c - 1) + 1) * span: int32 if that fits
    small = (S // max(c - 1, 1) + 1) * span < 2 ** 31

    def before(slot):
        """(B, H, R, S + 1): how many of these items sit at slots < s. Slots are unique, so
        before(slot)[slot[t]] is item t's row in slot order (no sort); for keys it also gives the
        key rows of a slot range (a cumsum: inductor could not lower torch.searchsorted here)."""
        return torch.zeros(B, H, R, S + 1, dtype=torch.int32, device=slot.device).scatter_(
            -1, slot + 1, 1).cumsum(-1, dtype=torch.int32)

    def in_rows(x, rank, pad):
        """(B, H, R, T) -> (B, H*R, L): each item's value at its row, pad on the rows past T."""
        return x.new_full((B, H, R, L), pad).scatter_(-1, rank, x).flatten(1, 2)

    keys_before = before(a.k_slot)
    q_rank = before(a.q_slot).gather(-1, a.q_slot).long()
    k_rank = keys_before.gather(-1, a.k_slot).long()
    k_real = a.slot_isk.gather(-1, a.k_slot)
    dtype = torch.int32 if small else torch.int64
    q_code = in_rows((a.hq * span + a.q_slot).to(dtype), q_rank, 0)
    k_code = in_rows(torch.where(k_real, a.hk * span + a.k_slot, UNSEEN).to(dtype), k_rank, UNSEEN)
    # per query block: the key rows from its first query's window start to its last query's slot
    q_slot = in_rows(a.q_slot, q_rank, 0)
    first = q_slot[..., ::FLEX_BLOCK]
    block_end = torch.arange(1, L // FLEX_BLOCK + 1, device=q_slot.device) * FLEX_BLOCK - 1
    last = q_slot[..., block_end.clamp(max=T - 1)]                  # a block's last real query
    keys_before = keys_before.flatten(1, 2)
    q_first = keys_before.gather(-1, (first // c - 1).clamp(min=0) * c)
    q_last = keys_before.gather(-1, last) - 1
    return FlexRows(q_rank, k_rank, q_code, k_code, q_first, q_last)


def window_mask(q_code, k_code, c):
    """mask_mod of the compact layout: the key's code in the query's window (see flex_rows)."""
    def mask_mod(b, h, q_idx, kv_idx):
        q, k = q_code[b, h, q_idx], k_code[b, h, kv_idx]
        return (k < q) & (k >= (q // c - 1) * c)
    return mask_mod


def rows_block_mask(r: FlexRows, c):
    """The BlockMask of the compact layout: query block i visits the key blocks holding key rows
    q_first[i] .. q_last[i] (contiguous: keys are in slot order), window_mask inside them."""
    from torch.nn.attention.flex_attention import BlockMask
    L = r.q_code.shape[-1]
    n = L // FLEX_BLOCK
    lo = (r.q_first // FLEX_BLOCK).clamp(max=n - 1)
    hi = (torch.maximum(r.q_last, r.q_first) // FLEX_BLOCK).clamp(max=n - 1)
    idx = (lo.unsqueeze(-1) + torch.arange(n, device=lo.device)).clamp(max=n - 1)
    return BlockMask.from_kv_blocks((hi - lo + 1).int(), idx.int(), BLOCK_SIZE=FLEX_BLOCK,
                                    seq_lengths=(L, L), mask_mod=window_mask(r.q_code, r.k_code, c))


def _flex_lse(flex, q, k, v, block_mask, scale):
    """flex_attention's output and its (differentiable, natural-log) log-sum-exp."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # torch < 2.9
        return flex(q, k, v, block_mask=block_mask, scale=scale, return_lse=True)
    out, aux = flex(q, k, v, block_mask=block_mask, scale=scale, return_aux=AuxRequest(lse=True))
    return out, aux.lse


def flex_chunk_attention(query, key, value, a, c, scaling, flex=None):
    """chunk_attention as one FlexAttention call over the compact layout (flex_rows), rounds as
    heads: the same keys per query, no scores in memory, and only the T query rows and T key rows
    of each round. Rows without keys (lse -inf) get only their own key. flex: the flex_attention
    to call (default compiled; tests pass eager)."""
    B, H, R, T = a.q_slot.shape
    D = query.shape[-1]
    with torch.no_grad():
        r = flex_rows(a, c)
    L = r.q_code.shape[-1]
    qc = place(query, r.q_rank, L).flatten(1, 2)                                 # (B, H*R, L, D)
    kc, vc = (place(x, r.k_rank, L).flatten(1, 2) for x in (key, value))
    out, lse = _flex_lse(flex or compiled_flex(), qc, kc, vc, rows_block_mask(r, c), scaling)
    out = take(out.view(B, H, R, L, D), r.q_rank).float()                        # (B, H, R, T, D)
    lse = lse.view(B, H, R, L).float().gather(-1, r.q_rank)
    own = ((query * key).sum(-1).float() * scaling).unsqueeze(2)                   # (B, H, 1, T)
    total = torch.logaddexp(lse, own)
    out = (lse - total).exp().unsqueeze(-1) * out + (own - total).exp().unsqueeze(-1) * value.float().unsqueeze(2)
    return out, total


