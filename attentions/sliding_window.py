"""sliding_window: causal local attention, each query sees the last `window` keys (itself included).

As in Longformer's local attention (Beltagy et al. 2020) and Mistral 7B (Jiang et al. 2023):
allowed(i, j) = 0 <= i - j < window. Approximate (long-range pairs dropped). Runs through
FlexAttention with a cached BlockMask (common.sliding_window AND common.causal): blocks wholly
outside the window are skipped, so time and memory grow as T x window, not T^2.
On CPU the same mask runs through SDPA ("sdpa-mask (flex unavailable on cpu)"), at T^2 cost.
"""
import torch

from attentions.common import flex_based, padding_of, params_of, pattern_attention, pattern_self_check
from attentions.registry import AttentionSpec, register

PARAMS = {"window": 256}


def pattern(params):
    return ("sliding_window", int(params["window"]))


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D)
    p = params_of(module, PARAMS)
    out = pattern_attention(query, key, value, pattern(p), padding_of(attention_mask), scaling)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def pairs(T, window):
    """Query i sees min(i + 1, window) keys."""
    W = min(T, window)
    return W * (W + 1) / 2 + (T - W) * W


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * D * pairs(T, params["window"])


def reference_mask(T, window, device="cpu"):
    """The window written out directly (not through mask_mods), for the tests."""
    i = torch.arange(T, device=device)
    diff = i[:, None] - i[None, :]  # (T, T) query - key
    return (diff >= 0) & (diff < window)


SPEC = register(AttentionSpec(
    name="sliding_window",
    description="causal sliding window (local) attention via a FlexAttention block mask",
    exact=False,
    forward=forward,
    flops=flops,
    params=PARAMS,
    **flex_based(),
    paper="Beltagy et al. 2020 (Longformer); Jiang et al. 2023 (Mistral 7B)",
))


if __name__ == "__main__":
    params = {"window": 8}
    pattern_self_check("sliding_window", forward, params, lambda T, device: reference_mask(T, 8, device),
                       pattern(params), 24)
