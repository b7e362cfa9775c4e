"""gqa: grouped-query attention (Ainslie et al. 2023), kv_heads K/V heads shared by groups of queries.

Query head h reads K/V head h // (H / kv_heads) (SDPA enable_gqa). The attention itself is
exact softmax attention over fewer, shared K/V heads; what changes is the model: c_attn projects
to E + 2 * kv_heads * D instead of 3E, so projection FLOPs, parameters and the K/V activations
shrink (the harness counts those from the model). Attention-core FLOPs equal dense causal.

prepare_model swaps each GPT2Attention's c_attn (transformers Conv1D, weight (in, out)) for a
smaller one and sets split_size = [E, kv*D, kv*D]; GPT2Attention.forward splits c_attn's output
with split_size and views K/V with -1 heads, so they come out with kv_heads heads.
New K/V weights and biases are the mean of the group's heads (Ainslie et al.'s checkpoint
conversion) for init="pretrained"; for init="random" the mean is multiplied by sqrt(group) so
the K/V weights keep GPT-2's init std (a mean of g independent draws has std / sqrt(g)).

Padding: SDPA runs enable_gqa only in its flash backend; with a mask it falls back to math
(O(T^2) memory). Batches are right-padded and attention is causal, so a real token never sees
a pad: plain causal attention is exact for real tokens and keeps the flash kernel for every
batch. (Pads attend to earlier pads; their outputs are finite and ignored by the loss.)
"""
import math

import torch

import torch.nn.functional as F

from attentions.common import causal_pairs, padding_of, params_of, sdpa_kernel_name
from attentions.registry import AttentionSpec, register

PARAMS = {"kv_heads": 4}  # divides GPT-2's 12, 16 and 20 heads


def _attention_modules(model):
    return [m for m in model.modules() if m.__class__.__name__ == "GPT2Attention"]


def _split_kv(module):
    """c_attn's weight (E, 3E) and bias (3E) split into Q, K, V parts."""
    E = module.embed_dim
    return module.c_attn.weight.split(E, dim=1), module.c_attn.bias.split(E, dim=0)


def group_mean(w, kv_heads, D):
    """(..., H*D) -> (..., kv*D): heads of each group averaged; groups are consecutive heads."""
    H = w.shape[-1] // D
    return w.reshape(*w.shape[:-1], kv_heads, H // kv_heads, D).mean(-2).reshape(*w.shape[:-1], kv_heads * D)


def _check(module, kv_heads):
    from harness.errors import UserError
    if isinstance(module.split_size, (list, tuple)):
        raise UserError("gqa: this model already has grouped K/V heads (install gqa once)")
    if kv_heads < 1 or module.num_heads % kv_heads:
        raise UserError(f"gqa: kv_heads={kv_heads} must divide the model's {module.num_heads} heads")


@torch.no_grad()
def prepare_model(model, params, init):
    """Replace every c_attn by a Conv1D with kv_heads K/V heads (see the module docstring)."""
    from transformers.pytorch_utils import Conv1D
    kv = int(params["kv_heads"])
    for module in _attention_modules(model):
        _check(module, kv)
        E, D = module.embed_dim, module.head_dim
        gain = 1.0 if init == "pretrained" else math.sqrt(module.num_heads // kv)
        (wq, wk, wv), (bq, bk, bv) = _split_kv(module)
        new = Conv1D(E + 2 * kv * D, E).to(device=wq.device, dtype=wq.dtype)
        new.weight.copy_(torch.cat([wq, gain * group_mean(wk, kv, D), gain * group_mean(wv, kv, D)], dim=1))
        new.bias.copy_(torch.cat([bq, gain * group_mean(bk, kv, D), gain * group_mean(bv, kv, D)]))
        module.c_attn = new
        module.split_size = [E, kv * D, kv * D]
        module.num_key_value_heads = kv


@torch.no_grad()
def tie_kv_heads(model, kv_heads):
    """Make K/V heads identical within each group (each set to the group mean), in place.

    For the exactness test: on such a model the mean-pool of prepare_model loses nothing, so
    gqa(prepare_model(model, init="pretrained")) must equal the unchanged model's logits.
    """
    for module in _attention_modules(model):
        E, D, H = module.embed_dim, module.head_dim, module.num_heads
        for part in (1, 2):  # K then V: columns [part*E, (part+1)*E)
            cols = slice(part * E, (part + 1) * E)
            for t in (module.c_attn.weight[:, cols], module.c_attn.bias[cols]):
                pooled = group_mean(t, kv_heads, D).reshape(*t.shape[:-1], kv_heads, 1, D)
                t.copy_(pooled.expand(*t.shape[:-1], kv_heads, H // kv_heads, D).reshape(t.shape))


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query (B, H, T, D); key, value (B, kv_heads, T, D)
    kv = int(params_of(module, PARAMS)["kv_heads"])
    if key.shape[1] != kv:
        raise RuntimeError(f"gqa: got {key.shape[1]} K/V heads, expected kv_heads={kv}; "
                           "registry.install runs prepare_model, which makes the model grouped")
    padding_of(attention_mask)  # ignored on purpose, see the module docstring
    out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                         dropout_p=dropout, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * D * causal_pairs(T)  # every query head still attends; K/V are shared


def kernel(device, params, dtype=None, shape=None):
    name = sdpa_kernel_name(device, dtype, shape, kv_heads=int(params["kv_heads"]), padded=False)
    return f"{name} enable_gqa"


SPEC = register(AttentionSpec(
    name="gqa",
    description="grouped-query attention: kv_heads shared K/V heads (mean-pooled), SDPA enable_gqa",
    exact=True,
    forward=forward,
    flops=flops,
    params=PARAMS,
    kernel=kernel,
    prepare_model=prepare_model,
    paper="Ainslie et al. 2023, GQA",
))


if __name__ == "__main__":
    from attentions.common import StubAttention, naive_attention, self_check_inputs
    q, k, v, padding = self_check_inputs(H=4)
    k, v = k[:, :2], v[:, :2]  # 2 K/V heads for 4 query heads
    out, _ = forward(StubAttention({"kv_heads": 2}), q, k, v, padding, scaling=0.25)
    T = q.shape[-2]
    rep = lambda x: x.repeat_interleave(2, dim=1)  # noqa: E731  query head h reads K/V head h // 2
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    ref = naive_attention(q, rep(k), rep(v), allowed, 0.25)
    real = padding[:, :, None, None]  # pads are not masked (see the docstring): compare real tokens
    err = ((out - ref.transpose(1, 2)) * real).abs().max().item()
    print(f"gqa kv_heads=2 of 4 ({kernel('cpu', {'kv_heads': 2}, shape=q.shape)}): "
          f"max |out - repeated-K/V reference| on real tokens = {err:.2e}")
    print("pattern: dense causal; query heads 0,1 -> K/V head 0; heads 2,3 -> K/V head 1")
