"""Analytic FLOP counts for a GPT-2 training step and the PaLM MFU numerator.

Convention (the `flops` column): 2 FLOPs per multiply-add; only matrix products are counted
(QKV/output projections, MLP, attention core QK^T and PV, LM head); layer norms, GELU, softmax,
the loss, the embedding lookup and the optimizer are left out (each is O(B*T*E), under 1% here).
This is what torch.utils.flop_counter.FlopCounterMode counts too (mm/addmm/bmm/sdpa only).

  forward per layer = 2*T*E*(E + 2*kv_dim)      QKV projection (kv_dim = E, or Hkv*D for gqa)
                    + 2*T*E*E                   output projection
                    + 2*T*E*I*2                 MLP, I = n_inner or 4E
                    + attention core / B        from AttentionSpec.flops (already x B x H)
  forward = B * (L * per layer + 2*T*E*V)       + the LM head (tied wte), V = vocab
  training step = 3 * forward                   backward = 2 x forward (nanoGPT, Kaplan 2020)

Backward is exactly 2x: every matmul y = x W needs dL/dx and dL/dW, one product each, and
GPT-2's first block needs dL/dx too because wte is trained. The attention core counts what the
mechanism computes: causal kernels (sdpa, flash, flex) only the lower triangle, baseline/eager
the full T x T (it computes the masked half and then throws it away). FlopCounterMode's sdpa
formula counts the full T x T even when is_causal, so it over-counts causal SDPA by ~2x in the
attention term; compare with it on baseline (eager), where both count the same products.

MFU (the `mfu` column) uses the PaLM estimate instead, so that numbers compare with the
literature: flops/token = 6N + 12*L*H*Q*T (Chowdhery et al. 2022, appendix B; nanoGPT's
estimate_mfu), N = parameters without position embeddings, tied wte included.
"""
from __future__ import annotations

NAN = float("nan")


def train_step_flops(config, batch_size: int, seq_len: int, attn_flops_per_layer: float,
                     kv_heads: int | None = None) -> dict:
    """FLOPs of one forward+backward of GPT2LMHeadModel on (batch_size, seq_len) tokens.

    config: a GPT2Config (n_embd, n_layer, n_head, n_inner, vocab_size).
    attn_flops_per_layer: AttentionSpec.flops(B, H, T, D, params) for this batch shape, i.e.
    one layer's attention-core forward FLOPs for the whole batch and all heads.
    kv_heads: number of K/V heads for gqa (None = n_head). Returns FLOPs as floats:
    {"total": fwd+bwd, "forward", "matmul_forward" (projections, MLP, LM head), "attention_forward"}.
    """
    B, T = int(batch_size), int(seq_len)
    E, L, V = config.n_embd, config.n_layer, config.vocab_size
    inner = config.n_inner or 4 * E
    head_dim = E // config.n_head
    kv_dim = E if kv_heads is None else kv_heads * head_dim
    per_layer = (2 * T * E * (E + 2 * kv_dim)    # c_attn: x (T, E) -> q (T, E), k, v (T, kv_dim)
                 + 2 * T * E * E                 # attn c_proj
                 + 2 * T * E * inner * 2)        # mlp c_fc and c_proj
    matmul_forward = float(B * (L * per_layer + 2 * T * E * V))  # + lm_head
    attention_forward = float(L * attn_flops_per_layer)
    forward = matmul_forward + attention_forward
    return {"total": 3.0 * forward, "forward": forward, "matmul_forward": matmul_forward,
            "attention_forward": attention_forward}


def palm_flops_per_token(n_params_non_embedding: int, n_layer: int, n_head: int, head_dim: int,
                         seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B: 6N + 12*L*H*Q*T (full, non-causal attention).

    mfu = palm_flops_per_token * tokens_per_s / peak_flops_per_s.
    """
    return float(6 * n_params_non_embedding + 12 * n_layer * n_head * head_dim * seq_len)


def palm_n_params(model) -> int:
    """N for the PaLM formula: unique parameters minus the position embeddings (as nanoGPT's
    get_num_params(non_embedding=True)); wte stays in because the LM head reuses it."""
    n = sum(p.numel() for p in model.parameters())  # parameters() lists the tied wte once
    wpe = getattr(getattr(model, "transformer", model), "wpe", None)
    return int(n - (wpe.weight.numel() if wpe is not None else 0))


def fvcore_forward_flops(model, input_ids) -> tuple[float, str]:
    """fvcore's count of one no-grad forward, in our convention: (FLOPs, "") or (NaN, why not).

    fvcore counts one "flop" per multiply-add, so its total is doubled here. It traces the model
    with torch.jit and counts the ops it has handlers for (matmul, addmm, bmm, linear, einsum,
    norms); it has none for scaled_dot_product_attention, flex_attention or custom kernels, which
    it skips: with sdpa, flash, flex, gqa it misses the attention core, and a mechanism that
    cannot be traced gives NaN. On baseline (eager matmuls) it must agree with the analytic count.
    """
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return NAN, "fvcore is not installed (pip install fvcore)"
    import torch

    class Logits(torch.nn.Module):  # fvcore traces a module that returns tensors, not a ModelOutput
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            return self.inner(input_ids=ids).logits

    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(Logits(model), (input_ids,))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            return 2.0 * float(analysis.total()), ""
    except Exception as e:  # a mechanism torch.jit cannot trace: say so, never a number
        return NAN, f"fvcore could not trace this model: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
