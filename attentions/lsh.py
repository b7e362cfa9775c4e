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

Kernels: by default (impl="matmul") the chunked attention runs as batched matmuls per chunk
(chunk_attention), on every device. The items are SCATTERED into the slot layout (each has one
slot, so the backward is a gather; gathering from the slots made the backward scatter_add with
atomics), keys and values into one flat layout whose chunk views need no copies, and each query's
row is taken back with a gather whose backward is a plain scatter (_TakeSlots). On the H200
(2026-11-29, 131k tokens, T = 2048, fwd+bwd, compiled) that took lsh from about 90 ms to 23.9 ms;
baseline takes 23.8 ms. What is left is memory-bound: the c x c score tiles are as large as the
chunks they come from, and the rows of key slots are computed and thrown away.

impl="flex" runs the chunks on CUDA as ONE FlexAttention call over the slot layout (rounds as
extra heads): a fixed band of blocks (each query block with the key blocks holding its own and
the previous chunks) and a mask_mod reading two int32 values per score (slot_mask), the returned
log-sum-exp (which flex differentiates) combining the rounds. It is exact to the matmul path
(tests; forward and gradients on the H200 with the mask_mod before this one). It measured SLOWER,
177 ms fwd+bwd at the size above, because its earlier mask_mod read five int64/bool values per
score: flex's forward kernel took 155 ms against 14 ms for its backward. With two int32 loads flex
alone takes 4.3 ms fwd and 14.5 ms fwd+bwd on the same layout (benchmarks/flex_mask_loads.py).
The whole path has not been timed since, so it stays opt-in.

