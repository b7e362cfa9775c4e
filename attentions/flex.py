"""flex: multi-head FlexAttention with a dense causal BlockMask (Dong et al. 2024, torch FlexAttention).

Exact: softmax(Q K^T / sqrt(d) + causal) V, computed by a triton kernel that torch.compile
generates from a mask_mod (common.causal). flex_attention is compiled once per process and the
BlockMask built once per (T, device) and cached; a batch with padding gets its own BlockMask
with padded keys removed (rebuilt for that batch). On CPU (no flex backward in torch 2.13) the
same mask is materialised and run through SDPA, recorded as "sdpa-mask (flex unavailable on cpu)".
"""
import torch

from attentions.common import causal_pairs, flex_based, padding_of, pattern_attention, pattern_self_check
from attentions.registry import AttentionSpec, register

PATTERN = ("causal",)


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D); dropout unsupported by flex_attention (the harness uses 0)
    out = pattern_attention(query, key, value, PATTERN, padding_of(attention_mask), scaling)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * D * causal_pairs(T)


SPEC = register(AttentionSpec(
    name="flex",
    description="FlexAttention (torch.compile'd flex_attention), dense causal BlockMask",
    exact=True,
    forward=forward,
    flops=flops,
    **flex_based(),
    paper="PyTorch FlexAttention (Dong et al. 2024)",
))


if __name__ == "__main__":
    pattern_self_check("flex", forward, {}, lambda T, device: torch.ones(T, T, dtype=torch.bool, device=device).tril(),
                       PATTERN, 24)
