"""sliding_window: causal local attention, each query sees the last `window` keys (itself included).

As in Longformer's local attention (Beltagy et al. 2020) and Mistral 7B (Jiang et al. 2023):
allowed(i, j) = 0 <= i - j < window. Approximate (long-range pairs dropped). Runs through
FlexAttention with a cached BlockMask (common.sliding_window AND common.causal): blocks wholly
outside the window are skipped, so time and memory grow as T x window, not T^2.
On CPU the same mask runs through SDPA ("sdpa-mask (flex unavailable on cpu)"), at T^2 cost.
"""
import torch

from attentions.common import (allowed_with_padding, ascii_mask, dense_mask, flex_unavailable,
                               naive_attention, padding_of, params_of, pattern_attention,
                               pattern_kernel, self_check_inputs)
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
    kernel=lambda device, params, dtype=None, shape=None: pattern_kernel(device),
    unavailable_reason=flex_unavailable,
    compiles=True,
    paper="Beltagy et al. 2020 (Longformer); Jiang et al. 2023 (Mistral 7B)",
))


if __name__ == "__main__":
    from attentions.common import StubAttention
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = {"window": 8}
    q, k, v, padding = self_check_inputs(device=device)
    out, _ = forward(StubAttention(params), q, k, v, padding, scaling=0.25)
    allowed = allowed_with_padding(reference_mask(q.shape[-2], 8, device), padding)
    ref = naive_attention(q, k, v, allowed, 0.25)
    print(f"sliding_window {params} ({pattern_kernel(device)}): max |out - reference| = "
          f"{(out.float() - ref.transpose(1, 2)).abs().max().item():.2e}")
    print(ascii_mask(dense_mask(pattern(params), 24, device)))
