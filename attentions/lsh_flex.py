"""lsh's FlexAttention path (impl="flex", CUDA): all chunks of all rounds as ONE flex_attention
call, rounds as heads, over pages of rows (attentions/lsh.py describes the algorithm; FlexAttention:
Dong et al. 2024, torch.nn.attention.flex_attention).

Why pages: flex sums a query's keys block by block (online softmax over its block list, a tile
reduction inside each block), so the rounding depends on where its keys sit among the 128-row
blocks. Numbering rows bucket-major by counting (a bucket's first row = the items of the lower
buckets, future ones included) made that depend on later tokens. On pages, a row depends only on
earlier items; blocks a query sees nothing in leave its sums exactly as they are (exp(-inf) = 0,
rescaling by exp(0) = 1), so the extra pages the later queries of its page add do not matter.
"""
import math
from typing import NamedTuple

import torch

from attentions.common import compiled_flex
from attentions.device import capability
from attentions.lsh_layout import Assignment, orders, place, round_codes, take

FLEX_BLOCK = 128  # FlexAttention's block size: the flex path's rows are padded to a multiple of it


class Pages(NamedTuple):
    """One kind of item (the T queries or the T keys of a round) on pages of FLEX_BLOCK rows."""
    row: torch.Tensor       # (B, H, R, T) each item's row
    start: torch.Tensor     # (B, H, R, nb) rank (among its kind, bucket-major) of each bucket's first item
    by_rank: torch.Tensor   # (B, H, R, T) position of the item of each rank
    opened: torch.Tensor    # (B, H, R, T) pages opened at or before each position, minus 1


def n_pages(T, nb):
    """Pages one kind fills at most: sum over buckets of ceil(n_b / 128), n_b summing to T."""
    return (T + (FLEX_BLOCK - 1) * min(nb, T)) // FLEX_BLOCK


def ranks(slot, S):
    """(B, H, R, S + 1) how many of these items sit at slots < s (a cumsum, no sort: inductor could
    not lower torch.searchsorted here), and (B, H, R, T) each item's rank in slot order."""
    before = torch.zeros(*slot.shape[:-1], S + 1, dtype=torch.int32, device=slot.device).scatter_(
        -1, slot + 1, 1).cumsum(-1, dtype=torch.int32)
    return before, before.gather(-1, slot).long()


def paginate(bucket, rank, start):
    """The m-th item of a bucket (position order) goes to row m % 128 of the bucket's (m // 128)-th
    page, and a page takes the next free page number when its first item comes, in position order.
    So an item's row depends only on the items at or before its position."""
    T = bucket.shape[-1]
    m = rank - start.gather(-1, bucket)                         # index in its bucket
    opened = (m % FLEX_BLOCK == 0).cumsum(-1) - 1               # the page a position opens, if it does
    by_rank = torch.empty_like(rank).scatter_(-1, rank, torch.arange(T, device=rank.device).expand_as(rank))
    page = opened.gather(-1, by_rank.gather(-1, rank - m % FLEX_BLOCK))   # the page its opener opened
    return Pages(page * FLEX_BLOCK + m % FLEX_BLOCK, start, by_rank, opened)


class FlexRows(NamedTuple):
    """lsh's paged FlexAttention layout, rounds as heads: per (batch, head, round) Lq query rows and
    Lk key rows (n_pages * 128 each); every page holds items of one bucket in position order."""
    q_row: torch.Tensor     # (B, H, R, T) each query's row
    k_row: torch.Tensor     # (B, H, R, T) each key's row
    q_code: torch.Tensor    # (B, H*R, Lq) bucket * span + index in the bucket's order (0: no query)
    k_code: torch.Tensor    # (B, H*R, Lk) the same for real keys, UNSEEN for padded keys and empty rows
    kv_num: torch.Tensor    # (B, H*R, Lq / 128) key pages each query page visits
    kv_idx: torch.Tensor    # (B, H*R, Lq / 128, Lk / 128) which, in page order
    q_num: torch.Tensor     # (B, H*R, Lk / 128) query pages that visit each key page (the backward's lists)
    q_idx: torch.Tensor     # (B, H*R, Lk / 128, Lq / 128) which, in page order
    q_round: torch.Tensor | None  # (B, H*R, Lq, R) each row's round codes (round_codes); None: no dedup
    k_round: torch.Tensor | None  # (B, H*R, Lk, R)


UNSEEN = -(2 ** 30)  # k_code of keys no query sees: below every query's window


