"""kronecker_mlp, the 81M model's MLP without its hidden layer, against the dense MLP built from the
materialized W's: forward and every gradient, with and without autograd, traced whole by torch.compile, and
under bf16 autocast."""
import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_gpt
from kronecker import GeluContract, KroneckerLinear, fuses_mlp, kronecker_mlp


def pair(n_embd=16, c=4, seed=0):
    """A c_fc / c_proj pair of the 81M model's form (A n_embd x n_embd, B 1 x c and c x 1) with nonzero biases."""
    torch.manual_seed(seed)
    c_fc = KroneckerLinear(n_embd, c * n_embd, n_embd, n_embd)
    c_proj = KroneckerLinear(c * n_embd, n_embd, n_embd, n_embd)
    with torch.no_grad():
        c_fc.bias.normal_()
        c_proj.bias.normal_()
        c_fc.B.mul_(20.0)  # pre-activations of order 1, where GELU is far from linear
    return c_fc, c_proj


def dense_mlp(x, c_fc, c_proj):
    """The reference: the dense MLP on materialized weights, differentiable in the factors."""
    h = F.gelu(x @ c_fc.dense_weight() + c_fc.bias, approximate="tanh")
    return h @ c_proj.dense_weight() + c_proj.bias


def grads(f, x, params):
    y = f(x)
    weights = torch.linspace(-1, 1, y.numel()).view_as(y)
    return y.detach(), torch.autograd.grad((y * weights).sum(), [x, *params])


def test_which_pairs_fuse():
    c_fc, c_proj = pair()
    assert fuses_mlp(c_fc, c_proj)
    assert not fuses_mlp(KroneckerLinear(16, 64, 16, 16, 2), KroneckerLinear(64, 16, 16, 16, 2))  # two factors
    assert not fuses_mlp(KroneckerLinear(16, 64, 8, 16), c_proj)  # c_fc's B 2x4: a GEMM, not an outer product
    assert not fuses_mlp(torch.nn.Linear(16, 64), c_proj)
    assert tiny_gpt(0, n_embd=16, kron={"c_fc": (16, 16, 1), "c_proj": (16, 16, 1)}).transformer.h[0].mlp.fused
    assert not tiny_gpt(0, n_embd=16, kron={"c_fc": (16, 16, 1)}).transformer.h[0].mlp.fused


@pytest.mark.parametrize("compiled", [False, True])
def test_kronecker_mlp_equals_the_dense_mlp_forward_and_backward(compiled):
    c_fc, c_proj = pair()
    params = [c_fc.A, c_fc.B, c_fc.bias, c_proj.A, c_proj.B, c_proj.bias]
    x = torch.randn(3, 5, 16, requires_grad=True)
    fused = lambda x: kronecker_mlp(x, c_fc, c_proj)
    if compiled:
        torch._dynamo.reset()
        fused = torch.compile(fused, backend="eager", fullgraph=True)  # GeluContract traced, no graph break
    y, g = grads(fused, x, params)
    y_ref, g_ref = grads(lambda x: dense_mlp(x, c_fc, c_proj), x, params)
    assert y_ref.abs().max() > 1
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with torch.inference_mode():  # the path decoding takes: GeluContract.compute without autograd
        torch.testing.assert_close(kronecker_mlp(x, c_fc, c_proj), y_ref, rtol=0, atol=1e-5)


def test_gelu_contract_backward_against_autograd_in_float64():
    torch.manual_seed(1)
    t, b, bias, w = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in [(7, 6), (3,), (6, 3), (3,)])
    assert torch.autograd.gradcheck(GeluContract.apply, (t, b, bias, w))


def test_kronecker_mlp_under_bf16_autocast_follows_float32():
    c_fc, c_proj = pair()
    x = torch.randn(4, 8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kronecker_mlp(x, c_fc, c_proj)
        y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and all(p.grad.dtype == torch.float32 for p in (c_fc.B, c_fc.bias, c_proj.B))
    y_ref = dense_mlp(x, c_fc, c_proj).detach()
    assert ((y.float() - y_ref).norm() / y_ref.norm()).item() < 2e-2
