"""linear attention: the chunked form equals its quadratic reference, and fp16 runs stay finite."""
import pytest
import torch

from attentions import common, linear
from attentions.common import StubAttention


def _qkv(B=2, H=3, T=48, D=16, seed=0):
    return common.self_check_inputs(B=B, H=H, T=T, D=D, seed=seed)


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_linear_matches_quadratic_form(chunk):
    q, k, v, padding = _qkv()
    out, _ = linear.forward(StubAttention({"chunk_size": chunk}), q, k, v, padding)
    ref = linear.reference(q, k, v, padding)
    assert (out - ref.transpose(1, 2)).abs().max() < 1e-5


def test_linear_gradients_equal_the_quadratic_form():
    q, k, v, padding = _qkv(T=40)
    grad, grads = torch.randn(2, 40, 3, 16), []
    for f in (lambda *x: linear.forward(StubAttention({"chunk_size": 16}), *x, padding)[0],
              lambda *x: linear.reference(*x, padding).transpose(1, 2)):
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        grads.append(torch.autograd.grad((f(*x) * grad).sum(), x))
    for mine, ref in zip(*grads):
        assert (mine - ref).abs().max() < 1e-4


def test_linear_stays_finite_in_fp16_autocast_with_a_grad_scale():
    """fp16 autocast with the gradient scaler (a T4's dtype): large |q|, |k| overflowed the fp16
    matmuls autocast made of phi(Q) phi(K)^T and phi(K)^T V, inf / inf gave NaN outputs."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 512, 64, generator=g) * 10 for _ in range(2))
    v = torch.randn(1, 2, 512, 64, generator=g)
    q, k, v = (x.half().requires_grad_() for x in (q, k, v))
    with torch.autocast("cpu", dtype=torch.float16):
        out, _ = linear.forward(StubAttention(linear.PARAMS), q, k, v, None)
        loss = out.float().pow(2).mean()
    (loss * 65536).backward()
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    ref = linear.reference(q.detach(), k.detach(), v.detach()).transpose(1, 2)
    assert (out.float() - ref).abs().max() < 1e-2


def test_linear_density_is_dense_causal():
    assert linear.SPEC.density(4096, linear.PARAMS) == 1.0
