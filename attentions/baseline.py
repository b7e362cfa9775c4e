"""baseline: GPT-2's own eager attention from transformers, unchanged (matmul + softmax).

Materialises the full (B, H, T, T) score matrix, so time and memory grow as T^2; its FLOPs count
the full matrix (eager computes the masked half too).
"""
from attentions.registry import AttentionSpec, register


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * T * T * D  # QK^T and PV over the full T x T matrix


SPEC = register(AttentionSpec(
    name="baseline",
    description="GPT-2's own eager attention (transformers 'eager'): matmul, additive mask, softmax, matmul",
    exact=True,
    forward=None,
    flops=flops,
    kernel=lambda device, params, dtype=None, shape=None: "eager",
    paper="Radford et al. 2019",
))


if __name__ == "__main__":
    import torch
    from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward

    from attentions.common import StubAttention, naive_attention, self_check_inputs
    q, k, v, _ = self_check_inputs()
    T = q.shape[-2]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    additive = torch.zeros(T, T).masked_fill(~causal, torch.finfo(torch.float32).min)[None, None]
    out, _ = eager_attention_forward(StubAttention().eval(), q, k, v, additive, scaling=0.25)
    err = (out - naive_attention(q, k, v, causal, 0.25).transpose(1, 2)).abs().max().item()
    print(f"baseline (transformers eager): max |out - reference| = {err:.2e}; pattern: dense causal")
