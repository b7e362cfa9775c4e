"""An estimate of a training run's peak memory, made before it runs, and recorded beside the
measured peak (summary.csv: memory_estimate_gb next to gpu_memory_mb / memory_gb) so the
estimate itself can be checked.

  weights + optimizer   16 bytes a parameter: fp32 weights, fp32 gradients, AdamW's two moments
  activations           per layer ACT_BYTES * B*T*E bytes under 16-bit autocast, twice that in fp32.
                        Korthikanti et al. 2022 ("Reducing Activation Recomputation", 4.1) count
                        34 for a pure 16-bit layer without the scores; under autocast GPT-2 keeps
                        its residual stream, layer norms and tanh-GELU intermediates in fp32, and
                        the H200 measured 94 (gpt2, T = 512, batch 128, bf16, sdpa: 92.4 GB)
  attention scores      the mechanisms that keep a score per pair for the backward, bytes a stored
                        pair a head a layer (PAIR_BYTES, from the same H200 run: baseline's T x T
                        scores and probabilities, linear's fp32 intra-chunk tiles and features,
                        lsh's chunk tiles)
  logits                B*T*V * (dtype + 4 + 4): the LM head's output, its fp32 copy for the
                        loss, and its gradient
  runtime               0.5 GB: CUDA context, cuBLAS workspace, allocator slack

An estimate, not a bound: fragmentation and kernel workspaces add to it, so a run is refused
only far past the memory the device has (memory_plan.REFUSE), and warned about past it. floor_bytes
is a bound: what the step must hold at once whatever the allocator does, so a run whose floor is
over the device's memory is refused however close to it.
"""
from __future__ import annotations

RUNTIME_BYTES = 0.5e9
PROCESS_BYTES = 1.0e9   # a process between steps, beside its weights: CUDA context, loaded kernels
ACT_BYTES = 94          # bytes a token a layer per unit of E, 16-bit autocast (see above)
HEADROOM = 0.8          # batch auto fills at most this fraction of the device's memory
AUTO_TOKENS = 65536     # batch auto stops at this many tokens a step: enough to keep a GPU busy

# Score pairs a (batch row, head, layer) keeps for the backward, by mechanism: (T, params) -> pairs,
# and the bytes each costs (fitted to the H200 run above: baseline +29 GB, linear +25 GB, lsh +41 GB
# over sdpa at the same batch).
STORED_PAIRS = {
    "baseline": lambda T, p: T * T,                                            # eager: the full matrix
    "lsh": lambda T, p: 2 * int(p.get("n_hashes", 2)) * T * 2 * int(p.get("bucket_size", 64)),  # chunk tiles
    "linear": lambda T, p: T * int(p.get("chunk_size", 64)),                  # intra-chunk tiles
}
PAIR_BYTES = {"baseline": 6, "lsh": 8, "linear": 41}


def gpt2_params(n_layer: int, n_embd: int, vocab: int, positions: int) -> int:
    """GPT-2's parameter count: per block 12 E^2 + 13 E, the tied token embedding, positions, ln_f."""
    return n_layer * (12 * n_embd * n_embd + 13 * n_embd) + vocab * n_embd + positions * n_embd + 2 * n_embd


def estimate_bytes(n_layer: int, n_embd: int, n_head: int, vocab: int, positions: int, B: int, T: int,
                   attention: str, params: dict | None = None, dtype_bytes: int = 2) -> float:
    """Peak bytes of one training step of GPT-2 with this attention at batch B, length T."""
    n = gpt2_params(n_layer, n_embd, vocab, positions)
    act = n_layer * ACT_BYTES * B * T * n_embd * (dtype_bytes / 2)
    pairs = STORED_PAIRS.get(attention, lambda T, p: 0)(T, params or {})
    scores = n_layer * B * n_head * pairs * PAIR_BYTES.get(attention, 0) * (dtype_bytes / 2)
    logits = B * T * vocab * (dtype_bytes + 8)
    return 16 * n + act + scores + logits + RUNTIME_BYTES


def floor_bytes(n_layer: int, n_embd: int, n_head: int, vocab: int, positions: int, B: int, T: int,
                attention: str, dtype_bytes: int = 2) -> float:
    """Bytes one training step must hold at once, at least: weights, gradients and AdamW's moments
    (16 a parameter), plus, for eager attention (baseline), the probabilities autograd keeps for the
    backward of every layer: softmax's fp32 output (autocast runs softmax in fp32) and, under 16-bit
    autocast, its copy in the value's dtype that the second matmul keeps. Nothing else counted."""
    n = gpt2_params(n_layer, n_embd, vocab, positions)
    if attention != "baseline":
        return 16 * n
    per_pair = 4 + (dtype_bytes if dtype_bytes < 4 else 0)
    return 16 * n + n_layer * B * n_head * STORED_PAIRS["baseline"](T, {}) * per_pair


def resident_bytes(n_layer: int, n_embd: int, vocab: int, positions: int) -> float:
    """What a run's process keeps on the device between its steps, once its allocator's cache is
    emptied: weights, gradients and AdamW's moments (16 bytes a parameter), the CUDA context and
    the compiled kernels it loaded (PROCESS_BYTES). Runs that compile side by side each keep this;
    only one adds its step's activations at a time (harness/sweep/overlap.py)."""
    return 16 * gpt2_params(n_layer, n_embd, vocab, positions) + PROCESS_BYTES


def largest_batch(fits, T: int, cap_tokens: int = AUTO_TOKENS) -> int:
    """The largest B >= 1 with B * T <= cap_tokens for which fits(B) holds (fits is monotone)."""
    best, B = 1, 1
    while B * T <= cap_tokens and fits(B):
        best, B = B, B * 2
    lo, hi = best, min(B, max(1, cap_tokens // T))  # refine between the last power of 2 that fit and the next
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return max(1, lo)
