"""One registry of attention mechanisms, each registered by name with transformers.

An entry says what the mechanism is (exact or approximate, its parameters, its attention FLOP
formula, when it cannot run) and how to install it into a GPT-2 model. Every mechanism follows
transformers' AttentionInterface contract (see transformers/models/gpt2/modeling_gpt2.py):

    forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs)
    # query (B, H, T, D); key, value (B, Hkv, T, D) -> (out (B, T, H, D), weights or None)

and is registered in AttentionMaskInterface too: a custom name without a mask function gets
attention_mask=None from transformers and would silently lose padding. Our custom mechanisms
receive the 2D padding mask (B, T) bool, True = real token, or None when nothing is padded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from attentions.order import ORDER
from harness.errors import UserError, unknown


def _no_reason(device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class AttentionSpec:
    name: str
    description: str
    exact: bool                    # equals softmax(QK^T/sqrt(d) + causal) V up to dtype error
    forward: Callable | None       # AttentionInterface function; None = transformers' own "eager"
    # Forward FLOPs of one layer's attention core (QK^T and PV, 2 FLOPs per multiply-add),
    # counting only the query/key pairs the mechanism computes: flops(B, H, T, D, params) -> float.
    flops: Callable[..., float]
    params: dict = field(default_factory=dict)
    # density(T, params) -> the fraction of causal query/key pairs computed at length T, from the
    # same pair count as `flops` (1.0 for the exact mechanisms). Reported as attention_density.
    density: Callable[[int, dict], float] = lambda T, params: 1.0
    # kernel(device, params, dtype=None, shape=None) -> the name of the kernel that runs, recorded
    # with every run; shape = (B, H, T, D) of the query. Called once per run, may probe the device.
    kernel: Callable[..., str] = lambda device, params, dtype=None, shape=None: "unknown"
    # unavailable_reason(device) -> None if it can run here, else why not.
    unavailable_reason: Callable[[torch.device], str | None] = _no_reason
    # prepare_model(model, params, init) changes the model before training (gqa: fewer K/V heads).
    prepare_model: Callable | None = None
    paper: str = ""
    # Compiles its own kernel even in an uncompiled model (flex_attention): the sweep's precompile
    # phase warms its cache too.
    compiles: bool = False

    @property
    def hf_name(self) -> str:
        """The name transformers knows it by."""
        return "eager" if self.forward is None else f"ab_{self.name}"


REGISTRY: dict[str, AttentionSpec] = {}



def padding_mask_2d(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                    attention_mask=None, **kwargs):
    """AttentionMaskInterface function for our mechanisms: the (B, T) bool padding mask or None.

    No `.all()` check here: it would sync the GPU and break torch.compile's graph at every forward.
    train.py passes no mask at all for batches without padding (decided on the host, once)."""
    if attention_mask is None:
        return None
    return attention_mask[:, -kv_length:].bool()


def register(spec: AttentionSpec) -> AttentionSpec:
    """Add to our registry and, for custom kernels, to transformers' attention and mask interfaces."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    REGISTRY[spec.name] = spec
    if spec.forward is not None:
        AttentionInterface.register(spec.hf_name, spec.forward)
        AttentionMaskInterface.register(spec.hf_name, padding_mask_2d)
    return spec


def names() -> list[str]:
    _load_all()
    return [n for n in ORDER if n in REGISTRY] + sorted(set(REGISTRY) - set(ORDER))


def get(name: str) -> AttentionSpec:
    _load_all()
    if name not in REGISTRY:
        raise unknown("attention", name, names())
    return REGISTRY[name]


def install(model, name: str, params: dict | None = None, init: str = "random") -> dict:
    """Switch `model` (a GPT2LMHeadModel) to attention `name`. Returns the effective parameters."""
    spec = get(name)
    unknown_keys = set(params or {}) - set(spec.params)
    if unknown_keys:  # a misspelt parameter would otherwise be ignored silently
        raise UserError(f"attention '{name}' has no parameter(s) {sorted(unknown_keys)}; "
                        f"its parameters: {sorted(spec.params) or 'none'}")
    merged = {**spec.params, **(params or {})}
    if spec.prepare_model is not None:
        spec.prepare_model(model, merged, init)
    # GPT-2's blocks share model.config; the attention reads _attn_implementation at each call.
    model.config._attn_implementation = spec.hf_name
    # Mechanisms read their parameters from the attention module: module.bench_params.
    for module in model.modules():
        if module.__class__.__name__ == "GPT2Attention":
            module.bench_params = dict(merged)  # a copy each: a mechanism may not change another layer's
    return merged


_LOADED = False


def _load_all():
    """Import every mechanism file once; each registers itself on import."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil
    from pathlib import Path

    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in ("registry", "order") and not info.name.startswith("_"):  # a helper
            # module (common.py) registers nothing on import; a new mechanism file registers itself
            importlib.import_module(f"attentions.{info.name}")
