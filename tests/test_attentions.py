"""The nine attentions: exact ones equal baseline, approximate ones equal their own naive
reference, all are causal, ignore right padding for real tokens, and pass gradients.

CPU tests use a tiny GPT-2 in fp32. flash needs a GPU (bf16) and the compiled flex kernel only
exists on CUDA: those tests skip here with the reason and run on the GPU box.
"""
import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import attentions
from attentions import common, flash, flex_sparse, gqa, lsh, patterns, sliding_window
from attentions.common import StubAttention, allowed_with_padding, naive_attention
from harness.errors import UserError

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run on the H200)")
FLASH_REASON = flash.unavailable_reason(torch.device("cuda" if CUDA else "cpu"))

# Small parameters so that the patterns are really sparse at T = 48.
SMALL = {
    "sliding_window": {"window": 8},
    "flex_sparse": {"group": 8, "summary": 2},
    "linear": {"chunk_size": 16},
    "lsh": {"n_hashes": 2, "bucket_size": 4, "n_buckets": 4},  # fixed buckets: same hashing at any T
    "gqa": {"kv_heads": 2},
}
FLASH = pytest.param("flash", marks=pytest.mark.skipif(FLASH_REASON is not None, reason=str(FLASH_REASON)))
ALL = [FLASH if n == "flash" else n for n in attentions.ORDER]
T, VOCAB = 48, 1000


def build(name, seed=0):
    """Tiny GPT-2 with attention `name`; flash runs on the GPU in bf16, the rest on CPU in fp32."""
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256, vocab_size=VOCAB,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    attentions.install(model, name, SMALL.get(name))
    if name == "flash":
        model = model.to("cuda", torch.bfloat16)
    return model


def device_of(model):
    return next(model.parameters()).device


def tol(model):
    return 5e-2 if next(model.parameters()).dtype == torch.bfloat16 else 1e-4


def tokens(B=2, length=T, seed=1):
    return torch.randint(0, VOCAB, (B, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids, mask=None):
    dev = device_of(model)
    with torch.no_grad():
        out = model(ids.to(dev), attention_mask=None if mask is None else mask.to(dev))
    return out.logits.float().cpu()


# ---- exact mechanisms equal baseline ---------------------------------------------------------

@pytest.mark.parametrize("name", ["sdpa", FLASH, "flex"])
def test_exact_equals_baseline(name):
    ids, mask = tokens(), torch.ones(2, T, dtype=torch.long)
    mask[1, 30:] = 0  # right padding in the second sequence
    model, base = build(name), build("baseline")
    assert torch.allclose(logits(model, ids), logits(base, ids), atol=tol(model))
    real = mask.bool()
    got, want = logits(model, ids, mask)[real], logits(base, ids, mask)[real]
    assert torch.allclose(got, want, atol=tol(model))


def test_gqa_equals_baseline_when_group_heads_are_identical():
    base = build("baseline")
    gqa.tie_kv_heads(base, kv_heads=2)
    grouped = copy.deepcopy(base)
    attentions.install(grouped, "gqa", {"kv_heads": 2}, init="pretrained")
    assert grouped.transformer.h[0].attn.c_attn.weight.shape == (64, 64 + 2 * 2 * 16)
    ids = tokens()
    assert torch.allclose(logits(grouped, ids), logits(base, ids), atol=1e-4)


def test_gqa_random_init_keeps_kv_std_and_refuses_twice():
    model = build("gqa")
    w = model.transformer.h[0].attn.c_attn.weight[:, 64:]  # the pooled K/V columns
    assert 0.7 < w.std().item() / model.config.initializer_range < 1.3
    with pytest.raises(UserError):
        attentions.install(model, "gqa", {"kv_heads": 2})


# ---- approximate mechanisms equal their own naive reference ---------------------------------

def _qkv(B=2, H=3, length=T, D=16, seed=0):
    q, k, v, padding = common.self_check_inputs(B=B, H=H, T=length, D=D, seed=seed)
    return q, k, v, padding


def _max_err(out, ref):
    return (out.float() - ref.transpose(1, 2)).abs().max().item()  # out (B,T,H,D), ref (B,H,T,D)


def _diff(x, y):
    return (x.float() - y.float()).abs().max().item()




# ---- every mechanism: causal, padding-invariant, trainable -----------------------------------

@pytest.mark.parametrize("name", ALL)
def test_future_tokens_never_change_the_past(name):
    model, t = build(name), 20
    ids = tokens()
    changed = ids.clone()
    changed[:, t + 1:] = tokens(seed=7)[:, t + 1:]
    before, after = logits(model, ids), logits(model, changed)
    assert torch.allclose(before[:, : t + 1], after[:, : t + 1], atol=tol(model))
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:], atol=tol(model))


@pytest.mark.parametrize("name", ALL)
def test_right_padding_leaves_real_tokens_unchanged(name):
    model, L = build(name), 29
    ids = tokens()
    alone = logits(model, ids[1:, :L])                   # the short sequence on its own, no padding
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, L:] = 0
    padded = logits(model, ids, mask)                    # the same, right-padded in a batch
    assert torch.allclose(padded[1, :L], alone[0], atol=tol(model))
    assert torch.isfinite(padded).all()                  # pads themselves never produce NaN


