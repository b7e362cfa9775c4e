"""lsh: Reformer-style LSH attention (Kitaev et al. 2020, Reformer: The Efficient Transformer,
sections 2.2-2.3), strictly causal, in value as well as in pattern.

Hashing: angular LSH with random rotations (Andoni et al. 2015): bucket(x) = argmax([xR; -xR]),
R a fixed random (D, n_buckets/2) matrix per layer, head and hash round (seeded); n_buckets=1
puts everything in one bucket. Reformer ties Q and K (shared-QK); GPT-2 has separate Q and K
projections, so q and k are both hashed with the same rotations.

Sorting and chunking: per round, the 2T items (T queries, T keys) are ordered by (bucket,
position), ties at one position broken query before key, and each bucket's items are cut into
chunks of bucket_size c. A query attends to the real keys of its own chunk and of the previous
chunk of its bucket that are earlier in position (strictly), plus always its own key. Chunks
restart at each bucket (Reformer chunks the global sorted order, where a token's chunk depends on
how many LATER tokens fell into lower buckets): a query's keys depend only on tokens at or before
it.

Rounds and duplicates (dedup=True, the default; Reformer's appendix on multi-round attention):
each round r gives out_r and its log-sum-exp lse_r, and out = sum_r softmax_r(lse_r) out_r. A
key found in N_ij rounds would weigh N_ij times; each score gets -log N_ij instead (the own key,
found in all R rounds, -log R), so out is softmax over the union of the found keys, each once.
N_ij is counted per candidate pair from the per-round (bucket, chunk) codes of i and j
(lsh_layout.round_codes): 2R integer compares per pair, O(R^2 T c) per head, no multiply-adds.
dedup=False keeps the round-weighted union. reference() is that softmax, O(T^2), from counts().

Kernels: impl="auto" is "flex" on CUDA from compute capability 8.0 and "matmul" below it and on
CPU; impl="flex" is flex on any CUDA device; SPEC.kernel names the one that runs.

impl="matmul" (lsh_matmul.py, every device): batched matmuls per chunk over the SLOT layout
(lsh_layout.py), all 2T items at their slots with each bucket padded to whole chunks (~3T rows
per round), c x 2c score tiles in memory: O(R T c) time and memory.

impl="flex" (lsh_flex.py, CUDA): one FlexAttention call, rounds as heads, over PAGES: per round
the queries and the keys each on pages of 128 rows (flex's block), one bucket per page in
position order, a page numbered when its first item comes. A row thus depends only on the items
at or before it, each query page visits the key pages of its bucket that hold its window, in
page order, and a query's keys are summed in an order fixed by the past: outputs at positions
<= t are bit-identical whatever follows t (the matmul path's are too: its tiles are chunks).
Cost: about the tiles of compact rows (~2.3 key pages per 128 queries at T = 2048, c = 64: O(T c)
block list, well below the T^2 / 2 / 128^2 of dense causal attention), but up to
T + 127 min(nb, T) rows per round (~3T at the defaults) for q, k and v.
"""
import functools

import torch

from attentions.device import capability

from attentions.common import (causal_pairs, flex_unavailable, naive_attention, padding_of, params_of,
                               self_check_inputs)
from attentions.lsh_flex import FLEX_BLOCK, flex_chunk_attention, flex_rows, n_pages, rows_block_mask  # noqa: F401
from attentions.lsh_layout import Assignment, key_buckets, n_slots, place, slots, take  # noqa: F401
from attentions.lsh_matmul import chunk_attention
from attentions.registry import AttentionSpec, register
from harness.errors import UserError

# n_buckets 0 = ~T/bucket_size (1: no hashing, one bucket); impl: "flex" (one FlexAttention call,
# CUDA only), "matmul" (batched matmuls per chunk, every device) or "auto" (flex on CUDA from compute
# capability 8.0, matmul elsewhere); dedup: Reformer's correction for keys found in several rounds
PARAMS = {"n_hashes": 2, "bucket_size": 64, "n_buckets": 0, "seed": 0, "impl": "auto", "dedup": True}
IMPLS = ("auto", "flex", "matmul")


def n_buckets(T, p):
    """n_buckets if set (1, or even: half are -xR), else Reformer's choice: about T / bucket_size
    buckets, even, at least 2."""
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
    if rot.shape[-1] == 0:  # one bucket
        return x.new_zeros(x.shape[0], rot.shape[0], rot.shape[1], x.shape[2], dtype=torch.long)
    parts = []
    for part in x.split(2048, dim=2):
        proj = torch.einsum("bhtd,hrdn->bhrtn", part, rot)  # (B, H, R, t, nb/2)
        parts.append(torch.cat([proj, -proj], dim=-1).argmax(-1))
    return torch.cat(parts, dim=-1)