Rounds: each round r gives out_r and its log-sum-exp lse_r; out = sum_r softmax_r(lse_r) out_r.
This is softmax over the union of the rounds' keys where a key found in m rounds weighs m times
(Reformer without its duplicate correction); reference() builds exactly that from the
assignment, as softmax(QK^T * scale + log(count)) over count > 0.
"""
import functools
import math
from typing import NamedTuple

import torch

from attentions.common import (built_once, compiled_flex, flex_unavailable, naive_attention, padding_of,
                               params_of, self_check_inputs)
from attentions.registry import AttentionSpec, register
from errors import UserError

# n_buckets 0 = ~T/bucket_size; impl: "matmul" (batched matmuls per chunk) or "flex" (CUDA only)
PARAMS = {"n_hashes": 2, "bucket_size": 64, "n_buckets": 0, "seed": 0, "impl": "matmul"}
IMPLS = ("matmul", "flex")


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


FLEX_BLOCK = 128  # FlexAttention's block size: impl=flex needs a slot count that is a multiple of it


def n_slots(T, c, nb, flex=False):
    """Slots of the chunked layout: a bound on the 2T items with every bucket padded to whole
    chunks of c, rounded up to a multiple of c (and of FLEX_BLOCK for the flex path)."""
    step = math.lcm(c, FLEX_BLOCK) if flex else c
    return -(-(2 * T + nb * (c - 1)) // step) * step


class Assignment(NamedTuple):
    hq: torch.Tensor          # (B, H, R, T) bucket of each query
    hk: torch.Tensor          # (B, H, R, T) bucket of each key
    q_slot: torch.Tensor      # (B, H, R, T) slot of each query in the chunked layout
    k_slot: torch.Tensor      # (B, H, R, T) slot of each key
    slot_isk: torch.Tensor    # (B, H, R, S) slot holds a real (unpadded) key
    slot_bucket: torch.Tensor  # (B, H, R, S) bucket of the slot's item, -1 if empty


def slots(hq, hk, key_real, c, nb, flex=False):
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
    S = n_slots(T, c, nb, flex)                                           # bound on sum(padded)
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


def assign(query, key, padding, p, layer_idx, rot=None, flex=False):
    """Hash queries and keys and lay them out in chunks. query, key (B, H, T, D). flex: a slot
    count that flex_chunk_attention can take."""
    B, H, T, D = query.shape
    nb = n_buckets(T, p)
    if rot is None:
        rot = rotations(int(p["seed"]), layer_idx or 0, H, D, nb, int(p["n_hashes"]), str(query.device),
                        query.dtype)
    hq, hk = hash_buckets(query.detach(), rot), hash_buckets(key.detach(), rot)
    real = torch.ones(B, T, dtype=torch.bool, device=query.device) if padding is None else padding
    with torch.no_grad():
        return slots(hq, hk, real[:, None, None, :], int(p["bucket_size"]), nb, flex)


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


@built_once
def band_blocks(S, c, device):
    """The fixed block structure of the slot layout, as BlockMask.from_kv_blocks takes it:
    kv_num_blocks (1, 1, n) and kv_indices (1, 1, n, n) int32, n = S / FLEX_BLOCK. Query block i
    (slots 128i .. 128i + 127) needs the key blocks from the chunk before its first slot's chunk
    to the end of its last slot's chunk; mask_mod does the rest."""
    n = S // FLEX_BLOCK
    first = torch.arange(n) * FLEX_BLOCK
    lo = ((first // c - 1).clamp(min=0) * c) // FLEX_BLOCK
    hi = (((first + FLEX_BLOCK - 1) // c + 1) * c - 1).clamp(max=S - 1) // FLEX_BLOCK
    idx = (lo[:, None] + torch.arange(n)[None, :]).clamp(max=n - 1)  # only the first num are read
    return ((hi - lo + 1).int()[None, None].to(device), idx.int()[None, None].to(device))


def slot_mask(key_bucket, bucket, c):
    """mask_mod over the slot layout (int32 tensors (B, H*R, S)): a query slot sees the real keys
    of its bucket in its own and the previous chunk, in earlier slots - within a bucket the slots
    are in (position, query before key) order, so an earlier slot is an earlier position.
    key_bucket: a real key's bucket, -2 elsewhere; bucket: the slot item's bucket, -1 if empty.
    Rows of key slots are computed and never read. Two int32 loads per score: reading position,
    key flag and bucket as five int64/bool loads made flex's forward kernel 48x slower on the
    H200 (157 vs 3.3 ms at 131k tokens, T = 2048; its backward was not slowed)."""
    def mask_mod(b, h, q_idx, kv_idx):
        near = (kv_idx < q_idx) & (q_idx // c - kv_idx // c <= 1)
        return near & (key_bucket[b, h, kv_idx] == bucket[b, h, q_idx])
    return mask_mod


def flex_layout(query, key, value, a):
    """q, k, v (B, H, T, D) -> each (B, H*R, S, D): placed in the slot layout, rounds as heads."""
    S = a.slot_bucket.shape[-1]
    if S % FLEX_BLOCK:
        raise ValueError(f"lsh flex path: {S} slots is not a multiple of {FLEX_BLOCK}; assign(..., flex=True)")
    return (_place(query, a.q_slot, S).flatten(1, 2),
            *(_place(x, a.k_slot, S).flatten(1, 2) for x in (key, value)))


def flex_block_mask(a, c, mask_mod=None):
    """The BlockMask of the slot layout: the fixed band of blocks, and mask_mod (default
    slot_mask of the assignment) inside it."""
    from torch.nn.attention.flex_attention import BlockMask
    S = a.slot_bucket.shape[-1]
    num, idx = band_blocks(S, c, str(a.slot_bucket.device))
    if mask_mod is None:
        mask_mod = slot_mask(key_buckets(a).int().flatten(1, 2), a.slot_bucket.int().flatten(1, 2), c)
    return BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=FLEX_BLOCK, seq_lengths=(S, S), mask_mod=mask_mod)


def _flex_lse(flex, q, k, v, block_mask, scale):
    """flex_attention's output and its (differentiable, natural-log) log-sum-exp."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # torch < 2.9
        return flex(q, k, v, block_mask=block_mask, scale=scale, return_lse=True)
    out, aux = flex(q, k, v, block_mask=block_mask, scale=scale, return_aux=AuxRequest(lse=True))
    return out, aux.lse


def flex_chunk_attention(query, key, value, a, c, scaling, flex=None):
    """chunk_attention as one FlexAttention call over the slot layout, rounds as heads: the same
    keys per query, no (slots x 2c) scores in memory. Rows without keys (lse -inf) get only
    their own key. flex: the flex_attention to call (default compiled; tests pass eager)."""
    B, H, R, S = a.slot_bucket.shape
    D = query.shape[-1]
    qs, ks, vs = flex_layout(query, key, value, a)
    out, lse = _flex_lse(flex or compiled_flex(), qs, ks, vs, flex_block_mask(a, c), scaling)
    pick = a.q_slot                                                                 # (B, H, R, T)
    out = _take(out.view(B, H, R, S, D), pick).float()
    lse = lse.view(B, H, R, S).float().gather(-1, pick)
    own = ((query * key).sum(-1).float() * scaling).unsqueeze(2)                   # (B, H, 1, T)
    total = torch.logaddexp(lse, own)
    out = (lse - total).exp().unsqueeze(-1) * out + (own - total).exp().unsqueeze(-1) * value.float().unsqueeze(2)
    return out, total


def uses_flex(device, params) -> bool:
    """impl="flex" on CUDA (compiled, with a backward); the batched-matmul path otherwise (flex
    has no CPU backward)."""
    device = torch.device(device)
    return params.get("impl") == "flex" and device.type == "cuda" and flex_unavailable(device) is None


def check_params(model, params, init):
    """At install: an unknown impl is the user's error, before anything runs."""
    if params.get("impl") not in IMPLS:
        raise UserError(f"lsh: impl={params.get('impl')!r}; choose one of {', '.join(IMPLS)}")


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D)
    p = params_of(module, PARAMS)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    flex = uses_flex(query.device, p)
    a = assign(query, key, padding_of(attention_mask), p, None, module_rotations(module, query, p), flex)
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
    """Per round: hashing q and k (T x D x nb/2 each), and every slot of the chunked layout
    against 2c + 1 keys (chunk, previous chunk, own key), QK^T and PV."""
    c, R, nb = int(params["bucket_size"]), int(params["n_hashes"]), n_buckets(T, params)
    S = n_slots(T, c, nb)
    return B * H * R * (2 * 2 * S * (2 * c + 1) * D + 2 * T * D * nb)


SPEC = register(AttentionSpec(
    name="lsh",
    description="Reformer-style LSH attention: rotation hashing of q and k, per-bucket chunks, causal",
    exact=False,
    forward=forward,
    flops=flops,
    params=PARAMS,
    kernel=lambda device, params, dtype=None, shape=None: (
        "flex_attention (lsh slot layout, torch.compile, triton)" if uses_flex(device, params)
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
