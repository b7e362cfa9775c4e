"""sdpa: torch.nn.functional.scaled_dot_product_attention, backend chosen by torch.

Exact: softmax(Q K^T / sqrt(d) + causal) V. Causal with is_causal=True when nothing is padded
(lets torch pick flash/cudnn/efficient); with right padding, a boolean (B, 1, T, T) mask of
causal AND real keys. The backend torch really picked is probed once per (device, dtype, shape)
by recording the aten op SDPA dispatches to (see common.sdpa_backend). On CPU, torch 2.13 runs
its own flash-style CPU kernel (aten._scaled_dot_product_flash_attention_for_cpu) for both the
causal and the masked case, recorded as "sdpa-flash-cpu" - not the GPU FlashAttention kernel.
"""
import torch
import torch.nn.functional as F

from attentions.common import causal_pairs, padding_of, sdpa_kernel_name
from attentions.registry import AttentionSpec, register


def causal_padding_mask(padding_mask, T, device):
    """(B, 1, T, T) bool, True = may attend: causal and the key is real (or the query itself).

    Keeping the diagonal leaves real tokens unchanged (their own key is real) and gives a fully
    padded row one key, so no row is empty and no NaN can reach the backward pass.
    """
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=device)
    return causal[None, None] & (padding_mask[:, None, None, :] | eye)


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query (B, H, T, D); key, value (B, Hkv, T, D)
    padding = padding_of(attention_mask)
    T = query.shape[-2]
    gqa = key.shape[1] != query.shape[1]
    if padding is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                             dropout_p=dropout, enable_gqa=gqa)
    else:
        mask = causal_padding_mask(padding, T, query.device)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                             dropout_p=dropout, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def flops(B, H, T, D, params):
    return 2 * 2 * B * H * D * causal_pairs(T)  # causal: only the lower triangle is computed


def kernel(device, params, dtype=None, shape=None):
    return sdpa_kernel_name(device, dtype, shape)


SPEC = register(AttentionSpec(
    name="sdpa",
    description="torch scaled_dot_product_attention, is_causal, backend picked by torch",
    exact=True,
    forward=forward,
    flops=flops,
    kernel=kernel,
    paper="torch.nn.functional.scaled_dot_product_attention",
))


if __name__ == "__main__":
    from attentions.common import ascii_mask, naive_attention, self_check_inputs
    q, k, v, padding = self_check_inputs()
    T = q.shape[-2]
    allowed = causal_padding_mask(padding, T, q.device)  # (B, 1, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for name, pad, mask in (("unpadded", None, causal), ("padded", padding, allowed)):
        out, _ = forward(None, q, k, v, pad, scaling=0.25)
        ref = naive_attention(q, k, v, mask, 0.25)
        print(f"sdpa {name} ({kernel('cpu', {}, torch.float32, tuple(q.shape))}): "
              f"max |out - reference| = {(out - ref.transpose(1, 2)).abs().max().item():.2e}")
    print("mask of the padded sequence (7 pads: only the diagonal kept for them):")
    print(ascii_mask(allowed[0, 0]))
