"""FlexAttention alone on lsh's slot layout: what the mask_mod's data-dependent loads cost.

lsh's flex path (impl=flex) measured 177 ms fwd+bwd on the H200 at 131072 tokens, T = 2048, of
which 155 ms in flex's forward kernel and 14 ms in its backward kernel. This times the same flex
call (same q, k, v in the slot layout, same band of blocks, so the same sparsity) with three
mask_mods:

  five loads  - the mask_mod lsh had until session 4: position, key flag and bucket per slot,
                int64/bool tensors, five loads per score;
  two loads   - attentions.lsh.slot_mask now: a real key's bucket and the slot's bucket, int32,
                "earlier position" read as "earlier slot" (the slots of a bucket are in position
                order);
  band only   - no data-dependent load (a wrong mask for lsh: the floor of what a mask costs).

On the H200 (2026-11-29, torch 2.11): five loads 157 ms fwd / 172 ms fwd+bwd, two loads 4.3 /
14.5 ms, band only 3.3 / 13.0 ms (results/reference/h200/flex_mask_loads.txt).

    python benchmarks/flex_mask_loads.py                                  # GPU
    python benchmarks/flex_mask_loads.py --device cpu --tokens 512 --T 128  # CPU: eager flex, forward only
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from attention_kernels import median_time  # noqa: E402  (benchmarks/, this script's folder)
from attentions import lsh  # noqa: E402


def five_loads(pos, is_key, bucket, c):
    """lsh.slot_mask before session 4 (tensors (B, H*R, S) int64 / bool)."""
    def mask_mod(b, h, q_idx, kv_idx):
        near = (kv_idx <= q_idx) & (q_idx // c - kv_idx // c <= 1)
        same = bucket[b, h, kv_idx] == bucket[b, h, q_idx]
        return near & same & is_key[b, h, kv_idx] & (pos[b, h, kv_idx] < pos[b, h, q_idx])
    return mask_mod


def band_only(c):
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx < q_idx) & (q_idx // c - kv_idx // c <= 1)
    return mask_mod


def layout(B, H, T, D, device, dtype):
    """q, k, v scattered into lsh's slot layout (rounds as heads), and the assignment."""
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype) for _ in range(3))
    a = lsh.assign(q, k, None, lsh.PARAMS, 0, flex=True)
    B, H, R, S = a.slot_pos.shape

    def heads(t):
        return t.reshape(B, H * R, *t.shape[3:])
    qs = heads(lsh._place(q, a.q_slot, S))
    ks, vs = (heads(lsh._place(x, a.k_slot, S)) for x in (k, v))
    return qs, ks, vs, a, heads


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=131072, help="B * T")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    B, H, D, c = max(1, args.tokens // args.T), 12, 64, int(lsh.PARAMS["bucket_size"])
    qs, ks, vs, a, heads = layout(B, H, args.T, D, device, torch.bfloat16 if cuda else torch.float32)
    S = qs.shape[2]
    num, idx = lsh.band_blocks(S, c, str(device))
    mods = {
        "five loads": five_loads(heads(a.slot_pos), heads(a.slot_isk), heads(a.slot_bucket), c),
        "two loads": lsh.slot_mask(heads(lsh.key_buckets(a).int()),
                                   heads(a.slot_bucket.int()), c),
        "band only": band_only(c),
    }
    flex = torch.compile(flex_attention, dynamic=False) if cuda else flex_attention
    isq = heads(a.slot_isq)[..., None]
    lines, outs = [f"B={B} H*R={qs.shape[1]} S={S} slots, D={D}, {qs.dtype}, {device}: flex alone, median of {args.repeats}"], {}
    for name, mod in mods.items():
        mask = BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=lsh.FLEX_BLOCK, seq_lengths=(S, S), mask_mod=mod)
        x = [t.detach().requires_grad_(cuda) for t in (qs, ks, vs)]

        def fwd():
            return flex(*x, block_mask=mask)
        with torch.no_grad():
            outs[name] = fwd()
        line = f"{name:>10}: sparsity {mask.sparsity():.1f}%, fwd {1e3 * median_time(fwd, device, args.repeats):.2f} ms"
        if cuda:  # flex has no backward on CPU
            grad = torch.randn_like(outs[name])

            def both():
                torch.autograd.grad(fwd(), x, grad)
            both()
            line += f", fwd+bwd {1e3 * median_time(both, device, args.repeats):.2f} ms"
        lines.append(line)
        print(line, flush=True)
    diff = ((outs["two loads"].float() - outs["five loads"].float()).abs() * isq).max().item()
    lines.append(f"max |two loads - five loads| over query slots: {diff:.3g}")
    print(lines[-1])
    return lines


if __name__ == "__main__":
    main()
