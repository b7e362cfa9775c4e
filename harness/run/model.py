"""GPT-2 models built from their known configs (no download), with an attention swapped in.

Sizes from Radford et al. 2019 / the Hugging Face configs: gpt2 12 x 768 x 12 heads, gpt2-medium
24 x 1024 x 16, gpt2-large 36 x 1280 x 20; vocab 50257, 1024 learned positions. "tiny" (2 x 64 x 4)
exists for tests and the smoke preset; "mqar" is the recall probe's (recall.model_config). All dropout is 0: FlexAttention, linear and LSH attention
have no attention dropout, so every mechanism trains the same function (modern LM pre-training
runs without dropout too).
"""
from __future__ import annotations

import torch

import attentions
from harness.errors import UserError
from harness.run import recall

SIZES = {  # name: (n_layer, n_embd, n_head)
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "tiny": (2, 64, 4),
    "mqar": (2, 128, 4),
}
VOCAB = 50257
PRETRAINED_POSITIONS = 1024


def vocab_of(name: str, recall_vocab: int) -> int:
    """The model's vocabulary: GPT-2's, or the recall probe's (recall_vocab)."""
    return recall_vocab if name == "mqar" else VOCAB


def gpt2_config(name: str, seq_len: int, n_layer: int | None = None):
    """The size's config; n_layer (if set) keeps its width with fewer or more blocks."""
    from transformers import GPT2Config
    if name not in SIZES:
        from harness.errors import unknown
        raise unknown("model", name, SIZES)
    layers, n_embd, n_head = SIZES[name]
    return GPT2Config(n_layer=n_layer or layers, n_embd=n_embd, n_head=n_head, vocab_size=VOCAB,
                      n_positions=max(PRETRAINED_POSITIONS, seq_len),  # random init: extend positions
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      attn_implementation="eager", use_cache=False)


def pick_dtype(name: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """(autocast dtype, needs a gradient scaler). auto: bf16 where the GPU has it, fp16 + scaler on
    pre-Ampere GPUs (the Colab T4), fp32 on CPU (CPU autocast is slower than fp32 on most CPUs)."""
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            raise UserError(f"dtype {name} is for GPUs; this run is on {device.type}: use dtype auto or fp32")
        return torch.float32, False
    if name == "auto":  # bf16 from Ampere (compute capability 8.0; attentions/device.py may emulate older)
        from attentions.device import capability
        name = "bf16" if capability(device) >= (8, 0) and torch.cuda.is_bf16_supported(including_emulation=False) \
            else "fp16"
    return {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, True),
            "fp32": (torch.float32, False)}[name]


def build(name: str, attention: str, seq_len: int, init: str = "random",
          params: dict | None = None, seed: int = 0, n_layer: int | None = None,
          recall_vocab: int = recall.VOCAB):
    """A GPT2LMHeadModel with `attention` installed. Returns (model, effective attention params).
    n_layer: a random-init model of the size's width with that many blocks (compiled_check.py)."""
    if n_layer and init == "pretrained":
        raise UserError("n_layer changes the model's depth: random init only, not a pretrained checkpoint")
    from transformers import GPT2LMHeadModel
    torch.manual_seed(seed)  # same init for every attention
    if init == "pretrained":
        model = GPT2LMHeadModel.from_pretrained(name, attn_implementation="eager", resid_pdrop=0.0,
                                                embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    elif name == "mqar":  # the recall probe's small model (harness/run/recall.py)
        model = GPT2LMHeadModel(recall.model_config(seq_len, recall_vocab, n_layer=n_layer or SIZES[name][0],
                                                    n_embd=SIZES[name][1], n_head=SIZES[name][2]))
    else:
        model = GPT2LMHeadModel(gpt2_config(name, seq_len, n_layer))
    merged = attentions.install(model, attention, params, init=init)
    return model, merged
