"""flex_sparse: block-sparse causal attention, local + strided blocks (Child et al. 2019).

Sparse Transformer's 'fixed' pattern at block granularity: query block i attends to
  - its own block and the local_blocks - 1 blocks before it (local), and
  - every block j with j % stride == stride - 1 (strided 'summary' blocks), causally.
allowed(q, k) = k <= q AND (q//bs - k//bs < local_blocks OR (k//bs) % stride == stride - 1).
Approximate. With block_size 128 equal to the BlockMask block size, every block pair outside the
pattern is empty and FlexAttention skips it (BlockMask sparsity): cost is the computed pairs
only, which is what flops() counts. On CPU: the same mask through SDPA, at dense cost.
"""
import torch

from attentions.common import flex_based, padding_of, params_of, pattern_attention, pattern_self_check
from attentions.registry import AttentionSpec, register

PARAMS = {"block_size": 128, "local_blocks": 4, "stride": 8}


def pattern(params):
    return ("block_sparse", int(params["block_size"]), int(params["local_blocks"]), int(params["stride"]))


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D)
    p = params_of(module, PARAMS)
    out = pattern_attention(query, key, value, pattern(p), padding_of(attention_mask), scaling)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def pairs(T, block_size, local_blocks, stride):
    """Allowed (q, k) pairs: full earlier blocks in the pattern plus the causal diagonal block."""
    n_blocks = -(-T // block_size)
    total = 0
    for qb in range(n_blocks):
        rows = min(block_size, T - qb * block_size)  # the last block may be short
        far = max(0, qb - local_blocks + 1)           # earlier blocks outside the local band
        kept = min(qb, local_blocks - 1) + far // stride  # local band + summary blocks among far
        total += rows * (rows + 1) // 2 + rows * block_size * kept  # diagonal causal, rest full
    return total


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * D * pairs(T, params["block_size"], params["local_blocks"], params["stride"])


def reference_mask(T, block_size, local_blocks, stride, device="cpu"):
    """The pattern written out directly (not through mask_mods), for the tests."""
    blk = torch.arange(T, device=device) // block_size
    local = blk[:, None] - blk[None, :] < local_blocks
    strided = (blk % stride == stride - 1)[None, :]
    return torch.ones(T, T, dtype=torch.bool, device=device).tril() & (local | strided)


SPEC = register(AttentionSpec(
    name="flex_sparse",
    description="FlexAttention, block-sparse causal pattern: local blocks + strided summary blocks",
    exact=False,
    forward=forward,
    flops=flops,
    params=PARAMS,
    **flex_based(),
    paper="Child et al. 2019, Generating Long Sequences with Sparse Transformers",
))


if __name__ == "__main__":
    params = {"block_size": 4, "local_blocks": 2, "stride": 3}
    pattern_self_check("flex_sparse", forward, params, lambda T, device: reference_mask(T, 4, 2, 3, device),
                       pattern(params), 32)
