"""sliding_window: causal local attention, each query sees the last `window` keys (itself included).

As in Longformer's local attention (Beltagy et al. 2020) and Mistral 7B (Jiang et al. 2023).
Convention: window W = the query plus its W - 1 earlier keys, allowed(i, j) = 0 <= i - j < W.
Approximate (long-range pairs dropped). window "auto" (the default) = min(256, max(16, T // 8)):
a fixed 256 would keep 75% of the causal pairs at T = 512, this keeps about a quarter at the short
presets and falls as 2 W / T from T = 2048. impl (patterns.py): "flex" runs the cached BlockMask
(masks.sliding_window AND masks.causal), skipping blocks wholly outside the window; "chunked"
(pre-Ampere GPUs, and the CPU under "auto") runs query blocks against the keys of their band
only (banded.band_attention). Both grow as T x W, not T^2.
"""
import torch

from attentions.common import padding_of, params_of
from attentions.patterns import flex_based, pattern_attention, pattern_self_check
from attentions.registry import AttentionSpec, register
from harness.errors import UserError

PARAMS = {"window": "auto", "impl": "auto"}


def window_at(T, window):
    """The window in use at length T."""
    return min(256, max(16, T // 8)) if window == "auto" else int(window)


def pattern(params, T):
    return ("sliding_window", window_at(T, params["window"]))


def check(params):
    w = params["window"]
    if w != "auto" and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
        raise UserError(f"sliding_window: window={w!r}; use 'auto' or an integer >= 1")


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D)
    p = params_of(module, PARAMS)
    out = pattern_attention(query, key, value, pattern(p, query.shape[-2]), padding_of(attention_mask),
                            scaling, p["impl"])
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def pairs(T, window):
    """Query i sees min(i + 1, W) keys."""
    W = min(T, window_at(T, window))
    return W * (W + 1) // 2 + (T - W) * W


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * D * pairs(T, params["window"])


def density(T, params):
    return pairs(T, params["window"]) / (T * (T + 1) / 2)


def reference_mask(T, window, device="cpu"):
    """The window written out directly (not through mask_mods), for the tests."""
    i = torch.arange(T, device=device)
    diff = i[:, None] - i[None, :]  # (T, T) query - key
    return (diff >= 0) & (diff < window_at(T, window))


SPEC = register(AttentionSpec(
    name="sliding_window",
    description="causal sliding window (local) attention: FlexAttention block mask or chunked bands",
    exact=False,
    forward=forward,
    flops=flops,
    density=density,
    params=PARAMS,
    **flex_based("sliding_window", check),
    paper="Beltagy et al. 2020 (Longformer); Jiang et al. 2023 (Mistral 7B)",
))


if __name__ == "__main__":
    params = {"window": 8}
    pattern_self_check("sliding_window", forward, params, lambda T, device: reference_mask(T, 8, device),
                       pattern(params, 24), 24)
