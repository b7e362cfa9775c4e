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
    kernel=lambda device, params: "eager",
    paper="Radford et al. 2019",
))