@pytest.mark.parametrize("name", ALL)
def test_a_training_step_reaches_every_parameter(name):
    model = build(name).train()
    dev = device_of(model)
    ids, mask = tokens().to(dev), torch.ones(2, T, dtype=torch.long, device=dev)
    mask[0, 40:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


# ---- registry contract ----------------------------------------------------------------------

def test_registry_has_the_nine_and_their_contract():
    assert attentions.names()[:9] == attentions.ORDER
    for name in attentions.ORDER:
        spec = attentions.get(name)
        assert spec.flops(2, 12, 1024, 64, spec.params) > 0
        assert isinstance(spec.kernel(torch.device("cpu"), spec.params, dtype=torch.float32,
                                      shape=(2, 12, 128, 64)), str)
    with pytest.raises(UserError, match="sdpa"):
        attentions.get("spda")
    with pytest.raises(UserError, match="window"):
        attentions.install(build("baseline"), "sliding_window", {"windw": 3})


def test_flop_formulas_count_computed_pairs():
    dense = attentions.get("sdpa").flops(1, 1, 4096, 64, {})
    assert attentions.get("flex").flops(1, 1, 4096, 64, {}) == dense
    assert attentions.get("gqa").flops(1, 1, 4096, 64, {"kv_heads": 4}) == dense
    short = attentions.get("sdpa").flops(1, 1, 200, 64, {})
    assert sliding_window.flops(1, 1, 200, 64, {"window": 256}) == short  # window > T: dense
    assert sliding_window.flops(1, 1, 4096, 64, {"window": 256}) < dense / 8
    assert flex_sparse.flops(1, 1, 4096, 64, flex_sparse.PARAMS) < dense / 2
    assert dense / 8 < lsh.flops(1, 1, 4096, 64, lsh.PARAMS) < dense / 4  # 2 rounds x 129 keys per query, + hashing
    assert attentions.get("baseline").flops(1, 1, 4096, 64, {}) > dense  # eager computes all T^2


def test_baseline_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode
    from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward
    q = torch.randn(2, 3, 32, 16)
    with FlopCounterMode(display=False) as counter:
        eager_attention_forward(StubAttention(), q, q, q, None, scaling=0.25)
    assert counter.get_total_flops() == attentions.get("baseline").flops(2, 3, 32, 16, {})


def test_flash_attn_package_is_looked_up_once(monkeypatch):
    """A failed `import flash_attn` costs ~90 us; forward asks at every layer of every step."""
    import sys
    import types
    flash._flash_attn.cache.clear()
    fake = types.ModuleType("flash_attn")
    fake.flash_attn_func = object()
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    try:
        assert flash._flash_attn() is fake.flash_attn_func
        monkeypatch.delitem(sys.modules, "flash_attn")  # gone, but the answer is kept
        assert flash._flash_attn() is fake.flash_attn_func
        flash._flash_attn.cache.clear()
        import importlib.util
        assert (flash._flash_attn() is None) == (importlib.util.find_spec("flash_attn") is None)
    finally:
        flash._flash_attn.cache.clear()  # the next caller looks the real package up again


def test_cpu_kernel_names_are_honest():
    cpu = torch.device("cpu")
    assert attentions.get("flex").kernel(cpu, {"impl": "auto"}) == patterns.CPU_FLEX_KERNEL
    sdpa_name = attentions.get("sdpa").kernel(cpu, {}, dtype=torch.float32, shape=(1, 4, 64, 16))
    assert sdpa_name == "sdpa-flash-cpu"  # torch 2.13's CPU kernel for causal and masked SDPA
    assert "FlashAttention" in flash.unavailable_reason(cpu)


# ---- GPU only -------------------------------------------------------------------------------

@needs_cuda


@needs_cuda
@pytest.mark.skipif(FLASH_REASON is not None, reason=str(FLASH_REASON))
def test_flash_matches_sdpa_on_cuda():
    q, k, v = (torch.randn(2, 12, 1024, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out, _ = flash.forward(None, q, k, v, None, scaling=0.125)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                           is_causal=True, scale=0.125)
    assert _max_err(out, ref) < 2e-2


@needs_cuda
@pytest.mark.parametrize("name", attentions.ORDER)
def test_every_mechanism_trains_in_bf16_on_cuda(name):
    if attentions.get(name).unavailable_reason(torch.device("cuda")):
        pytest.skip(attentions.get(name).unavailable_reason(torch.device("cuda")))
    model = build(name).to("cuda", torch.bfloat16).train()
    ids = tokens(length=256).cuda()
    mask = torch.ones_like(ids)
    mask[0, 200:] = 0  # the padded path too (flex: a per-batch BlockMask)
    for attention_mask in (None, mask):
        model.zero_grad()
        model(ids, attention_mask=attention_mask, labels=ids).loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
