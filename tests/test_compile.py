"""torch.compile traces the Kronecker layers and a factored GPT whole (fullgraph=True: no graph break), custom
autograd included, and the traced model computes what the eager one does, forward and backward. Dynamo's eager
backend keeps this a test of tracing, fast and without a C++ compiler; bench.py times inductor."""
import pytest
import torch
from conftest import tiny_gpt

from kronecker import KroneckerEmbedding, KroneckerLinear


def gradients(module, *inputs):
    """(output, the gradient of every parameter) of a fixed random projection of module(*inputs)."""
    module.zero_grad(set_to_none=True)
    out = module(*inputs)
    out = out[1] if isinstance(out, tuple) else out
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("shape,path", [((64, 256, 8, 16, 2), "matmuls"), ((64, 256, 64, 1, 1), "OuterProduct"),
                                        ((256, 64, 1, 64, 1), "MatVec")])
def test_kronecker_linear_compiles_whole_and_equals_eager(shape, path):
    torch.manual_seed(0)
    layer = KroneckerLinear(*shape)
    (r, _, _), (_, b_rows, b_cols) = layer.A.shape, layer.B.shape
    assert path == ("OuterProduct" if layer.a_first and r * b_rows == 1 else
                    "MatVec" if not layer.a_first and r * b_cols == 1 else "matmuls")  # each custom autograd
    x = torch.randn(3, 5, layer.in_features)
    eager = gradients(layer, x)
    torch._dynamo.reset()
    compiled = gradients(torch.compile(layer, backend="eager", fullgraph=True), x)
    torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=1e-5)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_a_factored_gpt_compiles_whole_and_equals_eager():
    model = tiny_gpt(0, vocab_size=64, n_embd=64, kron={"c_fc": (64, 2, 1), "c_proj": (4, 8, 2), "wte": (8, 16, 2)})
    assert isinstance(model.transformer.wte, KroneckerEmbedding)
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    eager = gradients(model, idx, idx)
    torch._dynamo.reset()
    compiled = gradients(torch.compile(model, backend="eager", fullgraph=True), idx, idx)
    torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=1e-5)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