def in_rows(x, row, pad, L):
    """(B, H, R, T[, E]) -> (B, H*R, L[, E]): each item's value at its row, pad elsewhere."""
    if x.dim() == 5:
        return place_rows(x, row, L, pad)
    return x.new_full((*row.shape[:-1], L), pad).scatter_(-1, row, x).flatten(1, 2)


def place_rows(x, row, L, pad):
    """(B, H, R, T, E) -> (B, H*R, L, E): in_rows for a vector per item."""
    B, H, R, T, E = x.shape
    out = x.new_full((B, H, R, L, E), pad)
    return out.scatter_(3, row.unsqueeze(-1).expand(B, H, R, T, E), x).flatten(1, 2)


def key_pages(a: Assignment, qp: Pages, kp: Pages, k_before, c, nq, nk):
    """Per query page: the pages of its bucket holding the keys from its first query's window
    start to its last query, in page order -> kv_num (B, H, R, nq), kv_idx (B, H, R, nq, nk)."""
    B, H, R, T = a.q_slot.shape
    page = qp.row // FLEX_BLOCK
    first = torch.full((B, H, R, nq), k_before.shape[-1] - 1, dtype=torch.long, device=page.device)
    first = first.scatter_reduce(-1, page, a.q_slot, "amin")
    last = torch.full_like(first, -1).scatter_reduce(-1, page, a.q_slot, "amax")
    bucket = torch.zeros_like(first).scatter_(-1, page, a.hq)   # a page holds one bucket
    b_slot = a.bucket_slot.gather(-1, bucket)
    window = b_slot + ((first - b_slot) // c - 1).clamp(min=0) * c   # the first query's window start
    k_start = kp.start.gather(-1, bucket)
    lo = (k_before.gather(-1, window.clamp(max=k_before.shape[-1] - 1)) - k_start) // FLEX_BLOCK
    hi = (k_before.gather(-1, last.clamp(min=0)) - k_start - 1).div(FLEX_BLOCK, rounding_mode="floor")
    num = torch.where(last >= 0, (hi - lo + 1).clamp(min=1), 0)
    j = torch.minimum(lo.unsqueeze(-1) + torch.arange(nk, device=lo.device), torch.maximum(lo, hi).unsqueeze(-1))
    at = (k_start.unsqueeze(-1) + j * FLEX_BLOCK).clamp(max=T - 1).flatten(-2)   # rank of the page's opener
    idx = kp.opened.gather(-1, kp.by_rank.gather(-1, at)).view(B, H, R, nq, nk)
    return num, idx


def visitors(num, idx):
    """The transposed lists: per key page, the query pages that visit it, in page order ->
    (num (..., nk), idx (..., nk, nq)) int32, as BlockMask's backward reads them. (Torch's own,
    BlockMask.from_kv_blocks, runs under vmap, which a custom op's schema check cannot follow.)"""
    nq, nk = idx.shape[-2:]
    listed = torch.arange(nk, device=idx.device) < num.unsqueeze(-1)             # (..., nq, nk) slot in use
    dense = torch.zeros(*idx.shape[:-1], nk + 1, dtype=torch.int32, device=idx.device)
    dense.scatter_(-1, torch.where(listed, idx, nk).long(), 1)                    # nk: the unused slots' bin
    dense = dense[..., :nk].transpose(-1, -2)                                     # (..., nk, nq)
    order = dense.argsort(dim=-1, descending=True, stable=True)                   # visitors first, in page order
    return dense.sum(-1, dtype=torch.int32), order.int().contiguous()


def flex_rows(a: Assignment, c, dedup=True):
    """The paged layout of an assignment. A query of bucket b sees the real keys of bucket b whose
    index in the bucket's order lies in [(i // c - 1) * c, i) for its own index i (own and previous
    chunk, earlier in position). Coding each item as b * span + index (span a multiple of c above
    every index + c) makes that ONE window of codes, (q_code // c - 1) * c <= k_code < q_code: the
    bucket check is in it, and the mask reads one int32 per query row and one per key row."""
    B, H, R, T = a.q_slot.shape
    S, nb = a.slot_bucket.shape[-1], a.bucket_slot.shape[-1]
    nq = nk = n_pages(T, nb)
    span = (2 * T // c + 2) * c
    dtype = torch.int32 if nb * span < 2 ** 31 else torch.long
    q_before, q_rank = ranks(a.q_slot, S)
    k_before, k_rank = ranks(a.k_slot, S)
    qp = paginate(a.hq, q_rank, q_before.gather(-1, a.bucket_slot).long())
    kp = paginate(a.hk, k_rank, k_before.gather(-1, a.bucket_slot).long())
    q_order, k_order = orders(a)
    L, Lk = nq * FLEX_BLOCK, nk * FLEX_BLOCK
    q_code = in_rows((a.hq * span + q_order).to(dtype), qp.row, 0, L)
    k_real = a.slot_isk.gather(-1, a.k_slot)
    k_code = in_rows(torch.where(k_real, a.hk * span + k_order, UNSEEN).to(dtype), kp.row, UNSEEN, Lk)
    num, idx = key_pages(a, qp, kp, k_before, c, nq, nk)
    q_round = k_round = None
    if dedup:
        cq, ck = (x.unsqueeze(2).expand(B, H, R, T, R) for x in round_codes(a, c))
        q_round, k_round = in_rows(cq, qp.row, 0, L), in_rows(ck, kp.row, 0, Lk)
    num, idx = num.flatten(1, 2).int(), idx.flatten(1, 2).int()
    return FlexRows(qp.row, kp.row, q_code, k_code, num, idx, *visitors(num, idx), q_round, k_round)


# -- the layout as one opaque op inside compiled graphs -------------------------------------------
# On the H200 inductor compiled flex_rows' scatters and gathers wrongly (lsh inside torch.compile
# differed from the matmul path by 5.4, and some shapes hit an illegal memory access), while the
# same code run eagerly agrees to 1e-6. As a custom op the layout runs eagerly inside a compiled
# model, with no graph break; its fake implementation gives dynamo the shapes.

@torch.library.custom_op("attention_bench::lsh_flex_rows", mutates_args=())
def flex_rows_op(hq: torch.Tensor, hk: torch.Tensor, q_slot: torch.Tensor, k_slot: torch.Tensor,
                 slot_isk: torch.Tensor, slot_bucket: torch.Tensor, bucket_slot: torch.Tensor, c: int,
                 dedup: bool) -> list[torch.Tensor]:
    r = flex_rows(Assignment(hq, hk, q_slot, k_slot, slot_isk, slot_bucket, bucket_slot), c, dedup)
    return [t.clone() if t is not None else hq.new_zeros(0, dtype=torch.int32) for t in r]  # no aliases


@flex_rows_op.register_fake
def _(hq, hk, q_slot, k_slot, slot_isk, slot_bucket, bucket_slot, c, dedup):
    B, H, R, T = q_slot.shape
    nb = bucket_slot.shape[-1]
    nq = n_pages(T, nb)
    L = nq * FLEX_BLOCK
    span = (2 * T // c + 2) * c
    code = torch.int32 if nb * span < 2 ** 31 else torch.long
    rnd = torch.int32 if nb * (2 * T // c + 2) < 2 ** 31 else torch.long
    new = q_slot.new_empty
    rounds = [new(B, H * R, L, R, dtype=rnd), new(B, H * R, L, R, dtype=rnd)] if dedup else \
        [new(0, dtype=torch.int32), new(0, dtype=torch.int32)]
    def lists():  # (num, idx) of pages: the forward's, then the backward's (no aliases)
        return [new(B, H * R, nq, dtype=torch.int32), new(B, H * R, nq, nq, dtype=torch.int32)]
    return [new(B, H, R, T), new(B, H, R, T), new(B, H * R, L, dtype=code), new(B, H * R, L, dtype=code),
            *lists(), *lists(), *rounds]


def flex_rows_eager(a: Assignment, c, dedup=True) -> FlexRows:
    """flex_rows through the custom op: eager even inside torch.compile."""
    parts = flex_rows_op(a.hq, a.hk, a.q_slot, a.k_slot, a.slot_isk, a.slot_bucket, a.bucket_slot, c, dedup)
    if not dedup:
        parts = parts[:8] + [None, None]
    return FlexRows(*parts)


def window_mask(q_code, k_code, c):
    """mask_mod of the compact layout: the key's code in the query's window (see flex_rows)."""
    def mask_mod(b, h, q_idx, kv_idx):
        q, k = q_code[b, h, q_idx], k_code[b, h, kv_idx]
        return (k < q) & (k >= (q // c - 1) * c)
    return mask_mod


def dedup_score(q_round, k_round):
    """score_mod of Reformer's duplicate correction: minus log of the number of rounds in which
    the key is in the query's window (>= 1 where window_mask allows), R loads per row."""
    R = q_round.shape[-1]

    def score_mod(score, b, h, q_idx, kv_idx):
        found = 0
        for r in range(R):
            d = q_round[b, h, q_idx, r] - k_round[b, h, kv_idx, r]
            found = found + ((d >= 0) & (d <= 1)).to(torch.int32)
        return score - torch.log(torch.clamp(found, min=1).to(torch.float32))
    return score_mod


def rows_block_mask(r: FlexRows, c):
    """The BlockMask of the paged layout: query page i visits the key pages kv_idx[i, :kv_num[i]]
    (see key_pages), window_mask inside them; the backward's transposed lists are the layout op's
    (q_num, q_idx). BlockMask.from_kv_blocks would transpose inside the compiled graph: there, on
    the H200, the backward kernel read out of bounds (an illegal memory access under
    CUDA_LAUNCH_BLOCKING=1 in a compiled gpt2; without it, faults in some runs, silently wrong
    gradients possible in others)."""
    from torch.nn.attention.flex_attention import BlockMask
    return BlockMask(seq_lengths=(r.q_code.shape[-1], r.k_code.shape[-1]), kv_num_blocks=r.kv_num,
                     kv_indices=r.kv_idx, full_kv_num_blocks=None, full_kv_indices=None,
                     q_num_blocks=r.q_num, q_indices=r.q_idx, full_q_num_blocks=None, full_q_indices=None,
                     BLOCK_SIZE=(FLEX_BLOCK, FLEX_BLOCK), mask_mod=window_mask(r.q_code, r.k_code, c))


# The forward kernel's tiles on Hopper (compute capability 9.x): 64 x 64 instead of inductor's
# 128 x 64. A page holds one bucket, so most of a 128-row tile's scores are masked; at T = 2048
# (131,072 tokens, bf16) lsh's fwd+bwd took 20.6 ms with these against 23.6 ms with the default,
# baseline 23.9 ms (H200, benchmarks/lsh_tiles.py, results/reference/h200/2026-12-02/). Smaller
# backward tiles did not help there. Other GPUs keep inductor's choice: not measured.
HOPPER_TILES = {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3}


def tiles(device) -> dict | None:
    """kernel_options for lsh's flex call on this device (None: inductor's defaults)."""
    device = torch.device(device)
    return dict(HOPPER_TILES) if device.type == "cuda" and capability(device)[0] == 9 else None


def flex_lse(flex, q, k, v, block_mask, scale, score_mod=None):
    """flex_attention's output and its (differentiable, natural-log) log-sum-exp."""
    options = dict(score_mod=score_mod, block_mask=block_mask, scale=scale, kernel_options=tiles(q.device))
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # torch < 2.9
        return flex(q, k, v, return_lse=True, **options)
    out, aux = flex(q, k, v, return_aux=AuxRequest(lse=True), **options)
    return out, aux.lse


def flex_chunk_attention(query, key, value, a, c, scaling, flex=None, dedup=True):
    """chunk_attention as one FlexAttention call over the paged layout (flex_rows), rounds as
    heads: the same keys per query, no scores in memory. Rows without keys (lse -inf) get only
    their own key. flex: the flex_attention to call (default compiled; tests pass eager)."""
    B, H, R, T = a.q_slot.shape
    D = query.shape[-1]
    with torch.no_grad():
        r = flex_rows_eager(a, c, dedup)
    qc = place(query, r.q_row, r.q_code.shape[-1]).flatten(1, 2)                 # (B, H*R, Lq, D)
    kc, vc = (place(x, r.k_row, r.k_code.shape[-1]).flatten(1, 2) for x in (key, value))
    score_mod = dedup_score(r.q_round, r.k_round) if dedup else None
    out, lse = flex_lse(flex or compiled_flex(), qc, kc, vc, rows_block_mask(r, c), scaling, score_mod)
    out = take(out.view(B, H, R, -1, D), r.q_row).float()                        # (B, H, R, T, D)
    lse = lse.view(B, H, R, -1).float().gather(-1, r.q_row)
    own = ((query * key).sum(-1).float() * scaling).unsqueeze(2)                   # (B, H, 1, T)
    if dedup:  # the own key is in every round
        own = own - math.log(R)
    total = torch.logaddexp(lse, own)
    out = (lse - total).exp().unsqueeze(-1) * out + (own - total).exp().unsqueeze(-1) * value.float().unsqueeze(2)
    return out, total
