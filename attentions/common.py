"""Shared pieces of every mechanism: padding and parameters, which SDPA backend really runs, the
naive O(T^2) reference, pictures of masks, and the inputs of the `python -m attentions.<name>` checks.

Mask patterns live in masks.py, flex_attention in flex_kernel.py, running a pattern in patterns.py;
the names other mechanisms import from here are re-exported.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attentions.flex_kernel import compiled_flex, flex_unavailable  # noqa: F401 (lsh imports them here)
from attentions.masks import allowed_with_padding, built_once  # noqa: F401 (flash, tests)


def padding_of(attention_mask):
    """The (B, T) bool padding mask (registry.padding_mask_2d) or None; anything else is a bug."""
    if attention_mask is None or attention_mask.dim() == 2:
        return attention_mask
    raise ValueError("attention-bench mechanisms take a (B, T) padding mask, got shape "
                     f"{tuple(attention_mask.shape)}; install() registers the mask function")


def params_of(module, defaults: dict) -> dict:
    """Parameters set by registry.install on the module, over the spec's defaults."""
    return {**defaults, **(getattr(module, "bench_params", None) or {})}


def causal_pairs(T: int) -> float:
    return T * (T + 1) / 2


# ---- which SDPA backend really runs ---------------------------------------------------------

_SDPA_OPS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash-cpu",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def _recorder():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        """Records the aten ops SDPA dispatches to: the fused kernel's name, or math's pieces."""
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))
    return Record()


@functools.lru_cache(maxsize=64)
def sdpa_backend(device: str, dtype: torch.dtype, shape: tuple, kv_heads: int, masked: bool) -> str:
    """Run SDPA once on zeros of this shape and name the backend torch dispatched to.

    Inputs require grad as in training: some backends are only eligible without it.
    """
    B, H, T, D = shape
    q = torch.zeros(B, H, T, D, device=device, dtype=dtype, requires_grad=True)
    kv = torch.zeros(B, kv_heads, T, D, device=device, dtype=dtype, requires_grad=True)
    kwargs = {"enable_gqa": kv_heads != H}
    if masked:
        kwargs["attn_mask"] = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]
    else:
        kwargs["is_causal"] = True
    record = _recorder()
    with record:
        F.scaled_dot_product_attention(q, kv, kv, **kwargs)
    for op in record.ops:
        if op in _SDPA_OPS:
            return _SDPA_OPS[op]
    return "math"


def sdpa_kernel_name(device, dtype=None, shape=None, kv_heads=None, padded=True) -> str:
    """'sdpa-<backend>' for unpadded batches, plus the padded batches' backend when it differs."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    shape = tuple(shape or (1, 12, 256, 64))
    kv_heads = kv_heads or shape[1]
    plain = sdpa_backend(str(device), dtype, shape, kv_heads, False)
    name = f"sdpa-{plain}"
    if not padded:  # the caller never passes a mask
        return name
    masked = sdpa_backend(str(device), dtype, shape, kv_heads, True)
    return name if masked == plain else f"{name} (padded batches: sdpa-{masked})"


# ---- references and pictures ----------------------------------------------------------------

def naive_attention(query, key, value, allowed, scaling, log_weight=None):
    """O(T^2) reference in fp32: softmax(QK^T * scaling + log_weight, masked by allowed) V.

    allowed broadcasts to (B, H, T, T); log_weight (same) adds log multiplicities (lsh rounds).
    """
    scores = (query.float() @ key.float().transpose(-1, -2)) * scaling  # (B, H, T, T)
    if log_weight is not None:
        scores = scores + log_weight
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ value.float()  # (B, H, T, D)


def ascii_mask(allowed: torch.Tensor, step: int = 1) -> str:
    """A (T, T) bool mask as text, '#' = attended, '.' = skipped; every step-th row and column."""
    rows = allowed[::step, ::step].tolist()
    return "\n".join("".join("#" if x else "." for x in row) for row in rows)


def self_check_inputs(B=2, H=3, T=40, D=16, seed=0, device="cpu"):
    """Random query, key, value (B, H, T, D) and a right-padding mask for the __main__ checks."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device) for _ in range(3))
    padding = torch.ones(B, T, dtype=torch.bool, device=device)
    padding[0, T - 7:] = False  # first sequence right-padded
    return q, k, v, padding


class StubAttention(torch.nn.Module):
    """Stands in for GPT2Attention when a mechanism runs alone (self checks, benchmarks)."""

    def __init__(self, params=None, layer_idx=0, num_heads=12, head_dim=64):
        super().__init__()
        self.bench_params = dict(params or {})
        self.layer_idx, self.num_heads, self.head_dim = layer_idx, num_heads, head_dim
