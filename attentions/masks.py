"""Mask patterns of the FlexAttention family as mask_mods, and caches of the masks built from them.

Mask functions follow FlexAttention's mask_mod signature, one small function per idea,
composed with and_masks / or_masks as attention-gym does (attn_gym/masks/):

    mask_mod(b, h, q_idx, kv_idx) -> bool   # True = query q_idx may attend to key kv_idx

A pattern is a hashable tuple resolved for one length T: ("causal",), ("sliding_window", W) or
("fixed", l, c) (Child et al. 2019's fixed pattern, group length l, c summary columns), so
dense masks and BlockMasks are cached per (pattern, T, device) instead of being rebuilt at every
layer and step.
"""
from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import and_masks, create_mask, or_masks


# ---- mask functions: one idea each ----------------------------------------------------------

def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def sliding_window(window):
    """Keys at most window - 1 positions back: each query sees `window` keys (itself included)."""
    def in_window(b, h, q_idx, kv_idx):
        return q_idx - kv_idx < window
    return in_window


def same_group(group):
    """A(1) of the fixed pattern: keys in the query's own aligned group of `group` positions."""
    def own(b, h, q_idx, kv_idx):
        return q_idx // group == kv_idx // group
    return own


def summary_columns(group, summary):
    """A(2) of the fixed pattern: the last `summary` positions of every group, read by all later
    queries (j mod l >= l - c)."""
    def column(b, h, q_idx, kv_idx):
        return kv_idx % group >= group - summary
    return column


def real_keys(padding):
    """padding (B, T) bool, True = real. A query always keeps itself, so no row is empty (NaN)."""
    def keep(b, h, q_idx, kv_idx):
        return padding[b, kv_idx] | (q_idx == kv_idx)
    return keep


def mask_mod_for(pattern: tuple):
    """The causal (T, T) mask_mod of a pattern tuple."""
    kind, *args = pattern
    if kind == "causal":
        return causal
    if kind == "sliding_window":
        return and_masks(causal, sliding_window(*args))
    if kind == "fixed":
        return and_masks(causal, or_masks(same_group(args[0]), summary_columns(*args)))
    raise ValueError(f"unknown mask pattern {pattern!r}")


# ---- the fixed pattern over gathered keys ---------------------------------------------------

def summary_positions(T: int, group: int, summary: int, device="cpu") -> torch.Tensor:
    """Positions of the summary columns some later group reads: the last `summary` of every group
    but the last, in order; (S,) long with S = (ceil(T / group) - 1) * summary."""
    n_groups = -(-T // group)
    start = torch.arange(n_groups - 1, device=device)[:, None] * group + group - summary
    return (start + torch.arange(summary, device=device)).flatten()


def gathered_fixed(T: int, group: int, summary: int):
    """mask_mod over T queries and T + S keys: keys [0, T) are the sequence (own group, causal),
    key T + s is summary column s, read by queries of a later group than its own (s // c)."""
    def mod(b, h, q_idx, kv_idx):
        own = (kv_idx < T) & (q_idx // group == kv_idx // group) & (q_idx >= kv_idx)
        return own | ((kv_idx >= T) & ((kv_idx - T) // summary < q_idx // group))
    return mod


def gathered_padding(padding: torch.Tensor, group: int, summary: int) -> torch.Tensor:
    """(B, T) -> (B, T + S): the padding of the sequence, then of its summary columns."""
    T = padding.shape[-1]
    return torch.cat([padding, padding[:, summary_positions(T, group, summary, padding.device)]], -1)


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


def flex_mask_mod(pattern: tuple, T: int):
    """(mask_mod, number of keys) flex_attention runs over: the fixed pattern over gathered keys."""
    if pattern[0] == "fixed":
        _, group, summary = pattern
        return gathered_fixed(T, group, summary), T + summary_positions(T, group, summary).numel()
    return mask_mod_for(pattern), T


@built_once
def block_mask(pattern: tuple, T: int, device: str):
    """FlexAttention BlockMask of the pattern, broadcast over batch and heads, built once."""
    from torch.nn.attention.flex_attention import create_block_mask
    mod, n_keys = flex_mask_mod(pattern, T)
    return create_block_mask(mod, None, None, T, n_keys, device=device)


def padded_block_mask(pattern: tuple, padding: torch.Tensor):
    """Per-batch BlockMask with padded keys removed; rebuilt per call (padding changes per batch)."""
    from torch.nn.attention.flex_attention import create_block_mask
    B, T = padding.shape
    mod, n_keys = flex_mask_mod(pattern, T)
    if pattern[0] == "fixed":
        padding = gathered_padding(padding, *pattern[1:])
    return create_block_mask(and_masks(mod, real_keys(padding)), B, None, T, n_keys, device=padding.device)


def allowed_with_padding(allowed: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
    """allowed (T, T) bool -> (1 or B, 1, T, T): padded keys removed, the diagonal always kept."""
    allowed = allowed[None, None]
    if padding is None:
        return allowed
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    return allowed & (padding[:, None, None, :] | eye)
