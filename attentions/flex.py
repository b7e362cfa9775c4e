"""flex: multi-head FlexAttention with a dense causal BlockMask (Dong et al. 2024, torch FlexAttention).

Exact: softmax(Q K^T / sqrt(d) + causal) V. impl (patterns.py): "flex" computes it with the
Triton kernel torch.compile generates from a mask_mod (masks.causal), compiled once per process,
the BlockMask built once per (T, device); a padded batch gets its own BlockMask with padded keys
removed. "chunked" is the PyTorch path for GPUs below compute capability 8.0 (a causal band as
wide as T: query blocks of 128 against every earlier key, fp32 softmax). "auto" (the default)
picks flex where it trains, chunked on pre-Ampere GPUs, and on CPU the causal mask through SDPA
("sdpa-mask (flex unavailable on cpu)"), the cheapest dense path there.
"""
import torch

from attentions.common import causal_pairs, padding_of, params_of
from attentions.patterns import flex_based, pattern_attention, pattern_self_check
from attentions.registry import AttentionSpec, register

PARAMS = {"impl": "auto"}
PATTERN = ("causal",)


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D); dropout unsupported by flex_attention (the harness uses 0)
    p = params_of(module, PARAMS)
    out = pattern_attention(query, key, value, PATTERN, padding_of(attention_mask), scaling, p["impl"])
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * D * causal_pairs(T)


SPEC = register(AttentionSpec(
    name="flex",
    description="FlexAttention (torch.compile'd flex_attention), dense causal BlockMask",
    exact=True,
    forward=forward,
    flops=flops,
    params=PARAMS,
    **flex_based("causal"),
    paper="PyTorch FlexAttention (Dong et al. 2024)",
))


if __name__ == "__main__":
    pattern_self_check("flex", forward, {}, lambda T, device: torch.ones(T, T, dtype=torch.bool, device=device).tril(),
                       PATTERN, 24)
