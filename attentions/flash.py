"""flash: FlashAttention (Dao et al. 2022; FlashAttention-2, Dao 2023), exact causal attention.

Tiled softmax(Q K^T / sqrt(d) + causal) V that never materialises the T x T matrix. Runs the
flash-attn package (flash_attn_func, causal=True) when it is importable, otherwise SDPA pinned
to its flash backend with sdpa_kernel(SDPBackend.FLASH_ATTENTION): if that backend cannot run
these inputs, torch raises instead of picking another kernel. Never silently another kernel.

Padding: batches are right-padded and attention is causal, so a real token at position t only
sees keys 0..t, which are all real: the padding mask cannot change a real token's output, and
plain causal attention is exact for every real token. Padded positions attend to earlier pads
too; their outputs are finite and ignored by the loss. That is why no varlen path is needed.
"""
import torch
import torch.nn.functional as F

from attentions.device import capability

from attentions.common import built_once, causal_pairs, padding_of, self_check_inputs
from attentions.registry import AttentionSpec, register


@built_once  # looked up once: a failed import costs ~90 us, at every layer of every forward
def _flash_attn():
    """flash_attn_func if the flash-attn package is installed (pip install flash-attn), else None."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D); padding ignored on purpose (see the module docstring)
    padding_of(attention_mask)
    if query.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"flash attention runs in fp16/bf16 only, got {query.dtype}; "
                           "use dtype bf16 (or the sdpa mechanism)")
    flash_attn_func = _flash_attn()
    if flash_attn_func is not None:
        # flash-attn takes (B, T, H, D); GPT-2's (B, H, T, D) is a transpose of that layout.
        out = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                              dropout_p=dropout, softmax_scale=scaling, causal=True)
        return out.contiguous(), None  # (B, T, H, D)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                             dropout_p=dropout)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * D * causal_pairs(T)


def unavailable_reason(device):
    device = torch.device(device)
    if device.type != "cuda":
        return ("FlashAttention needs an NVIDIA GPU (compute capability >= 8.0); on CPU SDPA "
                "would run its CPU kernel, which is not FlashAttention")
    major, minor = capability(device)
    if major < 8:
        return (f"FlashAttention needs compute capability >= 8.0 (Ampere or newer); this GPU "
                f"has {major}.{minor} (a T4 is 7.5)")
    return None


def kernel(device, params, dtype=None, shape=None):
    if _flash_attn() is not None:
        import flash_attn
        return f"flash-attn {flash_attn.__version__} flash_attn_func"
    return "sdpa-flash (pinned: SDPBackend.FLASH_ATTENTION)"


SPEC = register(AttentionSpec(
    name="flash",
    description="FlashAttention: flash-attn package if installed, else SDPA pinned to its flash backend",
    exact=True,
    forward=forward,
    flops=flops,
    kernel=kernel,
    unavailable_reason=unavailable_reason,
    paper="Dao et al. 2022, FlashAttention; Dao 2023, FlashAttention-2",
))


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = unavailable_reason(device)
    if reason:
        print(f"flash: not runnable here: {reason}")
    else:
        q, k, v, _ = (x.to(torch.bfloat16) if x.is_floating_point() else x
                      for x in self_check_inputs(T=300, D=64, device=device))
        out, _ = forward(None, q, k, v, None, scaling=64 ** -0.5)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
        err = (out.float() - ref.transpose(1, 2)).abs().max().item()
        print(f"flash ({kernel(device, {})}): max |out - fp32 causal reference| = {err:.2e}")
