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

import torch

from attentions.common import flex_unavailable, naive_attention, padding_of, params_of, self_check_inputs
from attentions.lsh_flex import FLEX_BLOCK, flex_chunk_attention, flex_rows, rows_block_mask  # noqa: F401
from attentions.lsh_layout import Assignment, key_buckets, n_slots, place, slots, take  # noqa: F401
from attentions.lsh_matmul import chunk_attention
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
