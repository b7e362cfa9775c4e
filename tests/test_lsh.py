"""lsh (attentions/lsh.py and its lsh_*.py parts): both paths equal the masked softmax over their
own assignment, values and gradients; the flex layout finds the same keys as the chunked matmuls;
impl is checked at install. GPU-only tests skip without CUDA (the lead runs them on the H200).
"""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import attentions
from attentions import common, lsh
from attentions.common import StubAttention
from harness.errors import UserError

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run on the H200)")
VOCAB = 1000


def build(name, params=None, seed=0, n_embd=64, n_head=4, vocab=VOCAB):
    """Tiny 2-layer GPT-2 in fp32 on CPU with attention `name`."""
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=n_embd, n_head=n_head, n_positions=256, vocab_size=vocab,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    attentions.install(model, name, params)
    return model


def tokens(B=2, length=48, seed=1, vocab=VOCAB):
    return torch.randint(0, vocab, (B, length), generator=torch.Generator().manual_seed(seed))


def _qkv(B=2, H=3, length=48, D=16, seed=0):
    return common.self_check_inputs(B=B, H=H, T=length, D=D, seed=seed)


def _max_err(out, ref):
    return (out.float() - ref.transpose(1, 2)).abs().max().item()  # out (B,T,H,D), ref (B,H,T,D)


def _diff(x, y):
    return (x.float() - y.float()).abs().max().item()


# ---- both paths equal the masked softmax over their assignment --------------------------------

@pytest.mark.parametrize("params,length", [
    ({"n_hashes": 2, "bucket_size": 4, "n_buckets": 0, "seed": 0}, 48),   # buckets from T
    ({"n_hashes": 3, "bucket_size": 5, "n_buckets": 2, "seed": 1}, 61),   # many chunks per bucket
    ({"n_hashes": 1, "bucket_size": 64, "n_buckets": 0, "seed": 0}, 40),  # one chunk: dense causal
])
def test_lsh_matches_masked_softmax_over_its_assignment(params, length):
    q, k, v, padding = _qkv(length=length)
    module = StubAttention(params)
    out, _ = lsh.forward(module, q, k, v, padding, scaling=0.25)
    assert _max_err(out, lsh.reference(module, q, k, v, padding, scaling=0.25)) < 1e-5


@pytest.mark.parametrize("params,length", [
    ({"n_hashes": 2, "bucket_size": 4, "n_buckets": 0, "seed": 0}, 48),
    ({"n_hashes": 3, "bucket_size": 5, "n_buckets": 2, "seed": 1}, 61),
])
def test_lsh_gradients_equal_the_masked_softmax_reference(params, length):
    """The scatters into the slot layout, the chunk views of the flat key layout and the custom
    backward of taking each query's row are checked where they matter: the gradients."""
    q, k, v, padding = _qkv(length=length)
    module, grad = StubAttention(params), torch.randn(2, length, 3, 16)
    grads = []
    for f in (lambda *x: lsh.forward(module, *x, padding, scaling=0.25)[0],
              lambda *x: lsh.reference(module, *x, padding, scaling=0.25).transpose(1, 2)):
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        grads.append(torch.autograd.grad((f(*x) * grad).sum(), x))
    for mine, ref in zip(*grads):
        assert ref.abs().max() > 0 and _diff(mine, ref) < 1e-5


def test_lsh_take_slots_backward_is_the_gathers_backward():
    x = torch.randn(2, 3, 2, 10, 4, requires_grad=True)
    slot = torch.stack([torch.randperm(10)[:6] for _ in range(12)]).view(2, 3, 2, 6)  # unique per row
    grad = torch.randn(2, 3, 2, 6, 4)
    mine = torch.autograd.grad((lsh.take(x, slot) * grad).sum(), x)[0]
    ref = torch.autograd.grad((x.gather(3, slot.unsqueeze(-1).expand(2, 3, 2, 6, 4)) * grad).sum(), x)[0]
    assert torch.equal(mine, ref) and (mine == 0).any()  # slots nobody takes get no gradient


