"""FlexAttention alone on lsh's layouts: what the mask_mod's loads and the layout cost.

lsh's flex path once ran over the SLOT layout: every (batch, head, round) row held all 2T items at
their slots, queries and keys interleaved and each bucket padded to whole chunks (S ~ 3T rows),
with a fixed band of blocks. This times the same flex call (same q, k, v, no duplicate
correction) with:

  five loads   - slot layout, a mask_mod reading position, key flag and bucket per slot,
                 int64/bool tensors, five loads per score;
  two loads    - slot layout, a real key's bucket and the slot's bucket, int32, "earlier
                 position" read as "earlier slot" (a bucket's slots are in position order);
  band only    - slot layout, no data-dependent load (a wrong mask for lsh: the floor of what a
                 mask costs there);
  compact rows - what lsh's flex path runs (lsh.flex_rows / rows_block_mask): query rows and key
                 rows on pages of 128 rows, one bucket per page, one int32 code per row (bucket *
                 span + index in the bucket), a list of key pages per query page.

On the H200 (torch 2.11, the compact rows then numbered without pages): five loads 157 ms fwd /
172 ms fwd+bwd, two loads 4.3 / 14.5 ms, band only 3.3 / 13.0 ms
(results/reference/h200/flex_mask_loads.txt).

    python benchmarks/flex_mask_loads.py                                  # GPU
    python benchmarks/flex_mask_loads.py --device cpu --tokens 512 --T 128  # CPU: eager flex, forward only
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.attention_kernels import median_time  # noqa: E402
from attentions import lsh  # noqa: E402
from attentions.common import compiled_flex  # noqa: E402
from benchmarks.profile_lsh import add_size_args  # noqa: E402

BLOCK = lsh.FLEX_BLOCK


# ---- the slot layout lsh's flex path once ran over -------------------------------------------

def slot_layout(a, c):
    """The assignment with its slot count padded to a multiple of lcm(c, 128) (empty slots)."""
    S = a.slot_bucket.shape[-1]
    step = math.lcm(c, BLOCK)
    extra = -(-S // step) * step - S
    pad = (*a.slot_bucket.shape[:-1], extra)
    return a._replace(slot_isk=torch.cat([a.slot_isk, a.slot_isk.new_zeros(pad)], -1),
                      slot_bucket=torch.cat([a.slot_bucket, a.slot_bucket.new_full(pad, -1)], -1))


def band_blocks(S, c, device):
    """kv_num_blocks (1, 1, n), kv_indices (1, 1, n, n): query block i (slots 128i .. 128i + 127)
    visits the key blocks from the chunk before its first slot's chunk to its last slot's chunk."""
    n = S // BLOCK
    first = torch.arange(n) * BLOCK
    lo = ((first // c - 1).clamp(min=0) * c) // BLOCK
    hi = (((first + BLOCK - 1) // c + 1) * c - 1).clamp(max=S - 1) // BLOCK
    idx = (lo[:, None] + torch.arange(n)[None, :]).clamp(max=n - 1)
    return (hi - lo + 1).int()[None, None].to(device), idx.int()[None, None].to(device)


def two_loads(key_bucket, bucket, c):
    """The two-load mask_mod (int32 (B, H*R, S)): key_bucket a real key's bucket, -2 elsewhere;
    bucket the slot item's bucket, -1 if empty."""
    def mask_mod(b, h, q_idx, kv_idx):
        near = (kv_idx < q_idx) & (q_idx // c - kv_idx // c <= 1)
        return near & (key_bucket[b, h, kv_idx] == bucket[b, h, q_idx])
    return mask_mod


def five_loads(pos, is_key, bucket, c):
    """The five-load mask_mod (tensors (B, H*R, S) int64 / bool)."""
    def mask_mod(b, h, q_idx, kv_idx):
        near = (kv_idx <= q_idx) & (q_idx // c - kv_idx // c <= 1)
        same = bucket[b, h, kv_idx] == bucket[b, h, q_idx]
        return near & same & is_key[b, h, kv_idx] & (pos[b, h, kv_idx] < pos[b, h, q_idx])
    return mask_mod


def band_only(c):
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx < q_idx) & (q_idx // c - kv_idx // c <= 1)
    return mask_mod


def slot_positions(a):
    """(B, H, R, S) the original position of each slot's item (0 where empty): what the five-load
    mask read, and lsh.Assignment does not carry."""
    pos = torch.arange(a.q_slot.shape[-1], device=a.q_slot.device).expand_as(a.q_slot)
    return torch.zeros_like(a.slot_bucket).scatter(-1, a.q_slot, pos).scatter(-1, a.k_slot, pos)


def build_cases(args, device):
    """The inputs of each mask: name -> (q, k, v, block mask, rows that are queries), and a header."""
    from torch.nn.attention.flex_attention import BlockMask
    cuda = device.type == "cuda"
    B, H, D, c = max(1, args.tokens // args.T), 12, 64, int(lsh.PARAMS["bucket_size"])
    q, k, v = (torch.randn(B, H, args.T, D, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
               for _ in range(3))
    a = slot_layout(lsh.assign(q, k, None, lsh.PARAMS, 0), c)
    S = a.slot_bucket.shape[-1]
    on_slots = (lsh.place(q, a.q_slot, S).flatten(1, 2), *(lsh.place(x, a.k_slot, S).flatten(1, 2) for x in (k, v)))
    num, idx = band_blocks(S, c, device)

    def band(mask_mod):
        return BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=BLOCK, seq_lengths=(S, S), mask_mod=mask_mod)
    rows = lsh.flex_rows(a, c, dedup=False)
    Lq, Lk = rows.q_code.shape[-1], rows.k_code.shape[-1]
    compact = (lsh.place(q, rows.q_row, Lq).flatten(1, 2), *(lsh.place(x, rows.k_row, Lk).flatten(1, 2) for x in (k, v)))
    cases = {
        "five loads": (*on_slots, band(five_loads(slot_positions(a).flatten(1, 2), a.slot_isk.flatten(1, 2),
                                                  a.slot_bucket.flatten(1, 2), c)), a.q_slot),
        "two loads": (*on_slots, band(two_loads(lsh.key_buckets(a).int().flatten(1, 2),
                                                a.slot_bucket.int().flatten(1, 2), c)), a.q_slot),
        "band only": (*on_slots, band(band_only(c)), a.q_slot),
        "compact rows": (*compact, lsh.rows_block_mask(rows, c), rows.q_row),
    }
    head = (f"B={B} H*R={on_slots[0].shape[1]} T={args.T}, D={D}, {q.dtype}, {device}: flex alone, "
            f"median of {args.repeats}; slot layout {S} rows, compact {Lq} query rows, {Lk} key rows")
    return cases, head


def time_case(name, qkv, mask, queries, flex, device, repeats):
    """One mask's line (sparsity, fwd and on CUDA fwd+bwd ms) and each query's output."""
    cuda = device.type == "cuda"
    x = [t.detach().requires_grad_(cuda) for t in qkv]

    def fwd():
        return flex(*x, block_mask=mask)
    with torch.no_grad():
        out = lsh.take(fwd().view(*queries.shape[:3], -1, x[0].shape[-1]), queries).float()  # each query's row
    line = f"{name:>12}: sparsity {mask.sparsity():.1f}%, fwd {1e3 * median_time(fwd, device, repeats):.2f} ms"
    if not cuda:
        return line + ", fwd+bwd n/a (flex has no backward on CPU)", out
    grad = torch.randn_like(x[0])

    def both():
        torch.autograd.grad(fwd(), x, grad)
    both()
    return line + f", fwd+bwd {1e3 * median_time(both, device, repeats):.2f} ms", out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(ap)
    args = ap.parse_args(argv)
    from torch.nn.attention.flex_attention import flex_attention
    device = torch.device(args.device)
    cases, head = build_cases(args, device)
    flex = compiled_flex() if device.type == "cuda" else flex_attention
    lines, outs = [head], {}
    for name, (*qkv, mask, queries) in cases.items():
        line, outs[name] = time_case(name, qkv, mask, queries, flex, device, args.repeats)
        lines.append(line)
        print(line, flush=True)
    for other in ("five loads", "compact rows"):
        diff = (outs[other] - outs["two loads"]).abs().max().item()
        lines.append(f"max |{other} - two loads| over the queries: {diff:.3g}")
        print(lines[-1])
    return lines


if __name__ == "__main__":
    main()
