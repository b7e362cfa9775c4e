"""sdpa: torch.nn.functional.scaled_dot_product_attention, backend chosen by torch.

Causal with is_causal=True when nothing is padded (lets torch pick flash/cudnn/efficient);
with right padding, a boolean (B, 1, T, T) mask of causal AND real keys.
"""
import torch
import torch.nn.functional as F

from attentions.registry import AttentionSpec, register


def causal_padding_mask(padding_mask, T, device):
    """(B, 1, T, T) bool, True = may attend: causal and the key is a real token."""
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return causal[None, None] & padding_mask[:, None, None, :]


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query (B, H, T, D); key, value (B, Hkv, T, D)
    T = query.shape[-2]
    gqa = key.shape[1] != query.shape[1]
    if attention_mask is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                             dropout_p=dropout, enable_gqa=gqa)
    else:
        mask = causal_padding_mask(attention_mask, T, query.device)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                             dropout_p=dropout, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * D * T * (T + 1) / 2  # causal: only the lower triangle is computed


SPEC = register(AttentionSpec(
    name="sdpa",
    description="torch scaled_dot_product_attention, is_causal, backend picked by torch",
    exact=True,
    forward=forward,
    flops=flops,
    kernel=lambda device, params: "sdpa-math" if device.type == "cpu" else "sdpa-auto",
    paper="torch.nn.functional.scaled_dot_product_attention",
))