def test_lsh_bucket_assignment_never_depends_on_the_future():
    """Reformer chunks the global sorted order, so later tokens can move earlier ones between
    chunks; chunking per bucket must make each query's key set depend on the past only."""
    params, t = {**lsh.PARAMS, "bucket_size": 3, "n_buckets": 4}, 30
    q, k, v, _ = _qkv(length=64)
    q2, k2, v2, _ = _qkv(length=64, seed=5)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        b[:, :, : t + 1] = a[:, :, : t + 1]  # same past, different future
    module = StubAttention(params)
    seen = lsh.counts(lsh.assign(q, k, None, params, 0), 3)[..., : t + 1, : t + 1]
    seen2 = lsh.counts(lsh.assign(q2, k2, None, params, 0), 3)[..., : t + 1, : t + 1]
    assert torch.equal(seen, seen2)
    out, out2 = lsh.forward(module, q, k, v, None)[0], lsh.forward(module, q2, k2, v2, None)[0]
    assert torch.allclose(out[:, : t + 1], out2[:, : t + 1], atol=1e-6)


@pytest.mark.parametrize("c,n_buckets,T", [(4, 4, 300), (64, 0, 300), (48, 0, 300), (64, 0, 256), (16, 40, 700)])
def test_lsh_flex_layout_gives_the_chunked_matmuls_result(c, n_buckets, T):
    """The CUDA path (one flex call over the compact rows) against the CPU path, forward, with
    eager flex here (no CPU backward; the GPU test below compares gradients). T = 300 and 700 pad
    the rows to whole flex blocks; the inputs have right padding."""
    from torch.nn.attention.flex_attention import flex_attention
    q, k, v, padding = common.self_check_inputs(B=2, H=3, T=T, D=16)
    a = lsh.assign(q, k, padding, {**lsh.PARAMS, "bucket_size": c, "n_buckets": n_buckets}, 0)
    out, lse = lsh.chunk_attention(q, k, v, a, c, 0.25)
    out2, lse2 = lsh.flex_chunk_attention(q, k, v, a, c, 0.25, flex=flex_attention)
    assert _diff(out2, out) < 1e-5 and _diff(lse2, lse) < 1e-5


def test_lsh_impl_is_checked_at_install_and_flex_is_cuda_only():
    with pytest.raises(UserError, match="impl='triton'"):
        attentions.install(build("sdpa"), "lsh", {"impl": "triton"})
    flex_params = {**lsh.PARAMS, "impl": "flex"}
    assert lsh.SPEC.kernel(torch.device("cpu"), flex_params) == "pytorch (sort + chunked matmuls)"
    assert not lsh.uses_flex("cpu", flex_params) and not lsh.uses_flex("cpu", lsh.PARAMS)
    assert not lsh.uses_flex("cuda", {**lsh.PARAMS, "impl": "matmul"})


def test_lsh_slot_layout_pads_buckets_to_chunks_only():
    q, k, v, _ = common.self_check_inputs(B=1, H=1, T=300, D=16)
    a = lsh.assign(q, k, None, {**lsh.PARAMS, "bucket_size": 48}, 0)
    assert a.slot_bucket.shape[-1] == lsh.n_slots(300, 48, 8) == 1008


