"""linear: causal linear attention, phi(x) = elu(x) + 1 (Katharopoulos et al. 2020).

    out_i = phi(q_i) S_i / (phi(q_i) . z_i),   S_i = sum_{j<=i} phi(k_j)^T v_j,  z_i = sum_{j<=i} phi(k_j)

Approximate (a different model, not softmax attention). Chunked: inside a chunk of C tokens the
quadratic form (phi(Q) phi(K)^T, lower triangle) is used; across chunks a running state S (D x D)
and normaliser z (D) carry everything earlier. The states of all chunks come from one cumulative
sum, so memory is O(T/C * D^2 + T * C) - linear in T - and there is no Python loop over chunks.
Everything is computed in fp32 with autocast switched off: the state and normaliser are sums
over thousands of positive terms, and under fp16 autocast (pre-Ampere GPUs) the products
phi(Q) phi(K)^T and phi(K)^T V overflow fp16's 65504 once |q|, |k| reach ~10 (inf / inf = NaN).
The result, a convex combination of values, is cast back to the input dtype.
The 1/sqrt(d) scaling of softmax attention does not apply (the paper uses none). Padded keys get
phi(k) = 0; with right padding they are after every real token anyway.
"""
import torch
import torch.nn.functional as F

from attentions.common import padding_of, params_of, self_check_inputs
from attentions.registry import AttentionSpec, register

PARAMS = {"chunk_size": 64}
EPS = 1e-6  # only matters for a row with no key at all


def feature_map(x):
    return F.elu(x.float()) + 1  # phi(x) > 0, so the normaliser is positive


def features(query, key, value, padding):
    """phi(Q), phi(K), V in fp32; padded keys removed. (B, H, T, D) each."""
    fq, fk = feature_map(query), feature_map(key)
    if padding is not None:
        fk = fk * padding[:, None, :, None]
    return fq, fk, value.float()


def chunked(fq, fk, v, C):
    """Causal linear attention by chunks of C. fq, fk, v (B, H, T, D) fp32 -> (B, H, T, D)."""
    B, H, T, D = fq.shape
    pad = (-T) % C  # zero features at the end: they add nothing to any state
    fq, fk, v = (F.pad(x, (0, 0, 0, pad)).view(B, H, -1, C, D) for x in (fq, fk, v))  # (B, H, N, C, D)
    kv = fk.transpose(-1, -2) @ v                      # (B, H, N, D, D) each chunk's K^T V
    state = F.pad(kv.cumsum(2)[:, :, :-1], (0, 0, 0, 0, 1, 0))  # (B, H, N, D, D) chunks before
    zk = fk.sum(-2)                                    # (B, H, N, D)
    z = F.pad(zk.cumsum(2)[:, :, :-1], (0, 0, 1, 0))   # (B, H, N, D) normaliser before the chunk
    intra = (fq @ fk.transpose(-1, -2)).tril()         # (B, H, N, C, C) causal inside the chunk
    num = fq @ state + intra @ v                       # (B, H, N, C, D)
    den = (fq * z.unsqueeze(-2)).sum(-1) + intra.sum(-1)  # (B, H, N, C)
    out = num / (den.unsqueeze(-1) + EPS)
    return out.reshape(B, H, -1, D)[:, :, :T]


def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query, key, value (B, H, T, D); scaling unused (see docstring)
    p = params_of(module, PARAMS)
    with torch.autocast(query.device.type, enabled=False):  # fp32 matmuls, whatever the run's dtype
        fq, fk, v = features(query, key, value, padding_of(attention_mask))
        out = chunked(fq, fk, v, int(p["chunk_size"])).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def reference(query, key, value, padding=None):
    """O(T^2) quadratic form of the same feature map: (phi(Q) phi(K)^T masked causal) V / rowsum."""
    fq, fk, v = features(query, key, value, padding)
    A = (fq @ fk.transpose(-1, -2)).tril()  # (B, H, T, T)
    return (A @ v) / (A.sum(-1, keepdim=True) + EPS)  # (B, H, T, D)


def density(T, params):
    """1.0: every query reads every earlier key, through phi(q) S_i (a dense causal kernel in
    feature space, no softmax); its cost is flops(), linear in T."""
    return 1.0


def flops(B, H, T, D, params):
    """Multiply-adds actually done: intra-chunk C x C blocks, state K^T V, query x state, normaliser."""
    C = int(params["chunk_size"])
    Tp = -(-T // C) * C
    intra = 2 * 2 * Tp * C * D   # phi(Q) phi(K)^T and (.)V over full C x C blocks
    state = 2 * 2 * Tp * D * D   # phi(K)^T V per chunk and phi(Q) S
    norm = 2 * 2 * Tp * D        # phi(Q) . z and the row sums
    return B * H * (intra + state + norm)


SPEC = register(AttentionSpec(
    name="linear",
    description="causal linear attention, phi(x) = elu(x) + 1, chunked with a running fp32 K^T V state",
    exact=False,
    forward=forward,
    flops=flops,
    density=density,
    params=PARAMS,
    kernel=lambda device, params, dtype=None, shape=None: "pytorch (chunked linear attention, fp32 state)",
    paper="Katharopoulos et al. 2020, Transformers are RNNs",
))


if __name__ == "__main__":
    from attentions.common import StubAttention
    q, k, v, padding = self_check_inputs()
    params = {"chunk_size": 16}
    out, _ = forward(StubAttention(params), q, k, v, padding)
    ref = reference(q, k, v, padding)
    print(f"linear {params}: max |chunked - quadratic reference| = "
          f"{(out - ref.transpose(1, 2)).abs().max().item():.2e}")
    print("pattern: every query reads all earlier keys through phi(q) S_i (dense causal, no softmax)")
