"""Chunked PyTorch attention for the FlexAttention family's patterns: plain matmuls, no compiler.

For GPUs where flex_attention cannot run (compute capability < 8.0: its Triton kernel needs
Ampere, and the uncompiled fallback fails in backward under fp16) and for the CPU. Queries are
processed in blocks; each block gathers only the keys its pattern can reach, so a pattern's cost
stays its own (O(T x keys per query)), not a dense T x T mask:

  band (sliding window W, and causal as the window W = T): query block i of b rows reads the
      contiguous keys [i*b - P, i*b + b) with P = ceil((W - 1) / b) * b, an unfold view of the
      left-padded keys (no copy); scores (b, b + P) per block.
  fixed (Child et al. 2019): query group g (its l rows) reads its own group (l keys, causal)
      and the S = (n_groups - 1) * c summary columns gathered once; scores (l, l + S) per group.

Scores are computed from q * scaling in the input dtype, then the masked softmax runs in fp32 and
its probabilities are cast back for the product with V. A query always keeps itself, so no row
is empty; masked entries are exact zeros, so outputs never depend on later positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attentions.masks import built_once, summary_positions


def band_block(window: int) -> int:
    """Query block of the band path: about the window, between 16 and 128 rows."""
    return max(16, min(128, window))


def _probs(scores, allowed):
    """fp32 softmax over the last axis of scores, where allowed."""
    return torch.softmax(scores.float().masked_fill(~allowed, float("-inf")), dim=-1)


@built_once
def band_layout(T: int, window: int, device: str):
    """(b, P, allowed (nb, b, b + P)) of the band path for length T, built once."""
    b = band_block(window)
    P = -(-(window - 1) // b) * b
    nb = -(-T // b)
    q_pos = torch.arange(nb * b, device=device).view(nb, b, 1)
    k_pos = (torch.arange(nb, device=device) * b - P).view(nb, 1, 1) + torch.arange(b + P, device=device)
    diff = q_pos - k_pos  # (nb, b, b + P)
    return b, P, (k_pos >= 0) & (diff >= 0) & (diff < window)


def _blocks(x, b, P, nb):
    """(B, H, T, D) -> (B, H, nb, b + P, D): block i holds positions [i*b - P, i*b + b), zeros
    outside [0, T). A strided view of the padded tensor."""
    T = x.shape[-2]
    x = F.pad(x, (0, 0, P, nb * b - T))
    return x.unfold(-2, b + P, b).transpose(-1, -2)


def band_attention(query, key, value, window, padding, scaling):
    """Causal sliding-window attention; (B, H, T, D) each -> (B, H, T, D)."""
    B, H, T, D = query.shape
    window = min(window, T)
    b, P, allowed = band_layout(T, window, str(query.device))
    nb = allowed.shape[0]
    q = F.pad(query * scaling, (0, 0, 0, nb * b - T)).view(B, H, nb, b, D)
    k, v = _blocks(key, b, P, nb), _blocks(value, b, P, nb)
    mask = allowed
    if padding is not None:
        real = F.pad(padding, (P, nb * b - T)).unfold(-1, b + P, b)        # (B, nb, b + P)
        own = torch.arange(b, device=query.device)[:, None] + P == torch.arange(b + P, device=query.device)
        mask = allowed & (real[:, None, :, None, :] | own)                 # a query keeps itself
    probs = _probs(q @ k.transpose(-1, -2), mask)                          # (B, H, nb, b, b + P)
    out = probs.to(v.dtype) @ v                                            # (B, H, nb, b, D)
    return out.reshape(B, H, nb * b, D)[:, :, :T]


@built_once
def fixed_layout(T: int, group: int, summary: int, device: str):
    """(summary positions (S,), allowed (ng, l, l + S)) of the fixed path, built once."""
    ng = -(-T // group)
    r = torch.arange(group, device=device)
    own = (r[:, None] >= r[None, :]).expand(ng, group, group)
    sum_pos = summary_positions(T, group, summary, device)
    later = (torch.arange(sum_pos.numel(), device=device) // summary)[None, None, :] \
        < torch.arange(ng, device=device)[:, None, None]                    # (ng, 1, S)
    return sum_pos, torch.cat([own, later.expand(ng, group, -1)], -1)


def fixed_attention(query, key, value, group, summary, padding, scaling):
    """Child et al.'s fixed pattern; (B, H, T, D) each -> (B, H, T, D)."""
    B, H, T, D = query.shape
    sum_pos, allowed = fixed_layout(T, group, summary, str(query.device))
    ng, pad = allowed.shape[0], allowed.shape[0] * group - T
    q, k, v = (F.pad(x, (0, 0, 0, pad)).view(B, H, ng, group, D) for x in (query * scaling, key, value))
    ks, vs = key[:, :, sum_pos], value[:, :, sum_pos]                       # (B, H, S, D)
    scores = torch.cat([q @ k.transpose(-1, -2), q @ ks.transpose(-1, -2)[:, :, None]], -1)
    mask = allowed
    if padding is not None:
        real = torch.cat([F.pad(padding, (0, pad)).view(B, ng, 1, group).expand(-1, -1, group, -1),
                          padding[:, None, None, sum_pos].expand(-1, ng, group, -1)], -1)
        eye = torch.eye(group, group + sum_pos.numel(), dtype=torch.bool, device=query.device)
        mask = allowed & (real | eye)[:, None]
    probs = _probs(scores, mask)                                           # (B, H, ng, l, l + S)
    out = probs[..., :group].to(v.dtype) @ v + probs[..., group:].to(vs.dtype) @ vs[:, :, None]
    return out.reshape(B, H, ng * group, D)[:, :, :T]

