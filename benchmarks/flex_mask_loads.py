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
from attentions.common import compiled_flex  # noqa: E402
from profile_lsh import add_size_args  # noqa: E402


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


def slot_positions(a):
    """(B, H, R, S) the original position of each slot's item (0 where empty): what the five-load
    mask read, and lsh.Assignment no longer carries."""
    pos = torch.arange(a.q_slot.shape[-1], device=a.q_slot.device).expand_as(a.q_slot)
    return torch.zeros_like(a.slot_bucket).scatter(-1, a.q_slot, pos).scatter(-1, a.k_slot, pos)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(ap)
    args = ap.parse_args(argv)
    from torch.nn.attention.flex_attention import flex_attention
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    B, H, D, c = max(1, args.tokens // args.T), 12, 64, int(lsh.PARAMS["bucket_size"])
    q, k, v = (torch.randn(B, H, args.T, D, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
               for _ in range(3))
    a = lsh.assign(q, k, None, lsh.PARAMS, 0, flex=True)
    qs, ks, vs = lsh.flex_layout(q, k, v, a)
    mods = {
        "five loads": five_loads(slot_positions(a).flatten(1, 2), a.slot_isk.flatten(1, 2),
                                 a.slot_bucket.flatten(1, 2), c),
        "two loads": None,  # lsh.flex_block_mask's default: lsh.slot_mask
        "band only": band_only(c),
    }
    flex = compiled_flex() if cuda else flex_attention
    is_query = torch.zeros_like(a.slot_isk).scatter(-1, a.q_slot, True).flatten(1, 2)[..., None]
    S = qs.shape[2]
    lines, outs = [f"B={B} H*R={qs.shape[1]} S={S} slots, D={D}, {qs.dtype}, {device}: flex alone, median of {args.repeats}"], {}
    for name, mod in mods.items():
        mask = lsh.flex_block_mask(a, c, mod)
        x = [t.detach().requires_grad_(cuda) for t in (qs, ks, vs)]

        def fwd():
            return flex(*x, block_mask=mask)
        with torch.no_grad():
            outs[name] = fwd()
        line = f"{name:>10}: sparsity {mask.sparsity():.1f}%, fwd {1e3 * median_time(fwd, device, args.repeats):.2f} ms"
        if cuda:
            grad = torch.randn_like(outs[name])

            def both():
                torch.autograd.grad(fwd(), x, grad)
            both()
            line += f", fwd+bwd {1e3 * median_time(both, device, args.repeats):.2f} ms"
        else:
            line += ", fwd+bwd n/a (flex has no backward on CPU)"
        lines.append(line)
        print(line, flush=True)
    diff = ((outs["two loads"].float() - outs["five loads"].float()).abs() * is_query).max().item()
    lines.append(f"max |two loads - five loads| over query slots: {diff:.3g}")
    print(lines[-1])
    return lines


if __name__ == "__main__":
    main()
