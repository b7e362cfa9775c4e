"""flex_attention itself: the compiled function, and where its Triton kernel can run.

FlexAttention (Dong et al. 2024, torch.nn.attention.flex_attention) is compiled once per process
by torch.compile into a Triton kernel. That kernel needs a CUDA GPU of compute capability >= 8.0
(Ampere); below it, and on the CPU (no flex backward in torch 2.13), another path has to run.
"""
from __future__ import annotations

import torch

from attentions.device import capability as device_capability

MIN_CAPABILITY = (8, 0)
_COMPILED_FLEX = None


def compiled_flex():
    """flex_attention compiled once per process (lazily: importing this module compiles nothing)."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention
        # A run compiles a few variants (grad / no-grad, padded BlockMask, a short last batch);
        # past dynamo's limit (8) it would silently run flex uncompiled, so allow more.
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), 64))
        # dynamic=False: each run has one sequence length, static shapes give the fastest kernel.
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def flex_unavailable(device) -> str | None:
    """None where the compiled flex kernel can be built (CUDA with triton), else why not."""
    device = torch.device(device)
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        if not has_triton():
            return "flex_attention on CUDA needs triton (pip install triton)"
    return None


def flex_cannot_train(device) -> str | None:
    """None where compiled flex_attention runs forward and backward, else why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"flex_attention has no {device.type} backward in torch {torch.__version__.split('+')[0]}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    capability = device_capability(device)
    if tuple(capability) < MIN_CAPABILITY:
        return (f"flex_attention's Triton kernel needs compute capability >= 8.0 (Ampere); this GPU "
                f"is {capability[0]}.{capability[1]}")
    return flex_unavailable(device)
