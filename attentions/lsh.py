"""lsh: Reformer-style LSH attention (Kitaev et al. 2020), strictly causal.

Hashing: angular LSH with random rotations (Andoni et al. 2015): bucket(x) = argmax([xR; -xR]),
R a fixed random (D, n_buckets/2) matrix per layer, head and hash round (seeded). Reformer ties
Q and K (shared-QK); GPT-2 has separate Q and K projections, so here q and k are both hashed
with the same rotations: a query lands in the bucket of keys pointing the same way.

Sorting and chunking: per round, all 2T items (T queries, T keys) are sorted by (bucket,
position), and each bucket's items are cut into chunks of bucket_size; a query attends to the
keys of its own chunk and of the previous chunk of the same bucket, earlier in position than
itself (causal by ORIGINAL position), padded keys masked, plus always its own key.

Why chunks restart at each bucket (a deviation from Reformer, which chunks the global sorted
order): with global chunks a token's chunk depends on how many LATER tokens fell into lower
buckets, so future tokens change which past keys a query sees - the model could read the future
through the sort. Chunking per bucket by rank makes the set a query sees depend only on tokens
at or before it. Each bucket is padded to whole chunks in a slot layout of fixed size, so it all
runs as batched matmuls: memory O(n_hashes * T * bucket_size), linear in T.

Kernels: impl="auto" (the default) is "flex" on CUDA and "matmul" elsewhere.

impl="flex" runs the chunks on CUDA as ONE FlexAttention call (flex_chunk_attention), rounds as
extra heads, over COMPACT ROWS (flex_rows): per (batch, head, round) the T queries in the order
of their slots and the T keys in the order of theirs. Each item carries one int32 code, bucket *
span + slot, and a query sees exactly the keys whose code lies in [(code // c - 1) * c, code): its
bucket, its own and the previous chunk, earlier in position (window_mask: one load per query row,
one per key row). Since both orders are slot order, each block of 128 queries needs one run of
key blocks (rows_block_mask, about 2.25 of 16 at T = 2048). flex differentiates the returned
log-sum-exp, which combines the rounds. On the H200 (2026-11-29, 131k tokens, T = 2048, fwd+bwd,
compiled) it takes 11.5 ms, baseline 23.8 ms; peak memory 4.4 GB at every T.

impl="matmul" runs batched matmuls per chunk over the SLOT layout (chunk_attention), on every
device: all 2T items at their slots, each bucket padded to whole chunks (S ~ 3T rows). The items
are SCATTERED into the slot layout (each has one slot, so the backward is a gather; gathering from
the slots made the backward scatter_add with atomics), keys and values into one flat layout whose
chunk views need no copies, and each query's row is taken back with a gather whose backward is a
plain scatter (_TakeSlots). On the H200 at the size above: 23.9 ms, 14.9 GB. It computes every
slot's row, key slots and padding included, and its c x c score tiles go through memory.

The flex path ran over the slot layout until session 5: 177 ms end to end with a mask reading
five int64/bool values per score; flex alone there took 14.5 ms with two int32 loads, and takes
6.2 ms on compact rows (benchmarks/flex_mask_loads.py keeps the slot-layout masks and times all).

Rounds: each round r gives out_r and its log-sum-exp lse_r; out = sum_r softmax_r(lse_r) out_r.
This is softmax over the union of the rounds' keys where a key found in m rounds weighs m times
(Reformer without its duplicate correction); reference() builds exactly that from the
assignment, as softmax(QK^T * scale + log(count)) over count > 0.
"""
import functools
import math
from typing import NamedTuple

import torch

from attentions.common import (compiled_flex, flex_unavailable, naive_attention, padding_of,
                               params_of, self_check_inputs)
from attentions.registry import AttentionSpec, register
from harness.errors import UserError

# n_buckets 0 = ~T/bucket_size; impl: "flex" (one FlexAttention call, CUDA only), "matmul" (batched
# matmuls per chunk, every device) or "auto" (flex where it runs, matmul elsewhere)
PARAMS = {"n_hashes": 2, "bucket_size": 64, "n_buckets": 0, "seed": 0, "impl": "auto"}
IMPLS = ("auto", "flex", "matmul")


