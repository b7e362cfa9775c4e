"""The FlexAttention family (flex, flex_sparse, sliding_window): patterns, densities, and the
chunked PyTorch path against the masked-softmax reference; which implementation runs where.

CPU tests run the chunked path and eager flex_attention forwards; the compiled flex kernel only
exists on CUDA (compute capability >= 8.0): those tests skip here and run on the H200.
"""
import pytest
import torch

import attentions
from attentions import banded, common, flex_sparse, masks, patterns, sliding_window
from attentions.common import StubAttention, allowed_with_padding, naive_attention
from harness.errors import UserError

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run on the H200)")
PRESET_T = [128, 512, 1024, 2048, 4096, 8192, 16384]
CPU = torch.device("cpu")


def causal(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def _diff(x, y):
    return (x.float() - y.float()).abs().max().item()


# ---- patterns and densities ------------------------------------------------------------------

def test_fixed_reference_mask_is_childs_fixed_pattern():
    """l = 4, c = 1: own aligned group causally, plus position 3, 7, ... of every earlier group."""
    m = flex_sparse.reference_mask(10, 4, 1)
    assert m[5].nonzero().flatten().tolist() == [3, 4, 5]
    assert m[9].nonzero().flatten().tolist() == [3, 7, 8, 9]
    assert m[2].nonzero().flatten().tolist() == [0, 1, 2]


@pytest.mark.parametrize("T", [1, 5, 16, 47, 48, 100, 257])
@pytest.mark.parametrize("group,summary", [(4, 1), (4, 4), (5, 2), (16, 4), (3, 9), ("auto", 4), ("auto", 1)])
def test_fixed_pairs_count_the_reference_mask(T, group, summary):
    params = {"group": group, "summary": summary}
    ref = flex_sparse.reference_mask(T, group, summary)
    assert flex_sparse.pairs(T, params) == int(ref.sum())
    l, c = flex_sparse.sizes(T, params)
    assert torch.equal(masks.dense_mask(("fixed", l, c), T, "cpu"), ref)  # the mask_mods agree


@pytest.mark.parametrize("T", [1, 7, 40, 300])
@pytest.mark.parametrize("window", [1, 8, 100, "auto"])
def test_sliding_window_pairs_count_the_reference_mask(T, window):
    ref = sliding_window.reference_mask(T, window)
    assert sliding_window.pairs(T, window) == int(ref.sum())
    assert torch.equal(masks.dense_mask(sliding_window.pattern({"window": window}, T), T, "cpu"), ref)


def test_default_patterns_are_sparse_at_every_preset_length():
    fs, sw = attentions.get("flex_sparse"), attentions.get("sliding_window")
    d_fs = [fs.density(T, fs.params) for T in PRESET_T]
    d_sw = [sw.density(T, sw.params) for T in PRESET_T]
    assert d_fs[1] < 0.3 and max(d_fs) < 0.4 and d_fs == sorted(d_fs, reverse=True)
    assert max(d_sw) < 0.25 and d_sw[-1] < 0.05


@pytest.mark.parametrize("name", ["flex", "flex_sparse", "sliding_window"])
@pytest.mark.parametrize("T", [128, 500, 4096])
def test_density_and_flops_count_the_same_pairs(name, T):
    spec, dense = attentions.get(name), attentions.get("sdpa").flops(1, 1, T, 64, {})
    assert spec.flops(1, 1, T, 64, spec.params) == pytest.approx(spec.density(T, spec.params) * dense)


# ---- the chunked path equals the masked-softmax reference -------------------------------------

CASES = [  # (mechanism, params, T, reference mask)
    ("sliding_window", {"window": 8}, 48, lambda T: sliding_window.reference_mask(T, 8)),
    ("sliding_window", {"window": 1}, 33, lambda T: sliding_window.reference_mask(T, 1)),
    ("sliding_window", {"window": 40}, 100, lambda T: sliding_window.reference_mask(T, 40)),
    ("sliding_window", {"window": 300}, 70, lambda T: causal(T)),
    ("flex_sparse", {"group": 4, "summary": 1}, 50, lambda T: flex_sparse.reference_mask(T, 4, 1)),
    ("flex_sparse", {"group": 16, "summary": 4}, 64, lambda T: flex_sparse.reference_mask(T, 16, 4)),
    ("flex_sparse", {"group": 100, "summary": 4}, 37, lambda T: causal(T)),
    ("flex", {}, 45, causal),
]


def _run(name, params, q, k, v, padding, impl="chunked"):
    """The mechanism's forward with impl; (B, T, H, D). Checks the chunked path is what runs."""
    spec = attentions.get(name)
    params = {**spec.params, **params, "impl": impl}
    assert impl != "chunked" or spec.kernel(q.device, params).startswith("chunked pytorch")
    return spec.forward(StubAttention(params), q, k, v, padding, scaling=0.25)[0]


@pytest.mark.parametrize("name,params,T,mask", CASES)
def test_chunked_equals_the_masked_softmax_with_gradients(name, params, T, mask):
    q, k, v, padding = common.self_check_inputs(B=2, H=3, T=T, D=16)
    grad, grads = torch.randn(2, T, 3, 16), []
    allowed = allowed_with_padding(mask(T), padding)
    for f in (lambda *x: _run(name, params, *x, padding),
              lambda *x: naive_attention(*x, allowed, 0.25).transpose(1, 2)):
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        out = f(*x)
        grads.append((out, *torch.autograd.grad((out * grad).sum(), x)))
    for mine, ref in zip(*grads):
        assert _diff(mine, ref) < 1e-5
    assert attentions.get(name).kernel(CPU, {**params, "impl": "chunked"}) == "chunked pytorch (cpu)"


@pytest.mark.parametrize("name,params,T,mask", CASES[::2])
def test_chunked_never_reads_the_future_bit_for_bit(name, params, T, mask):
    q, k, v, _ = common.self_check_inputs(B=1, H=2, T=T, D=16)
    q2, k2, v2, _ = common.self_check_inputs(B=1, H=2, T=T, D=16, seed=3)
    t = T // 2
    for a, b in ((q, q2), (k, k2), (v, v2)):
        b[:, :, : t + 1] = a[:, :, : t + 1]
    out, out2 = _run(name, params, q, k, v, None), _run(name, params, q2, k2, v2, None)
    assert torch.equal(out[:, : t + 1], out2[:, : t + 1]) and not torch.equal(out, out2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,params,T,mask", CASES[:1] + CASES[5:6] + CASES[7:])
def test_chunked_trains_in_half_precision(name, params, T, mask, dtype):
    q, k, v, padding = common.self_check_inputs(B=2, H=3, T=T, D=16)
    x = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = _run(name, params, *x, padding)
    (out.float().sum() * 1024).backward()
    ref = naive_attention(q, k, v, allowed_with_padding(mask(T), padding), 0.25).transpose(1, 2)
    assert out.dtype == dtype and _diff(out, ref) < 3e-2
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in x)


def test_padded_queries_keep_themselves_and_stay_finite():
    q, k, v, padding = common.self_check_inputs(B=2, H=2, T=40, D=16)
    padding[1, 5:] = False
    for name, params, *_ in CASES:
        assert torch.isfinite(_run(name, params, q, k, v, padding)).all(), name


# ---- the flex path's layout, checked with eager flex_attention (forward only on CPU) ---------

@pytest.mark.parametrize("pattern,T,mask", [
    (("fixed", 16, 4), 300, lambda T: flex_sparse.reference_mask(T, 16, 4)),
    (("fixed", 48, 2), 200, lambda T: flex_sparse.reference_mask(T, 48, 2)),
    (("sliding_window", 64), 300, lambda T: sliding_window.reference_mask(T, 64)),
])
def test_flex_layout_equals_the_reference_in_eager_flex(monkeypatch, pattern, T, mask):
    """The fixed pattern runs flex over the keys plus the gathered summary columns."""
    from torch.nn.attention.flex_attention import flex_attention
    monkeypatch.setattr(patterns, "compiled_flex", lambda: flex_attention)
    q, k, v, padding = common.self_check_inputs(B=2, H=2, T=T, D=16)
    ref = naive_attention(q, k, v, allowed_with_padding(mask(T), padding), 0.25)
    for pad in (None, padding):
        out = patterns.flex_pattern(q, k, v, pattern, pad, 0.25)
        want = ref if pad is not None else naive_attention(q, k, v, mask(T)[None, None], 0.25)
        assert _diff(out, want) < 1e-5


def test_fixed_flex_block_mask_skips_most_blocks():
    """Gathered summaries: at T = 4096 (l = 64, S = 252) the kernel visits a few blocks per row."""
    bm = masks.block_mask(("fixed", 64, 4), 4096, "cpu")
    assert bm.kv_num_blocks.float().mean() <= 3.5  # 1 diagonal + up to 2 summary blocks, of 32 rows


# ---- which implementation runs ---------------------------------------------------------------

def _fake_gpu(monkeypatch, capability):
    import torch.utils._triton
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    from attentions import device as cuda_device
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda_device, "_CAPABILITY", {})  # asked once per device: forget the last fake


