"""flex: multi-head FlexAttention with a dense causal BlockMask (Dong et al. 2024, torch FlexAttention).

Exact: softmax(Q K^T / sqrt(d) + causal) V, computed by a triton kernel that torch.compile
generates from a mask_mod (common.causal). flex_attention is compiled once per process and the
BlockMask built once per (T, device) and cached; a batch with padding gets its own BlockMask
with padded keys removed (rebuilt for that batch). On CPU (no flex backward in torch 2.13) the
same mask is materialised and run through SDPA, recorded as "sdpa-mask (flex unavailable on cpu)".
"""
import torch

from attentions.common import (ascii_mask, causal_pairs, dense_mask, flex_unavailable, naive_attention,
                               padding_of, pattern_attention, pattern_kernel, self_check_inputs,
                               allowed_with_padding)
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
    kernel=lambda device, params, dtype=None, shape=None: pattern_kernel(device),
    unavailable_reason=flex_unavailable,
    compiles=True,
    paper="PyTorch FlexAttention (Dong et al. 2024)",
))


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, padding = self_check_inputs(device=device)
    T = q.shape[-2]
    out, _ = forward(None, q, k, v, padding, scaling=0.25)
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    ref = naive_attention(q, k, v, allowed_with_padding(causal, padding), 0.25)
    print(f"flex ({pattern_kernel(device)}): max |out - reference| = "
          f"{(out.float() - ref.transpose(1, 2)).abs().max().item():.2e}")
    print(ascii_mask(dense_mask(PATTERN, 24, device)))
