"""lsh's batched-matmul path (impl="matmul", every device): one softmax per chunk of the slot layout
(attentions/lsh_layout.py) over [previous chunk, own chunk, own key], as batched matmuls.

Queries are scattered into the slot layout; keys and values into ONE flat layout of all (batch,
head, round) rows after one empty chunk, so that a chunk's own keys and its previous chunk's keys
are both views of it (no copies). Chunk 0's previous chunk is the row before's last chunk (or the
empty one): masked, as every slot that is not a real key of the query's bucket is. Within a bucket
the slots are in (position, query before key) order, so "earlier in position" is "earlier slot":
all of the previous chunk, a lower triangle of the own one. It computes every slot's row (about
3T per round, key slots and padding included) and its c x c score tiles go through memory.
"""
import math

import torch

from attentions.lsh_layout import key_buckets, place, place_flat, round_codes, take


def chunk_masks(a, c):
    """(B, H, R, N, c, c) bool each: which key slots of the own chunk and of the previous chunk
    each query slot sees (a real key of its bucket, earlier in position)."""
    B, H, R, S = a.slot_bucket.shape
    N = S // c
    kb = key_buckets(a)
    kb = torch.cat([kb.new_full((B, H, R, c), -2), kb], dim=-1)                      # per row
    kb_own, kb_prev = kb[..., c:].view(B, H, R, N, 1, c), kb[..., :S].view(B, H, R, N, 1, c)
    qb = a.slot_bucket.view(B, H, R, N, c, 1)
    before = torch.ones(c, c, dtype=torch.bool, device=qb.device).tril(-1)          # key slot < query slot
    return (kb_own == qb) & before, kb_prev == qb


def round_counts(a, c):
    """(B, H, R, N, c, c) uint8 each, for the own and the previous chunk: in how many rounds each
    (query slot, key slot) pair is in the query's window (valid where chunk_masks allows): per
    round an int32 subtract and compare per score, O(R^2 T c) per head in all, int32 temporaries."""
    B, H, R, S = a.slot_bucket.shape
    N = S // c
    n_own = torch.zeros(B, H, R, N, c, c, dtype=torch.uint8, device=a.q_slot.device)
    n_prev = torch.zeros_like(n_own)
    for cq, ck in zip(*(x.unbind(-1) for x in round_codes(a, c))):       # (B, H, T) each round
        q = cq.new_zeros(B, H, R, S).scatter_(-1, a.q_slot, cq.unsqueeze(2).expand_as(a.q_slot))
        k = ck.new_zeros(B, H, R, c + S).scatter_(-1, a.k_slot + c, ck.unsqueeze(2).expand_as(a.k_slot))
        q = q.view(B, H, R, N, c, 1)
        for n, keys in ((n_own, k[..., c:]), (n_prev, k[..., :S])):
            n += ((q - keys.reshape(B, H, R, N, 1, c)) >> 1) == 0              # 0 <= q - k <= 1
    return n_own, n_prev


def softmax_parts(s_own, s_prev, own):
    """Softmax over [previous chunk, own chunk, own key] (the own key is always there: no empty
    row) -> the probabilities of each part and the log-sum-exp."""
    top = torch.maximum(torch.maximum(s_own.amax(-1, keepdim=True), s_prev.amax(-1, keepdim=True)), own)
    e_own, e_prev, e_self = torch.exp(s_own - top), torch.exp(s_prev - top), torch.exp(own - top)
    total = e_own.sum(-1, keepdim=True) + e_prev.sum(-1, keepdim=True) + e_self    # (B,H,R,N,c,1)
    return e_own / total, e_prev / total, e_self / total, top + total.log()


def chunk_attention(query, key, value, a, c, scaling, dedup=True):
    """-> out (B, H, R, T, D) fp32 and lse (B, H, R, T) per query and round (see the module).
    dedup: each score minus log(rounds that find the pair), the own key's minus log(R)."""
    B, H, R, S = a.slot_bucket.shape
    N, D = S // c, query.shape[-1]
    qs = place(query, a.q_slot, S).view(B * H * R * N, c, D)                         # (BHRN, c, D)
    kf, vf = (place_flat(x, a.k_slot, S, lead=c) for x in (key, value))             # (c + BHRS, D)
    k_own, k_prev = kf[c:].view(-1, c, D), kf[:-c].view(-1, c, D)                   # (BHRN, c, D)
    v_own, v_prev = vf[c:].view(-1, c, D), vf[:-c].view(-1, c, D)
    view = (B, H, R, N, c, c)
    s_own = (qs @ k_own.transpose(-1, -2)).view(view).float() * scaling
    s_prev = (qs @ k_prev.transpose(-1, -2)).view(view).float() * scaling
    own = (query * key).sum(-1).float() * scaling                                    # (B, H, T)
    if dedup:
        with torch.no_grad():
            n_own, n_prev = round_counts(a, c)
        s_own, s_prev = s_own - n_own.clamp(min=1).float().log(), s_prev - n_prev.clamp(min=1).float().log()
        own = own - math.log(R)
    seen_own, seen_prev = chunk_masks(a, c)
    s_own, s_prev = s_own.masked_fill(~seen_own, -math.inf), s_prev.masked_fill(~seen_prev, -math.inf)
    own = own.new_zeros(B, H, R, S).scatter(-1, a.q_slot, own.unsqueeze(2).expand(B, H, R, -1))
    p_own, p_prev, p_self, lse = softmax_parts(s_own, s_prev, own.view(B, H, R, N, c, 1))
    p_own, p_prev = (p.to(value.dtype).view(-1, c, c) for p in (p_own, p_prev))
    out = take((p_own @ v_own + p_prev @ v_prev).view(B, H, R, S, D), a.q_slot).float()  # (B,H,R,T,D)
    p_self = p_self.view(B, H, R, S).gather(-1, a.q_slot)
    out = out + p_self.unsqueeze(-1) * value.float().unsqueeze(2)
    return out, lse.view(B, H, R, S).gather(-1, a.q_slot)
