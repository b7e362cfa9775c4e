"""flex_sparse: Sparse Transformer's "fixed" attention pattern (Child et al. 2019, section 4.3).

Positions are cut into aligned groups of length l; a query i attends causally (j <= i) to
  A(1) its own group:            floor(j / l) == floor(i / l), and
  A(2) the summary columns:      j mod l >= l - c, the last c positions of every earlier group.
Approximate. group "auto" (the default) = sqrt(T) rounded to a multiple of 16 (at least 16), the
paper's l ~ sqrt(n); summary c = 4 (the paper uses c = 8 to 32 for l = 128 to 256), so the kept
fraction of causal pairs is about l / T + c / l ~ 5 / sqrt(T): 0.27 at T = 512, 0.04 at 16384.

flops() and density() count the allowed pairs. What each impl (patterns.py) computes:
  "chunked" (banded.fixed_attention): each group's l x l block, plus every query against all
      S = (ceil(T / l) - 1) * c summary columns, the earlier groups' kept: T x (l + S) scores,
      about twice the allowed pairs.
  "flex": flex_attention over the keys followed by their S gathered summary columns
      (masks.gathered_fixed), so the summaries sit in a few dense 128-key blocks instead of one
      column in every block. The kernel computes whole 128 x 128 blocks with any allowed pair:
      the block diagonal (one or two blocks per query block, as groups may straddle blocks) and
      the causal blocks of the summary part, about T x (256 + S / 2) scores.
"""
import math

import torch

from attentions.common import padding_of, params_of
from attentions.patterns import flex_based, pattern_attention, pattern_self_check
from attentions.registry import AttentionSpec, register
from harness.errors import UserError

PARAMS = {"group": "auto", "summary": 4, "impl": "auto"}


def group_at(T, group):
    """Group length l in use at length T."""
    return max(16, 16 * round(math.sqrt(T) / 16)) if group == "auto" else int(group)


def sizes(T, params):
    """(l, c) at length T; c never exceeds l."""
    l = group_at(T, params["group"])
    return l, min(int(params["summary"]), l)


def pattern(params, T):
    return ("fixed", *sizes(T, params))


def check(params):
    g, c = params["group"], params["summary"]
    for name, x in (("group", g), ("summary", c)):
        if not (x == "auto" and name == "group") and (isinstance(x, bool) or not isinstance(x, int) or x < 1):
            raise UserError(f"flex_sparse: {name}={x!r}; use an integer >= 1{' or auto' * (name == 'group')}")


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D)
    p = params_of(module, PARAMS)
    out = pattern_attention(query, key, value, pattern(p, query.shape[-2]), padding_of(attention_mask),
                            scaling, p["impl"])
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def pairs(T, params):
    """Allowed (q, k) pairs: per group of n rows, n (n + 1) / 2 inside it plus n x c per earlier group."""
    l, c = sizes(T, params)
    total = 0
    for g in range(-(-T // l)):
        n = min(l, T - g * l)
        total += n * (n + 1) // 2 + n * g * c
    return total


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * D * pairs(T, params)


def density(T, params):
    return pairs(T, params) / (T * (T + 1) / 2)


def reference_mask(T, group, summary, device="cpu"):
    """The pattern written out directly (not through mask_mods), for the tests."""
    l, c = sizes(T, {"group": group, "summary": summary})
    i = torch.arange(T, device=device)
    own = (i[:, None] // l) == (i[None, :] // l)
    column = (i % l >= l - c)[None, :]
    return torch.ones(T, T, dtype=torch.bool, device=device).tril() & (own | column)


SPEC = register(AttentionSpec(
    name="flex_sparse",
    description="Sparse Transformer fixed pattern (own group + summary columns), FlexAttention or chunked",
    exact=False,
    forward=forward,
    flops=flops,
    density=density,
    params=PARAMS,
    **flex_based("fixed", check),
    paper="Child et al. 2019, Generating Long Sequences with Sparse Transformers",
))


if __name__ == "__main__":
    params = {"group": 4, "summary": 1}
    pattern_self_check("flex_sparse", forward, params, lambda T, device: reference_mask(T, 4, 1, device),
                       pattern(params, 32), 32)