@pytest.mark.parametrize("name", ["flex", "flex_sparse", "sliding_window"])
def test_impl_auto_is_chunked_below_ampere_and_flex_above(monkeypatch, name):
    spec, gpu = attentions.get(name), torch.device("cuda")
    kind = "causal" if name == "flex" else ("fixed" if name == "flex_sparse" else "sliding_window")
    _fake_gpu(monkeypatch, (7, 5))
    assert patterns.resolve_impl(gpu, "auto", kind) == "chunked"
    assert spec.kernel(gpu, spec.params) == "chunked pytorch (pre-Ampere path)"
    with pytest.raises(UserError, match="compute capability >= 8.0"):
        spec.kernel(gpu, {**spec.params, "impl": "flex"})
    _fake_gpu(monkeypatch, (9, 0))
    assert patterns.resolve_impl(gpu, "auto", kind) == "flex"
    assert spec.kernel(gpu, spec.params) == patterns.FLEX_KERNEL
    assert spec.kernel(gpu, {**spec.params, "impl": "chunked"}) == "chunked pytorch (impl=chunked)"


def test_cpu_kernels_and_refusals():
    assert attentions.get("flex").kernel(CPU, {"impl": "auto"}) == patterns.CPU_FLEX_KERNEL
    for name in ("flex_sparse", "sliding_window"):
        spec = attentions.get(name)
        assert spec.kernel(CPU, spec.params) == "chunked pytorch (cpu)"
        with pytest.raises(UserError, match="no cpu backward"):
            spec.kernel(CPU, {**spec.params, "impl": "flex"})


