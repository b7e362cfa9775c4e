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


def fvcore_forward_flops(model, input_ids) -> float:
    """Optional cross-check: fvcore's count for one forward, or NaN if fvcore is missing.

    fvcore counts one "flop" per multiply-add (so compare with forward / 2), forward only, and
    has no handler for scaled_dot_product_attention (it skips it with a warning), so with sdpa
    kernels it misses the attention core. Not used by default. Install: pip install fvcore
    """
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        print("fvcore not installed; `pip install fvcore` to enable this cross-check")
        return NAN
    import torch

    with torch.no_grad():
        analysis = FlopCountAnalysis(model, (input_ids,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return float(analysis.total())
