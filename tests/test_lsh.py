"""lsh (attentions/lsh.py and its lsh_*.py parts): both paths equal the masked softmax over their
own assignment, values and gradients; outputs up to t are bit-identical whatever follows t (both
paths, fp32 and bf16, function and model level); with every causal pair found, lsh is full causal
attention (Reformer's duplicate correction); the flex pages visit every key page a query needs;
impl=auto's choice per device; density from the flops' pair count. GPU-only tests skip without
CUDA (the lead runs them on the H200: pytest -k cuda).
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


def build(name, params=None, seed=0, n_embd=64, n_head=4, vocab=VOCAB, n_positions=256):
    """Tiny 2-layer GPT-2 in fp32 on CPU with attention `name`."""
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=n_embd, n_head=n_head, n_positions=n_positions, vocab_size=vocab,
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
    ({"n_hashes": 3, "bucket_size": 5, "n_buckets": 2, "seed": 1, "dedup": False}, 61),  # round-count weights
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


@pytest.mark.parametrize("c,n_buckets,T,dedup", [(4, 4, 300, True), (64, 0, 300, True), (48, 0, 300, False),
                                                 (64, 0, 256, True), (16, 12, 700, True)])
def test_lsh_flex_layout_gives_the_chunked_matmuls_result(c, n_buckets, T, dedup):
    """The CUDA path (one flex call over the paged rows) against the CPU path, forward, with
    eager flex here (no CPU backward; the GPU test below compares gradients). T = 300 and 700 pad
    the rows to whole flex blocks; the inputs have right padding."""
    from torch.nn.attention.flex_attention import flex_attention
    q, k, v, padding = common.self_check_inputs(B=2, H=1, T=T, D=16)
    a = lsh.assign(q, k, padding, {**lsh.PARAMS, "bucket_size": c, "n_buckets": n_buckets}, 0)
    out, lse = lsh.chunk_attention(q, k, v, a, c, 0.25, dedup=dedup)
    out2, lse2 = lsh.flex_chunk_attention(q, k, v, a, c, 0.25, flex=flex_attention, dedup=dedup)
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


@pytest.mark.parametrize("T,c,n_buckets", [(1000, 64, 0), (700, 4, 12), (2048, 64, 0)])
def test_lsh_pages_visit_every_key_page_a_query_needs_and_few_others(T, c, n_buckets):
    """Compiled flex visits only the key pages listed per query page (eager flex, as in the test
    above, computes every score): every pair window_mask allows must be in a listed page, each
    query and real key has its own row, and the pages visited stay about as many as the query
    rows need (the bound the compact rows before pages met: 2.5 per 128 queries)."""
    q, k, v, padding = common.self_check_inputs(B=2, H=1, T=T, D=16)
    a = lsh.assign(q, k, padding, {**lsh.PARAMS, "bucket_size": c, "n_buckets": n_buckets}, 0)
    r = lsh.flex_rows(a, c, dedup=False)
    for row in (r.q_row, r.k_row):
        assert (row.sort(-1).values.diff(dim=-1) > 0).all()       # one row per item
    qc, kc = r.q_code.long()[..., :, None], r.k_code.long()[..., None, :]
    needed = (kc < qc) & (kc >= (qc // c - 1) * c)                          # (B, H*R, Lq, Lk)
    # the window holds what chunk_attention sees
    assert int(needed.sum()) == int(lsh.counts(a, c, padding).sum()) - a.hq.numel()  # counts adds the own key per round
    mask = lsh.rows_block_mask(r, c)
    nq, nk = mask.kv_indices.shape[-2:]
    assert nq == nk == lsh.n_pages(T, lsh.n_buckets(T, {**lsh.PARAMS, "bucket_size": c, "n_buckets": n_buckets}))
    listed = torch.zeros(*needed.shape[:2], nq, nk + 1, dtype=torch.bool)
    valid = torch.arange(nk) < mask.kv_num_blocks[..., None]
    listed.scatter_(-1, torch.where(valid, mask.kv_indices, nk).long(), True)
    blocks = listed[..., :nk].repeat_interleave(lsh.FLEX_BLOCK, -2).repeat_interleave(lsh.FLEX_BLOCK, -1)
    assert needed.any() and not (needed & ~blocks).any()
    assert mask.kv_num_blocks.sum(-1).float().mean() < 2.5 * -(-T // lsh.FLEX_BLOCK)
    assert int(mask.kv_num_blocks.max()) <= 3
    # the backward's lists, computed in the layout op, are torch's own transposition of the forward's
    from torch.nn.attention.flex_attention import BlockMask
    ref = BlockMask.from_kv_blocks(mask.kv_num_blocks, mask.kv_indices, BLOCK_SIZE=lsh.FLEX_BLOCK)
    assert torch.equal(mask.q_num_blocks, ref.q_num_blocks) and mask.q_indices.dtype == ref.q_indices.dtype
    used = torch.arange(nq) < ref.q_num_blocks[..., None]
    assert torch.equal(mask.q_indices[used], ref.q_indices[used]) and (mask.q_num_blocks > 0).any()


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
    from harness.run import model as models
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
    from harness.run import model as models
    m, _ = models.build("tiny", "lsh", 128)
    x = torch.randint(0, 50257, (1, 128))
    with torch.no_grad():
        m(input_ids=x)  # the eager forward train.py runs before compiling
    torch._dynamo.reset()
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            compiled(input_ids=x)


# ---- causal in value: what a query computes never depends on later tokens, bit for bit ---------

def _futures(length, t, dtype, seed=5, **kw):
    """Two (q, k, v) that agree up to position t and differ after it."""
    q, k, v, _ = _qkv(length=length, **kw)
    q2, k2, v2, _ = _qkv(length=length, seed=seed, **kw)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        b[:, :, : t + 1] = a[:, :, : t + 1]
    return [x.to(dtype) for x in (q, k, v)], [x.to(dtype) for x in (q2, k2, v2)]


CAUSAL_CASES = [({"n_hashes": 3, "bucket_size": 16, "n_buckets": 2}, 400, 150, 1),   # buckets over 2 pages
                ({"n_hashes": 2, "bucket_size": 64, "n_buckets": 0}, 300, 120, 2)]   # the default chunks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["matmul", "flex"])
@pytest.mark.parametrize("params,length,t,heads", CAUSAL_CASES)
def test_lsh_outputs_up_to_t_are_bit_identical_whatever_follows_t(params, length, t, heads, impl, dtype):
    """Both paths, forward (flex eager on CPU: the math of its kernel, no backward here). The flex
    path's rows used to be numbered by counting the items of lower buckets, future ones included,
    so the order in which a query's keys were summed (and the rounding) depended on later tokens."""
    from torch.nn.attention.flex_attention import flex_attention
    p = {**lsh.PARAMS, **params}
    outs = [lsh.attention(*x, None, p, 0.25, flex=impl == "flex", flex_fn=flex_attention)
            for x in _futures(length, t, dtype, H=heads)]
    assert torch.equal(outs[0][:, :, : t + 1], outs[1][:, :, : t + 1])
    assert not torch.equal(outs[0][:, :, t + 1:], outs[1][:, :, t + 1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lsh_model_logits_up_to_t_are_bit_identical_whatever_follows_t(dtype):
    """A 2-layer GPT-2 (impl=matmul, the CPU path): the next layer hashes this layer's outputs,
    so any rounding that leaked from the future would flip buckets and move logits visibly."""
    model = build("lsh", {"n_hashes": 2, "bucket_size": 16, "n_buckets": 8}, n_embd=32, n_head=2,
                  vocab=100).to(dtype)
    t, ids = 100, tokens(length=256, vocab=100)
    changed = ids.clone()
    changed[:, t + 1:] = tokens(length=256, seed=7, vocab=100)[:, t + 1:]
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    assert torch.equal(before[:, : t + 1], after[:, : t + 1])
    assert not torch.equal(before[:, t + 1:], after[:, t + 1:])


# ---- Reformer's duplicate correction: the union of the rounds' keys, each once -----------------

def _flex_eager(q, k, v, p, scaling):
    from torch.nn.attention.flex_attention import flex_attention
    return lsh.attention(q, k, v, None, p, scaling, flex=True, flex_fn=flex_attention)


@pytest.mark.parametrize("n_hashes,n_buckets,shift,impl", [
    (1, 1, 0.0, "matmul"), (2, 1, 0.0, "matmul"), (8, 1, 0.0, "matmul"), (8, 2, 1.0, "matmul"),
    (32, 2, 1.0, "matmul"), (2, 1, 0.0, "flex"), (8, 2, 1.0, "flex")])
def test_lsh_finding_every_causal_pair_is_full_causal_attention(n_hashes, n_buckets, shift, impl):
    """bucket_size >= T: one chunk per bucket, so a round finds every causal pair of a bucket; with
    one bucket every round finds all of them, with two buckets (q and k shifted alike, so that they
    mostly share one) the union over 8 or 32 rounds does, each pair in a different number of
    rounds. A key found in m rounds weighed m times without the correction (max error 0.5 - 0.9
    here), and n_buckets=1 did not hash (argmax over no columns)."""
    length = 40
    q, k, v, _ = _qkv(length=length)
    q, k = q + shift, k + shift
    p = {**lsh.PARAMS, "n_hashes": n_hashes, "bucket_size": length, "n_buckets": n_buckets}
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    found = lsh.counts(lsh.assign(q, k, None, p, 0), length)[..., causal]
    assert (found > 0).all() and (n_buckets == 1 or found.float().std() > 1)   # every pair, unevenly
    run = _flex_eager if impl == "flex" else lambda *x: lsh.attention(*x[:3], None, *x[3:])
    out = run(q, k, v, p, 0.25)
    assert _diff(out, common.naive_attention(q, k, v, causal, 0.25)) < 1e-5


def test_lsh_dedup_off_is_the_round_weighted_softmax():
    """dedup=False keeps the old behaviour: a key found in m rounds weighs m times."""
    q, k, v, _ = _qkv(length=40)
    q, k = q + 1.0, k + 1.0
    p = {**lsh.PARAMS, "n_hashes": 8, "bucket_size": 40, "n_buckets": 2, "dedup": False}
    n = lsh.counts(lsh.assign(q, k, None, p, 0), 40)
    want = common.naive_attention(q, k, v, n > 0, 0.25, n.clamp(min=1).float().log())
    for out in (lsh.attention(q, k, v, None, p, 0.25), _flex_eager(q, k, v, p, 0.25)):
        assert _diff(out, want) < 1e-5
    full = common.naive_attention(q, k, v, torch.ones(40, 40, dtype=torch.bool).tril(), 0.25)
    assert _diff(out, full) > 0.1


def test_lsh_n_buckets_must_be_even_or_one():
    with pytest.raises(UserError, match="n_buckets=3"):
        attentions.install(build("sdpa"), "lsh", {"n_buckets": 3})
    attentions.install(build("sdpa"), "lsh", {"n_buckets": 1})


# ---- which kernel runs, and what it computes ---------------------------------------------------

def test_lsh_auto_runs_matmul_before_ampere_and_flex_from_it(monkeypatch):
    """impl=auto on CUDA: flex from compute capability 8.0, matmul below (faked here on CPU);
    impl=flex stays flex, CPU is always matmul, and the recorded kernel says which ran."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(lsh, "flex_unavailable", lambda device: None)  # as if triton were there
    from attentions import device as cuda_device
    monkeypatch.setattr(cuda_device, "_CAPABILITY", {})
    cuda, flex = torch.device("cuda"), {**lsh.PARAMS, "impl": "flex"}
    for capability, auto in [((7, 5), "pytorch (sort + chunked matmuls)"), ((7, 0), "pytorch"),
                             ((8, 0), "flex_attention"), ((9, 0), "flex_attention")]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        cuda_device._CAPABILITY.clear()
        assert lsh.SPEC.kernel(cuda, lsh.PARAMS).startswith(auto), capability
        assert lsh.SPEC.kernel(cuda, flex).startswith("flex_attention")
        assert lsh.SPEC.kernel(torch.device("cpu"), lsh.PARAMS) == "pytorch (sort + chunked matmuls)"


def test_lsh_density_comes_from_the_pairs_its_flops_count():
    p = lsh.PARAMS
    for T in (4096, 2048):
        hashing = 2 * 2 * T * 64 * lsh.n_buckets(T, p)          # per round 2 T D nb, 2 rounds
        pairs = (lsh.flops(1, 1, T, 64, p) - hashing) / (4 * 64)
        assert pairs == 2 * T * 129
        assert lsh.SPEC.density(T, p) == pytest.approx(pairs / (T * (T + 1) / 2))
    assert 0.12 < lsh.SPEC.density(4096, p) < 0.13
    assert lsh.SPEC.density(128, p) == 1.0                       # more candidates than causal pairs


# ---- GPU only: compiled flex, fwd + bwd, function and model level ------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["matmul", "flex"])
def test_lsh_outputs_up_to_t_are_bit_identical_whatever_follows_t_on_cuda(impl, dtype):
    """The compiled flex kernel (block lists, online softmax over key pages) and the matmul path,
    with grad on (the training kernels), then a backward through both: outputs <= t bit-equal."""
    p, length, t = {**lsh.PARAMS, "n_hashes": 4}, 2048, 700
    outs = []
    for qkv in _futures(length, t, dtype, B=2, H=4, D=64):
        qkv = [x.cuda().requires_grad_() for x in qkv]
        out = lsh.attention(*qkv, None, p, 0.125, flex=impl == "flex")
        grads = torch.autograd.grad(out.float().square().sum(), qkv)
        assert all(torch.isfinite(g).all() for g in grads)
        outs.append(out.detach())
    assert torch.equal(outs[0][:, :, : t + 1], outs[1][:, :, : t + 1])
    assert not torch.equal(outs[0][:, :, t + 1:], outs[1][:, :, t + 1:])


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["matmul", "flex"])
def test_lsh_compiled_model_logits_up_to_t_are_bit_identical_on_cuda(impl, dtype):
    """2-layer GPT-2 under torch.compile, in training mode, both impls: the next layer hashes this
    one's outputs, so rounding leaked from the future flipped buckets (0.38 in bf16 before pages)."""
    model = build("lsh", {"impl": impl}, n_embd=128, n_head=2, vocab=100, n_positions=1024)
    model = model.to("cuda", dtype).train()
    t, ids = 600, tokens(length=1024, vocab=100).cuda()
    changed = ids.clone()
    changed[:, t + 1:] = tokens(length=1024, seed=7, vocab=100).cuda()[:, t + 1:]
    with torch.no_grad():
        model(ids)  # the eager forward train.py runs before compiling
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    logits = []
    for x in (ids, changed):
        out = compiled(x).logits
        out.float().logsumexp(-1).sum().backward()
        logits.append(out.detach())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.equal(logits[0][:, : t + 1], logits[1][:, : t + 1])
    assert not torch.equal(logits[0][:, t + 1:], logits[1][:, t + 1:])


@pytest.mark.parametrize("T,c,dedup", [(300, 16, True), (1024, 64, True), (1000, 64, False)])
def test_lsh_flex_layout_is_an_opaque_op_whose_fake_shapes_are_true(T, c, dedup):
    """The layout runs as a custom op (on the H200 inductor miscompiled it: 5.4 off the matmul
    path): opcheck passes, the fake implementation's shapes and dtypes are the real ones, and
    compiled it gives the eager layout exactly."""
    from attentions.lsh_flex import flex_rows_eager, flex_rows_op
    q, k, v, padding = common.self_check_inputs(B=1, H=2, T=T, D=16)
    a = lsh.assign(q, k, padding, {**lsh.PARAMS, "bucket_size": c}, 0)
    args = (a.hq, a.hk, a.q_slot, a.k_slot, a.slot_isk, a.slot_bucket, a.bucket_slot, c, dedup)
    torch.library.opcheck(flex_rows_op, args)
    real = flex_rows_op(*args)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = flex_rows_op(*(mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in args))
    assert [(tuple(x.shape), x.dtype) for x in fake] == [(tuple(x.shape), x.dtype) for x in real]
    eager = lsh.flex_rows(a, c, dedup)
    compiled = torch.compile(lambda t: flex_rows_eager(lsh.Assignment(*t), c, dedup), fullgraph=True)(tuple(a))
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(eager, compiled))
