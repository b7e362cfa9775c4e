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
(chunk_attention), on every device. impl="flex" runs it on CUDA as ONE FlexAttention call over
the slot layout (rounds as extra heads): a fixed band of blocks (each query block with the key
blocks holding its own and the previous chunks) and a mask_mod reading each slot's bucket,
position and key flag, the returned log-sum-exp (which flex differentiates) combining the rounds.
It is exact to the matmul path (tests, forward and gradients on the H200) but measured SLOWER on
the H200 (2026-11-29: fwd+bwd 185 ms vs about 90 ms at 131k tokens, T = 2048; its forward took
165 ms of it, cause not found yet), so it is opt-in until profiled.

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
    slot_pos: torch.Tensor    # (B, H, R, S) original position of the item in each slot
    slot_isq: torch.Tensor    # (B, H, R, S) slot holds a query
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
        hq, hk, q_slot,
        torch.zeros(shape, dtype=torch.long, device=hq.device).scatter_(-1, item_slot, item_pos),
        torch.zeros(shape, dtype=torch.bool, device=hq.device).scatter_(-1, q_slot, True),
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


def _gather(x, index):
    """x (B, H, T, D), index (B, H, R, N) -> (B, H, R, N, D)."""
    B, H, R, N = index.shape
    src = x.unsqueeze(2).expand(B, H, R, *x.shape[2:])
    return src.gather(3, index.unsqueeze(-1).expand(B, H, R, N, x.shape[-1]))


def _with_previous_chunk(x):
    """x (..., N, c, *) -> (..., N, 2c, *): each chunk followed by the chunk before it."""
    prev = torch.cat([torch.zeros_like(x[..., :1, :, :]), x[..., :-1, :, :]], dim=-3)
    return torch.cat([x, prev], dim=-2)


def chunk_attention(query, key, value, a, c, scaling):
    """One softmax per chunk over [own chunk, previous chunk, own key], as batched matmuls
    -> out (B, H, R, T, D) fp32 and lse (B, H, R, T) per query and round."""
    B, H, R, S = a.slot_pos.shape
    N = S // c
    view = (B, H, R, N, c)
    # Every slot gathers its item's vectors; `allowed` below keeps only query rows x key columns.
    q = _gather(query, a.slot_pos).view(*view, -1)                                  # (B,H,R,N,c,D)
    k2 = _with_previous_chunk(_gather(key, a.slot_pos).view(*view, -1))             # (B,H,R,N,2c,D)
    v2 = _with_previous_chunk(_gather(value, a.slot_pos).view(*view, -1))
    kpos, kreal, kbucket = (_with_previous_chunk(t.view(*view, 1)).squeeze(-1)     # (B,H,R,N,2c)
                            for t in (a.slot_pos, a.slot_isk, a.slot_bucket))
    qpos, qbucket = a.slot_pos.view(view), a.slot_bucket.view(view)
    allowed = (kreal.unsqueeze(-2) & (kbucket.unsqueeze(-2) == qbucket.unsqueeze(-1))
               & (kpos.unsqueeze(-2) < qpos.unsqueeze(-1)))                         # (B,H,R,N,c,2c)
    scores = (q @ k2.transpose(-1, -2)).float() * scaling
    scores = scores.masked_fill_(~allowed, float("-inf"))                         # (B,H,R,N,c,2c)
    own = ((query * key).sum(-1).float() * scaling)                                 # (B, H, T)
    own = own.unsqueeze(2).expand(B, H, R, -1).gather(-1, a.slot_pos).view(*view, 1)
    # softmax over [chunk keys, own key]; the own key is always there, so no row is empty
    top = torch.maximum(scores.amax(-1, keepdim=True), own)
    e, e_own = torch.exp(scores - top), torch.exp(own - top)
    total = e.sum(-1, keepdim=True) + e_own                                         # (B,H,R,N,c,1)
    out = ((e / total).to(value.dtype) @ v2).float().view(B, H, R, S, -1)           # (B,H,R,S,D)
    lse = (top + total.log()).view(B, H, R, S)
    p_own = (e_own / total).view(B, H, R, S)
    pick = a.q_slot                                                                 # (B, H, R, T)
    out = out.gather(3, pick.unsqueeze(-1).expand(*pick.shape, out.shape[-1]))
    out = out + p_own.gather(-1, pick).unsqueeze(-1) * value.float().unsqueeze(2)  # (B, H, R, T, D)
    return out, lse.gather(-1, pick)


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


def slot_mask(pos, is_key, bucket, c):
    """mask_mod over the slot layout (tensors (B, H*R, S)): a query slot sees the real keys of
    its bucket in its own and the previous chunk, earlier in original position. Rows of slots
    that hold no query see nothing and are never read."""
    def mask_mod(b, h, q_idx, kv_idx):
        near = (kv_idx <= q_idx) & (q_idx // c - kv_idx // c <= 1)
        same = bucket[b, h, kv_idx] == bucket[b, h, q_idx]
        return near & same & is_key[b, h, kv_idx] & (pos[b, h, kv_idx] < pos[b, h, q_idx])
    return mask_mod


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
    from torch.nn.attention.flex_attention import BlockMask
    B, H, R, S = a.slot_pos.shape
    D = query.shape[-1]
    if S % FLEX_BLOCK:
        raise ValueError(f"lsh flex path: {S} slots is not a multiple of {FLEX_BLOCK}; assign(..., flex=True)")

    def heads(t):  # (B, H, R, S, ...) -> (B, H * R, S, ...)
        return t.reshape(B, H * R, *t.shape[3:])
    qs, ks, vs = (heads(_gather(x, a.slot_pos)) for x in (query, key, value))
    num, idx = band_blocks(S, c, str(query.device))
    mask = BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=FLEX_BLOCK, seq_lengths=(S, S),
                                    mask_mod=slot_mask(heads(a.slot_pos), heads(a.slot_isk),
                                                       heads(a.slot_bucket), c))
    out, lse = _flex_lse(flex or compiled_flex(), qs, ks, vs, mask, scaling)
    pick = a.q_slot                                                                 # (B, H, R, T)
    out = out.view(B, H, R, S, D).gather(3, pick.unsqueeze(-1).expand(*pick.shape, D)).float()
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
