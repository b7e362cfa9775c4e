"""Shared pieces of the mask-based mechanisms: mask functions, mask caches, references, probes.

Mask functions follow FlexAttention's mask_mod signature, one small function per idea,
composed with and_masks / or_masks as attention-gym does (attn_gym/masks/):

    mask_mod(b, h, q_idx, kv_idx) -> bool   # True = query q_idx may attend to key kv_idx

A pattern is a hashable tuple ("causal",), ("sliding_window", W), ("block_sparse", bs, nl, st)
so that dense masks and BlockMasks can be cached per (pattern, T, device) instead of being
rebuilt at every layer and step. flex_attention has no CPU backward (torch 2.13), so on CPU the
same mask is materialised as a (T, T) bool tensor and run through SDPA, and that is recorded.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import and_masks, create_mask, or_masks

CPU_FLEX_KERNEL = "sdpa-mask (flex unavailable on cpu)"


# ---- mask functions: one idea each ----------------------------------------------------------

def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def sliding_window(window):
    """Keys at most window - 1 positions back: each query sees `window` keys (itself included)."""
    def in_window(b, h, q_idx, kv_idx):
        return q_idx - kv_idx < window
    return in_window


def local_blocks(block_size, n_local):
    """Own block and the n_local - 1 blocks before it (Child et al. 2019, the 'local' head)."""
    def near(b, h, q_idx, kv_idx):
        return q_idx // block_size - kv_idx // block_size < n_local
    return near


def strided_blocks(block_size, stride):
    """Every stride-th block is a summary column all later queries read (Child et al. 'fixed')."""
    def summary(b, h, q_idx, kv_idx):
        return (kv_idx // block_size) % stride == stride - 1
    return summary


def real_keys(padding):
    """padding (B, T) bool, True = real. A query always keeps itself, so no row is empty (NaN)."""
    def keep(b, h, q_idx, kv_idx):
        return padding[b, kv_idx] | (q_idx == kv_idx)
    return keep


def mask_mod_for(pattern: tuple):
    """The causal mask_mod of a pattern tuple."""
    kind, *args = pattern
    if kind == "causal":
        return causal
    if kind == "sliding_window":
        return and_masks(causal, sliding_window(*args))
    if kind == "block_sparse":
        block_size, n_local, stride = args
        return and_masks(causal, or_masks(local_blocks(block_size, n_local),
                                          strided_blocks(block_size, stride)))
    raise ValueError(f"unknown mask pattern {pattern!r}")


# ---- cached masks ---------------------------------------------------------------------------

def built_once(fn):
    """A cache like functools.lru_cache, but a plain dict: torch.compile ignores lru_cache and
    traces the function inside the graph (building a BlockMask at every step), while a dict
    lookup is traced as a constant. train.py runs one eager forward before compiling, so every
    mask is built here, outside the graph."""
    cache = {}

    def wrapper(*key):
        if key not in cache:
            cache[key] = fn(*key)
        return cache[key]
    wrapper.cache = cache
    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


@built_once
def dense_mask(pattern: tuple, T: int, device: str) -> torch.Tensor:
    """(T, T) bool of the pattern, built once per (pattern, T, device)."""
    return create_mask(mask_mod_for(pattern), 1, 1, T, T, device=device)[0, 0]


@built_once
def block_mask(pattern: tuple, T: int, device: str):
    """FlexAttention BlockMask of the pattern, broadcast over batch and heads, built once."""
    from torch.nn.attention.flex_attention import create_block_mask
    return create_block_mask(mask_mod_for(pattern), None, None, T, T, device=device)


def padded_block_mask(pattern: tuple, padding: torch.Tensor):
    """Per-batch BlockMask with padded keys removed; rebuilt per call (padding changes per batch)."""
    from torch.nn.attention.flex_attention import create_block_mask
    B, T = padding.shape
    mod = and_masks(mask_mod_for(pattern), real_keys(padding))
    return create_block_mask(mod, B, None, T, T, device=padding.device)


def allowed_with_padding(allowed: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
    """allowed (T, T) bool -> (1 or B, 1, T, T): padded keys removed, the diagonal always kept."""
    allowed = allowed[None, None]
    if padding is None:
        return allowed
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    return allowed & (padding[:, None, None, :] | eye)


# ---- running a pattern ----------------------------------------------------------------------

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


def pattern_attention(query, key, value, pattern, padding, scaling):
    """Causal attention restricted to `pattern`; query, key, value (B, H, T, D) -> (B, H, T, D)."""
    T = query.shape[-2]
    if query.device.type == "cuda":
        if padding is None:
            mask = block_mask(pattern, T, str(query.device))
        else:
            mask = padded_block_mask(pattern, padding)
        return compiled_flex()(query, key, value, block_mask=mask, scale=scaling)
    allowed = allowed_with_padding(dense_mask(pattern, T, str(query.device)), padding)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)


def pattern_kernel(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return "flex_attention (torch.compile, triton, block mask)"
    return CPU_FLEX_KERNEL


def flex_based() -> dict:
    """The AttentionSpec fields every FlexAttention-pattern mechanism shares: the kernel it
    records, when it cannot run, and that it compiles its own kernel (precompile warms it)."""
    return dict(kernel=lambda device, params, dtype=None, shape=None: pattern_kernel(device),
                unavailable_reason=flex_unavailable, compiles=True)


def pattern_self_check(name, forward, params, reference_mask, pattern, show_T):
    """`python -m attentions.<name>`: a pattern mechanism against the naive masked softmax with
    its reference_mask(T, device), then its pattern drawn for show_T positions."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, padding = self_check_inputs(device=device)
    out, _ = forward(StubAttention(params), q, k, v, padding, scaling=0.25)
    ref = naive_attention(q, k, v, allowed_with_padding(reference_mask(q.shape[-2], device), padding), 0.25)
    print(f"{name}{' ' + str(params) if params else ''} ({pattern_kernel(device)}): max |out - reference| = "
          f"{(out.float() - ref.transpose(1, 2)).abs().max().item():.2e}")
    print(ascii_mask(dense_mask(pattern, show_T, device)))


def flex_unavailable(device) -> str | None:
    device = torch.device(device)
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        if not has_triton():
            return "flex_attention on CUDA needs triton (pip install triton)"
    return None


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