@pytest.mark.parametrize("T,c,n_buckets", [(1000, 64, 0), (700, 4, 12), (2048, 48, 8)])
def test_lsh_compact_rows_visit_every_key_block_a_query_needs_and_few_others(T, c, n_buckets):
    """Compiled flex visits only the key blocks listed per query block (eager flex, as in the test
    above, computes every score): every pair window_mask allows must be in a listed block, and
    the list stays about two blocks per query block."""
    q, k, v, padding = common.self_check_inputs(B=2, H=2, T=T, D=16)
    a = lsh.assign(q, k, padding, {**lsh.PARAMS, "bucket_size": c, "n_buckets": n_buckets}, 0)
    r = lsh.flex_rows(a, c)
    qc, kc = r.q_code.long()[..., :, None], r.k_code.long()[..., None, :]
    needed = (kc < qc) & (kc >= (qc // c - 1) * c)                          # (B, H*R, L, L)
    # the rows are each query and each real key once, and the window holds what chunk_attention sees
    assert int(needed.sum()) == int(lsh.counts(a, c, padding).sum()) - a.hq.numel()  # counts adds the own key per round
    mask = lsh.rows_block_mask(r, c)
    n = r.q_code.shape[-1] // lsh.FLEX_BLOCK
    listed = torch.zeros(*needed.shape[:2], n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            listed[..., i, j] = ((mask.kv_indices[..., i, :] == j)
                                 & (torch.arange(n) < mask.kv_num_blocks[..., i, None])).any(-1)
    blocks = listed.repeat_interleave(lsh.FLEX_BLOCK, -2).repeat_interleave(lsh.FLEX_BLOCK, -1)
    assert needed.any() and not (needed & ~blocks).any()
    assert mask.kv_num_blocks.float().mean() < 2.5 and int(mask.kv_num_blocks.max()) <= 3



@needs_cuda
def test_lsh_compiled_flex_matches_chunked_matmuls_with_gradients_on_cuda():
    torch.manual_seed(0)
    q, k, v, padding = (x.cuda() for x in common.self_check_inputs(B=2, H=4, T=1000, D=64))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    a = lsh.assign(q, k, padding, lsh.PARAMS, 0)
    grad = torch.randn(*a.q_slot.shape, 64, device="cuda")
    results = []
    for chunked in (lsh.chunk_attention, lsh.flex_chunk_attention):
        out, lse = chunked(q, k, v, a, 64, 0.125)
        results.append((out, lse, *torch.autograd.grad((out * grad).sum() + lse.sum(), (q, k, v))))
    for x, y in zip(*results):
        assert torch.isfinite(y).all() and _diff(y, x) < 2e-3 * max(1.0, x.abs().max().item())
    assert lsh.SPEC.kernel(torch.device("cuda"), {**lsh.PARAMS, "impl": "flex"}).startswith("flex_attention")
    assert lsh.SPEC.kernel(torch.device("cuda"), lsh.PARAMS).startswith("flex_attention")  # impl=auto
    assert lsh.SPEC.kernel(torch.device("cuda"), {**lsh.PARAMS, "impl": "matmul"}) == "pytorch (sort + chunked matmuls)"


@needs_cuda
def test_lsh_flex_path_compiles_whole_in_the_model_and_trains_like_the_matmul_path_on_cuda():
    """impl=flex inside torch.compile(model, fullgraph=True) (the loss outside: transformers logs a
    warning in its loss function, a graph break of its own): the layout, block mask and flex call
    make one graph, with right padding, and the loss and every gradient equal impl=matmul's."""
    import model as models
    ids = tokens(length=256).cuda()
    mask = torch.ones_like(ids)
    mask[0, 200:] = 0
    results = []
    for impl in ("matmul", "flex"):
        m, _ = models.build("tiny", "lsh", 256, params={"impl": impl})
        m = m.cuda().train()
        with torch.no_grad():
            m(input_ids=ids, attention_mask=mask)  # the eager forward train.py runs before compiling
        torch._dynamo.reset()
        logits = torch.compile(m, fullgraph=True)(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        results.append((loss.detach(), [p.grad for p in m.parameters()]))
    (loss, grads), (loss2, grads2) = results
    assert torch.isfinite(loss2) and abs(loss2 - loss) < 1e-4 * abs(loss)
    for g, g2 in zip(grads, grads2):
        assert torch.isfinite(g2).all() and _diff(g2, g) < 1e-3 * max(1e-6, g.abs().max().item())



def test_lsh_compiles_without_graph_breaks_or_per_layer_recompiles():
    """On the H200 LSH hashed with a torch.Generator inside the compiled graph: a graph break,
    then one recompile per layer until dynamo's limit, then eager. Rotations are a buffer now."""
    import model as models
    m, _ = models.build("tiny", "lsh", 128)
    x = torch.randint(0, 50257, (1, 128))
    with torch.no_grad():
        m(input_ids=x)  # the eager forward train.py runs before compiling
    torch._dynamo.reset()
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            compiled(input_ids=x)