def module_rotations(module, query, p):
    """The layer's rotations, kept as a non-persistent buffer of its attention module: built in
    the eager forward train.py runs before compiling, then a plain graph input (built inside the
    compiled graph, a torch.Generator breaks the graph and dynamo recompiles per layer)."""
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




def chosen_impl(device, params) -> str:
    """"flex" or "matmul": impl "flex" on CUDA, and "auto" on CUDA from compute capability 8.0
    (Ampere; on older GPUs triton's flex kernels are slow or missing bf16), matmul otherwise
    (flex has no CPU backward). While torch.compile traces, triton is there (inductor's CUDA code
    is triton): that check is skipped, since dynamo cannot trace it (a graph break per layer)."""
    device = torch.device(device)
    impl = params.get("impl")
    if device.type != "cuda" or impl not in ("auto", "flex"):
        return "matmul"
    if impl == "auto" and capability(device) < (8, 0):
        return "matmul"
    ok = torch.compiler.is_compiling() or flex_unavailable(device) is None
    return "flex" if ok else "matmul"


def uses_flex(device, params) -> bool:
    return chosen_impl(device, params) == "flex"


def kernel_name(device, params, dtype=None, shape=None) -> str:
    if uses_flex(device, params):
        return "flex_attention (lsh compact rows in pages, torch.compile, triton)"
    return "pytorch (sort + chunked matmuls)"


def check_params(model, params, init):
    """At install: an unknown impl or an odd bucket count is the user's error, before anything runs."""
    if params.get("impl") not in IMPLS:
        raise UserError(f"lsh: impl={params.get('impl')!r}; choose one of {', '.join(IMPLS)}")
    nb = int(params.get("n_buckets", 0))
    if nb < 0 or (nb > 1 and nb % 2):
        raise UserError(f"lsh: n_buckets={nb}; angular hashing gives an even count (or 1, or 0: ~T/bucket_size)")


def attention(query, key, value, padding, p, scaling, rot=None, flex=False, flex_fn=None):
    """query, key, value (B, H, T, D) -> (B, H, T, D): every round's chunks (flex: one FlexAttention
    call, flex_fn the flex_attention to call, default compiled), then the rounds combined."""
    a = assign(query, key, padding, p, 0, rot)
    c, dedup = int(p["bucket_size"]), bool(p.get("dedup", True))
    if flex:
        out, lse = flex_chunk_attention(query, key, value, a, c, scaling, flex=flex_fn, dedup=dedup)
    else:
        out, lse = chunk_attention(query, key, value, a, c, scaling, dedup=dedup)
    weights = torch.softmax(lse, dim=2).unsqueeze(-1)  # (B, H, R, T, 1) combine the rounds
    return (weights * out).sum(2).to(query.dtype)      # (B, H, T, D)


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D)
    p = params_of(module, PARAMS)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = attention(query, key, value, padding_of(attention_mask), p, scaling,
                    module_rotations(module, query, p), uses_flex(query.device, p))
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
    """O(T^2) masked softmax over the same bucket assignment: over the union of the keys the rounds
    find, each once (dedup, Reformer's), or each weighted by its round count (dedup=False)."""
    p = params_of(module, PARAMS)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    a = assign(query, key, padding, p, getattr(module, "layer_idx", 0))
    n = counts(a, int(p["bucket_size"]), padding)
    weight = None if p.get("dedup", True) else n.clamp(min=1).float().log()
    return naive_attention(query, key, value, n > 0, scaling, weight)


def pairs(T, params):
    """Query/key pairs computed per head: per round each of the T queries against its 2c + 1
    candidate keys (previous chunk, own chunk, own key), the same for both paths."""
    return int(params["n_hashes"]) * T * (2 * int(params["bucket_size"]) + 1)


def flops(B, H, T, D, params):
    """QK^T and PV over pairs(T), plus hashing q and k per round (T x D x nb/2 each): the
    algorithm's count. (The matmul path computes every slot's row, about 3T per round; the flex
    path whole 128 x 128 tiles.) The duplicate correction adds 2R integer compares and a log per
    pair, no multiply-adds: not counted."""
    R, nb = int(params["n_hashes"]), n_buckets(T, params)
    return B * H * (2 * 2 * pairs(T, params) * D + R * 2 * T * D * nb)


def density(T, params):
    """The fraction of the T (T + 1) / 2 causal pairs that pairs(T) computes, at most 1."""
    return min(1.0, pairs(T, params) / causal_pairs(T))


SPEC = register(AttentionSpec(
    name="lsh",
    description="Reformer-style LSH attention: rotation hashing of q and k, per-bucket chunks, causal",
    exact=False,
    forward=forward,
    flops=flops,
    density=density,
    params=PARAMS,
    kernel=kernel_name,
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