def n_buckets(T, p):
    """Reformer's choice: about T / bucket_size buckets (even: half are -xR); at least 2."""
    if p["n_buckets"]:
        return int(p["n_buckets"])
    n = -(-T // int(p["bucket_size"]))
    return max(2, n + n % 2)


@functools.lru_cache(maxsize=256)
def rotations(seed, layer_idx, H, D, nb, R, device, dtype):
    """(H, R, D, nb/2) random rotations, fixed per (seed, layer, shape): the same every step."""
    g = torch.Generator().manual_seed(hash((seed, layer_idx, H, D, nb, R)) % 2**62)
    return torch.randn(H, R, D, nb // 2, generator=g).to(device=device, dtype=dtype)


@torch.no_grad()
def hash_buckets(x, rot):
    """x (B, H, T, D), rot (H, R, D, nb/2) -> buckets (B, H, R, T); T in parts to bound memory."""
    parts = []
    for part in x.split(2048, dim=2):
        proj = torch.einsum("bhtd,hrdn->bhrtn", part, rot)  # (B, H, R, t, nb/2)
        parts.append(torch.cat([proj, -proj], dim=-1).argmax(-1))
    return torch.cat(parts, dim=-1)


FLEX_BLOCK = 128  # FlexAttention's block size: the flex path's rows are padded to a multiple of it


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
        torch.full(shape, -1, dtype=torch.long, device=hq.device).scatter_(-1, item_slot, bucket))


def module_rotations(module, query, p):
    """The layer's rotations, kept as a non-persistent buffer of its attention module: built in
    the eager forward train.py runs before compiling, then a plain graph input. Built inside the
    compiled graph (a torch.Generator), they broke the graph and made dynamo recompile the LSH
    forward once per layer until its limit, then run it eagerly (seen on the H200)."""
    B, H, T, D = query.shape
    nb, R = n_buckets(T, p), int(p["n_hashes"])
    rot = getattr(module, "lsh_rotations", None)
    if (rot is None or tuple(rot.shape) != (H, R, D, nb // 2) or rot.dtype != query.dtype
            or rot.device != query.device):
        rot = rotations(int(p["seed"]), getattr(module, "layer_idx", 0) or 0, H, D, nb, R,
                        str(query.device), query.dtype)
        if isinstance(module, torch.nn.Module):
            module.register_buffer("lsh_rotations", rot, persistent=False)
    return rot


def assign(query, key, padding, p, layer_idx, rot=None):
    """Hash queries and keys and lay them out in chunks. query, key (B, H, T, D)."""
    B, H, T, D = query.shape
    nb = n_buckets(T, p)
    if rot is None:
        rot = rotations(int(p["seed"]), layer_idx or 0, H, D, nb, int(p["n_hashes"]), str(query.device),
                        query.dtype)
    hq, hk = hash_buckets(query.detach(), rot), hash_buckets(key.detach(), rot)
    real = torch.ones(B, T, dtype=torch.bool, device=query.device) if padding is None else padding
    with torch.no_grad():
        return slots(hq, hk, real[:, None, None, :], int(p["bucket_size"]), nb)


def _place(x, slot, S):
    """x (B, H, T, D) -> (B, H, R, S, D): item t's vector at slot slot[..., t] of each round,
    zeros elsewhere. A scatter, not a gather from the slots: each item has ONE slot, so the
    backward is a gather (grad at the item's slot), where a gather's backward is a scatter_add
    (atomics, and the empty slots all hitting one address)."""
    B, H, R, T = slot.shape
    D = x.shape[-1]
    index = slot.unsqueeze(-1).expand(B, H, R, T, D)
    return x.new_zeros(B, H, R, S, D).scatter(3, index, x.unsqueeze(2).expand(B, H, R, T, D))


def _place_flat(x, slot, S, lead):
    """x (B, H, T, D) -> (lead + B*H*R*S, D): _place for all (batch, head, round) rows in one flat
    layout after `lead` empty slots, so that a chunk and the chunk before it are both views."""
    B, H, R, T = slot.shape
    D = x.shape[-1]
    row = torch.arange(B * H * R, device=slot.device).view(B, H, R, 1) * S
    index = (slot + row + lead).view(B * H * R * T, 1).expand(-1, D)
    src = x.unsqueeze(2).expand(B, H, R, T, D).reshape(B * H * R * T, D)
    return x.new_zeros(lead + B * H * R * S, D).scatter(0, index, src)


class _TakeSlots(torch.autograd.Function):
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


def _take(x, slot):
    """x (B, H, R, S, D) -> (B, H, R, T, D): each query's row, at its slot."""
    return _TakeSlots.apply(x, slot.unsqueeze(-1).expand(*slot.shape, x.shape[-1]))


def key_buckets(a: Assignment):
    """(B, H, R, S) the bucket of each slot's real key, -2 (no bucket) for every other slot."""
    return torch.where(a.slot_isk, a.slot_bucket, -2)


def chunk_attention(query, key, value, a, c, scaling):
    """One softmax per chunk over [previous chunk, own chunk, own key], as batched matmuls
    -> out (B, H, R, T, D) fp32 and lse (B, H, R, T) per query and round.

    Queries are scattered into the slot layout; keys and values into ONE flat layout of all
    (batch, head, round) rows after one empty chunk, so that a chunk's own keys and its previous
    chunk's keys are both views of it (no copies). Chunk 0's previous chunk is the row before's
    last chunk (or the empty one): masked, as every slot that is not a real key of the query's
    bucket is. Within a bucket the slots are in (position, query before key) order, so "earlier
    in position" is "earlier slot": all of the previous chunk, a lower triangle of the own one."""
    B, H, R, S = a.slot_bucket.shape
    N, D = S // c, query.shape[-1]
    qs = _place(query, a.q_slot, S).view(B * H * R * N, c, D)                        # (BHRN, c, D)
    kf, vf = (_place_flat(x, a.k_slot, S, lead=c) for x in (key, value))            # (c + BHRS, D)
    k_own, k_prev = kf[c:].view(-1, c, D), kf[:-c].view(-1, c, D)                   # (BHRN, c, D)
    v_own, v_prev = vf[c:].view(-1, c, D), vf[:-c].view(-1, c, D)
    kb = key_buckets(a)
    kb = torch.cat([kb.new_full((B, H, R, c), -2), kb], dim=-1)                      # per row
    kb_own, kb_prev = kb[..., c:].view(B, H, R, N, 1, c), kb[..., :S].view(B, H, R, N, 1, c)
    qb = a.slot_bucket.view(B, H, R, N, c, 1)
    before = torch.ones(c, c, dtype=torch.bool, device=query.device).tril(-1)      # key slot < query slot
    view = (B, H, R, N, c, c)
    s_own = ((qs @ k_own.transpose(-1, -2)).view(view).float() * scaling).masked_fill(
        ~((kb_own == qb) & before), -math.inf)
    s_prev = ((qs @ k_prev.transpose(-1, -2)).view(view).float() * scaling).masked_fill(kb_prev != qb, -math.inf)
    own = (query * key).sum(-1).float() * scaling                                    # (B, H, T)
    own = own.new_zeros(B, H, R, S).scatter(-1, a.q_slot, own.unsqueeze(2).expand(B, H, R, -1))
    own = own.view(B, H, R, N, c, 1)
    # softmax over [previous chunk, own chunk, own key]; the own key is always there: no empty row
    top = torch.maximum(torch.maximum(s_own.amax(-1, keepdim=True), s_prev.amax(-1, keepdim=True)), own)
    e_own, e_prev, e_self = torch.exp(s_own - top), torch.exp(s_prev - top), torch.exp(own - top)
    total = e_own.sum(-1, keepdim=True) + e_prev.sum(-1, keepdim=True) + e_self    # (B,H,R,N,c,1)
    p_own, p_prev = ((e / total).to(value.dtype).view(-1, c, c) for e in (e_own, e_prev))
    out = _take((p_own @ v_own + p_prev @ v_prev).view(B, H, R, S, D), a.q_slot).float()  # (B,H,R,T,D)
    pick = a.q_slot
    p_self = (e_self / total).view(B, H, R, S).gather(-1, pick)
    out = out + p_self.unsqueeze(-1) * value.float().unsqueeze(2)
    return out, (top + total.log()).view(B, H, R, S).gather(-1, pick)


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
    qc = _place(query, r.q_rank, L).flatten(1, 2)                                 # (B, H*R, L, D)
    kc, vc = (_place(x, r.k_rank, L).flatten(1, 2) for x in (key, value))
    out, lse = _flex_lse(flex or compiled_flex(), qc, kc, vc, rows_block_mask(r, c), scaling)
    out = _take(out.view(B, H, R, L, D), r.q_rank).float()                        # (B, H, R, T, D)
    lse = lse.view(B, H, R, L).float().gather(-1, r.q_rank)
    own = ((query * key).sum(-1).float() * scaling).unsqueeze(2)                   # (B, H, 1, T)
    total = torch.logaddexp(lse, own)
    out = (lse - total).exp().unsqueeze(-1) * out + (own - total).exp().unsqueeze(-1) * value.float().unsqueeze(2)
    return out, total


def uses_flex(device, params) -> bool:
    """impl "flex" or "auto" on CUDA (compiled, with a backward); the batched-matmul path otherwise
    (flex has no CPU backward). While torch.compile traces, triton is there (inductor's CUDA code
    is triton): the check is skipped, since dynamo cannot trace it (a graph break per layer)."""
    device = torch.device(device)
    return (params.get("impl") in ("auto", "flex") and device.type == "cuda"
            and (torch.compiler.is_compiling() or flex_unavailable(device) is None))


def check_params(model, params, init):
    """At install: an unknown impl is the user's error, before anything runs."""
    if params.get("impl") not in IMPLS:
        raise UserError(f"lsh: impl={params.get('impl')!r}; choose one of {', '.join(IMPLS)}")


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D)
    p = params_of(module, PARAMS)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    flex = uses_flex(query.device, p)
    a = assign(query, key, padding_of(attention_mask), p, None, module_rotations(module, query, p))
    chunked = flex_chunk_attention if flex else chunk_attention
    out, lse = chunked(query, key, value, a, int(p["bucket_size"]), scaling)
    weights = torch.softmax(lse, dim=2).unsqueeze(-1)  # (B, H, R, T, 1) combine the rounds
    out = (weights * out).sum(2).to(query.dtype)       # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), None      # (B, T, H, D)


def counts(a: Assignment, c, padding=None):
    """(B, H, T, T) how many rounds let query i see key j, from the buckets alone, O(T^2)."""
    hq, hk = a.hq, a.hk                                      # (B, H, R, T)
    T = hq.shape[-1]
    i = torch.arange(T, device=hq.device)
    before = i[None, :] < i[:, None]                         # [i, j]: j < i
    same_qk = hq.unsqueeze(-1) == hk.unsqueeze(-2)           # [i, j]: query i and key j share a bucket
    same_qq = hq.unsqueeze(-1) == hq.unsqueeze(-2)
    same_kk = hk.unsqueeze(-1) == hk.unsqueeze(-2)
    # rank in the bucket's (position, query-before-key) order = items of the bucket before it
    rank_q = (same_qq & before).sum(-1) + (same_qk & before).sum(-1)
    at_or_before = before | torch.eye(T, dtype=torch.bool, device=hq.device)
    rank_k = (same_qk.transpose(-1, -2) & at_or_before).sum(-1) + (same_kk & before).sum(-1)
    gap = (rank_q // c).unsqueeze(-1) - (rank_k // c).unsqueeze(-2)
    seen = same_qk & before & ((gap == 0) | (gap == 1))      # own or previous chunk, causal
    if padding is not None:
        seen = seen & padding[:, None, None, None, :]
    return (seen.long() + torch.eye(T, dtype=torch.long, device=hq.device)).sum(2)


def reference(module, query, key, value, padding=None, scaling=None):
    """O(T^2) masked softmax over the same bucket assignment, keys weighted by their round count."""
    p = params_of(module, PARAMS)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    a = assign(query, key, padding, p, getattr(module, "layer_idx", 0))
    n = counts(a, int(p["bucket_size"]), padding)
    return naive_attention(query, key, value, n > 0, scaling, n.clamp(min=1).float().log())


def flops(B, H, T, D, params):
    """Per round: hashing q and k (T x D x nb/2 each), and each of the T queries against its 2c + 1
    candidate keys (previous chunk, own chunk, own key), QK^T and PV: the algorithm's count, the
    same for both paths. (The matmul path computes every slot's row, about 3T of them; the flex
    path the query rows, in 128 x 128 tiles.)"""
    c, R, nb = int(params["bucket_size"]), int(params["n_hashes"]), n_buckets(T, params)
    return B * H * R * (2 * 2 * T * (2 * c + 1) * D + 2 * T * D * nb)


SPEC = register(AttentionSpec(
    name="lsh",
    description="Reformer-style LSH attention: rotation hashing of q and k, per-bucket chunks, causal",
    exact=False,
    forward=forward,
    flops=flops,
    params=PARAMS,
    kernel=lambda device, params, dtype=None, shape=None: (
        "flex_attention (lsh compact rows, torch.compile, triton)" if uses_flex(device, params)
        else "pytorch (sort + chunked matmuls)"),
    prepare_model=check_params,
    paper="Kitaev et al. 2020, Reformer: The Efficient Transformer",
))


if __name__ == "__main__":
    from attentions.common import StubAttention, ascii_mask
    module = StubAttention({"n_hashes": 2, "bucket_size": 4})
    q, k, v, padding = self_check_inputs()
    out, _ = forward(module, q, k, v, padding, scaling=0.25)
    ref = reference(module, q, k, v, padding, scaling=0.25)
    print(f"lsh {module.bench_params}: max |out - reference| = "
          f"{(out - ref.transpose(1, 2)).abs().max().item():.2e}")
    a = assign(q, k, None, params_of(module, PARAMS), 0)
    print("keys seen by each query (batch 1, head 0, both rounds):")
    print(ascii_mask(counts(a, 4)[1, 0] > 0))
