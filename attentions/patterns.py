"""Running a mask pattern of the FlexAttention family (flex, flex_sparse, sliding_window).

Three implementations of one pattern, chosen by the mechanism's `impl` parameter:

  "flex"      compiled flex_attention with a cached BlockMask (CUDA, compute capability >= 8.0):
              the Triton kernel skips 128 x 128 blocks with no allowed pair and masks inside the
              others.
  "chunked"   banded.py: query blocks gather only the keys their pattern reaches, plain matmuls
              and an fp32 softmax; any device, fp16 / bf16 / fp32, forward and backward.
  "sdpa-mask" the (T, T) mask materialised and run through SDPA, at dense cost.

impl="auto" is flex where it trains, chunked on CUDA below compute capability 8.0 (the pre-Ampere
path) and on CPU for the sparse patterns (it computes only their pairs), and sdpa-mask on CPU
for the dense causal pattern (SDPA's fused CPU kernel is faster there than fp32 matmuls).
impl="flex" where flex cannot train is a UserError naming the reason.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attentions import banded
from attentions.flex_kernel import compiled_flex, flex_cannot_train
from attentions.masks import (allowed_with_padding, block_mask, built_once, dense_mask,
                              padded_block_mask, summary_positions)
from harness.errors import UserError

IMPLS = ("auto", "flex", "chunked")
FLEX_KERNEL = "flex_attention (torch.compile, triton, block mask)"
CPU_FLEX_KERNEL = "sdpa-mask (flex unavailable on cpu)"


def resolve_impl(device, impl: str, kind: str) -> str:
    """The implementation that runs: "flex", "chunked" or "sdpa-mask" (see the module docstring)."""
    device = torch.device(device)
    if impl == "chunked":
        return "chunked"
    reason = flex_cannot_train(device)
    if impl == "flex":
        if reason:
            raise UserError(f"impl='flex' cannot run on {device}: {reason}; use impl='auto' or 'chunked'")
        return "flex"
    if impl != "auto":
        raise UserError(f"impl={impl!r}; choose one of {', '.join(IMPLS)}")
    if reason is None:
        return "flex"
    return "sdpa-mask" if device.type == "cpu" and kind == "causal" else "chunked"


resolved_impl = built_once(resolve_impl)  # per (device, impl, kind): a constant inside torch.compile


def kernel_name(device, impl: str, kind: str) -> str:
    """The name of the kernel that really runs for this pattern kind on this device."""
    device = torch.device(device)
    how = resolve_impl(device, impl, kind)
    if how == "flex":
        return FLEX_KERNEL
    if how == "sdpa-mask":
        return CPU_FLEX_KERNEL
    if device.type == "cuda" and flex_cannot_train(device):
        return "chunked pytorch (pre-Ampere path)"
    return f"chunked pytorch ({'impl=chunked' if device.type == 'cuda' else device.type})"


def flex_pattern(query, key, value, pattern, padding, scaling):
    """compiled flex_attention; the fixed pattern runs over the keys plus its gathered summaries."""
    T = query.shape[-2]
    if pattern[0] == "fixed":
        where = summary_positions(T, pattern[1], pattern[2], query.device)
        key, value = (torch.cat([x, x[:, :, where]], -2) for x in (key, value))
    mask = block_mask(pattern, T, str(query.device)) if padding is None else padded_block_mask(pattern, padding)
    return compiled_flex()(query, key, value, block_mask=mask, scale=scaling)


def chunked_pattern(query, key, value, pattern, padding, scaling):
    kind, *args = pattern
    if kind == "fixed":
        return banded.fixed_attention(query, key, value, *args, padding, scaling)
    window = args[0] if kind == "sliding_window" else query.shape[-2]
    return banded.band_attention(query, key, value, window, padding, scaling)


def pattern_attention(query, key, value, pattern, padding, scaling, impl="auto"):
    """Causal attention restricted to `pattern`; query, key, value (B, H, T, D) -> (B, H, T, D)."""
    how = resolved_impl(str(query.device), impl, pattern[0])
    if how == "flex":
        return flex_pattern(query, key, value, pattern, padding, scaling)
    if how == "chunked":
        return chunked_pattern(query, key, value, pattern, padding, scaling)
    allowed = allowed_with_padding(dense_mask(pattern, query.shape[-2], str(query.device)), padding)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)


def flex_based(kind: str, check=None) -> dict:
    """The AttentionSpec fields the family shares: the kernel it records, the impl check at install
    (plus `check(params)`, the mechanism's own), and that it compiles its own kernel."""
    def prepare_model(model, params, init):
        if params.get("impl") not in IMPLS:
            raise UserError(f"impl={params.get('impl')!r}; choose one of {', '.join(IMPLS)}")
        if check is not None:
            check(params)
    return dict(kernel=lambda device, params, dtype=None, shape=None: kernel_name(device, params.get("impl", "auto"), kind),
                prepare_model=prepare_model, compiles=True)


def pattern_self_check(name, forward, params, reference_mask, pattern, show_T):
    """`python -m attentions.<name>`: a pattern mechanism against the naive masked softmax with
    its reference_mask(T, device), then its pattern drawn for show_T positions."""
    from attentions.common import StubAttention, ascii_mask, naive_attention, self_check_inputs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, padding = self_check_inputs(device=device)
    for impl in ("auto", "chunked"):
        out, _ = forward(StubAttention({**params, "impl": impl}), q, k, v, padding, scaling=0.25)
        ref = naive_attention(q, k, v, allowed_with_padding(reference_mask(q.shape[-2], device), padding), 0.25)
        print(f"{name} {params} ({kernel_name(device, impl, pattern[0])}): max |out - reference| = "
              f"{(out.float() - ref.transpose(1, 2)).abs().max().item():.2e}")
    print(ascii_mask(dense_mask(pattern, show_T, device)))