@pytest.mark.parametrize("name,params", [("flex", {"impl": "triton"}), ("flex_sparse", {"group": 0}),
                                         ("flex_sparse", {"summary": "auto"}), ("sliding_window", {"window": "8"})])
def test_bad_parameters_are_refused_at_install(name, params):
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=100))
    with pytest.raises(UserError):
        attentions.install(model, name, params)


def test_masks_are_never_rebuilt_inside_a_compiled_graph(monkeypatch):
    """torch.compile traced through lru_cache and built the mask at every step (seen on the H200:
    flex runs compiled for 2 minutes); a mask built before compiling must be a constant."""
    calls = []
    real = masks.create_mask
    monkeypatch.setattr(masks, "create_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    masks.dense_mask.cache.clear()
    q = torch.randn(1, 2, 64, 16)
    patterns.pattern_attention(q, q, q, ("causal",), None, 0.25)  # eager, as train.py does first
    f = torch.compile(lambda x: patterns.pattern_attention(x, x, x, ("causal",), None, 0.25),
                      backend="eager", fullgraph=True)
    for _ in range(2):
        f(q)
    assert len(calls) == 1


# ---- GPU only -------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("name,params,mask", [
    ("flex", {}, causal),
    ("sliding_window", {"window": 64}, lambda T: sliding_window.reference_mask(T, 64)),
    ("flex_sparse", {"group": 32, "summary": 4}, lambda T: flex_sparse.reference_mask(T, 32, 4)),
    ("flex_sparse", {"group": 160, "summary": 8}, lambda T: flex_sparse.reference_mask(T, 160, 8)),
])
@pytest.mark.parametrize("impl", ["auto", "chunked"])
def test_cuda_paths_match_the_reference_with_gradients(name, params, mask, impl):
    q, k, v, padding = (x.cuda() for x in common.self_check_inputs(B=2, H=4, T=1000, D=64))
    x = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    grad = torch.randn(2, 1000, 4, 64, device="cuda")
    spec = attentions.get(name)
    out = spec.forward(StubAttention({**spec.params, **params, "impl": impl}), *x, padding, scaling=0.125)[0]
    mine = torch.autograd.grad((out.float() * grad).sum(), x)
    y = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = naive_attention(*y, allowed_with_padding(mask(1000).cuda(), padding), 0.125).transpose(1, 2)
    theirs = torch.autograd.grad((ref * grad).sum(), y)
    assert _diff(out, ref) < 3e-2
    for a, b in zip(mine, theirs):
        assert _diff(a, b) < 5e-2 * max(1.0, b.abs().max().item())
    expected = "chunked pytorch" if impl == "chunked" or patterns.flex_cannot_train("cuda") else "flex_attention"
    assert spec.kernel(torch.device("cuda"), {**spec.params, "impl": impl}).startswith(expected)


@needs_cuda
def test_block_masks_are_built_once_per_length():
    q = torch.randn(1, 2, 512, 64, device="cuda", dtype=torch.bfloat16)
    masks.block_mask.cache.clear()
    for _ in range(3):
        patterns.pattern_attention(q, q, q, ("causal",), None, 0.125, "flex")
    assert len(masks.block_mask.cache) == 1


def test_an_emulated_t4_takes_every_pre_ampere_path(monkeypatch):
    """AB_EMULATE_CAPABILITY=7.5 (read into attentions.device.EMULATED): on any GPU the flex
    family runs its chunked path, lsh its matmul path, flash is unavailable and dtype auto is fp16."""
    import attentions
    from attentions import device as cuda_device
    from harness.run.model import pick_dtype
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(cuda_device, "EMULATED", (7, 5))
    cuda = torch.device("cuda")
    for name in ("flex", "flex_sparse", "sliding_window"):
        spec = attentions.get(name)
        assert "pre-Ampere" in spec.kernel(cuda, spec.params), name
    lsh = attentions.get("lsh")
    assert lsh.kernel(cuda, lsh.params).startswith("pytorch")
    assert "7.5" in attentions.get("flash").unavailable_reason(cuda)
    assert pick_dtype("auto", cuda) == (torch.float16, True)
    monkeypatch.setattr(cuda_device, "EMULATED", (9, 0))
    assert pick_dtype("auto", cuda) == (torch.bfloat16, False)
