"""torch.compile traces the Kronecker layers and a factored GPT whole (fullgraph=True: no graph break), custom
autograd included, and the traced model computes what the eager one does, forward and backward. Dynamo's eager
backend keeps those tests of tracing, fast and without a C++ compiler; one run of train.py --compile=True uses
inductor, as users do (it needs a C++ compiler; bench.py times it)."""
import os
import shutil

import pytest
import torch
from conftest import metrics, random_corpus, tiny_gpt, tiny_train_args, train_in_process

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


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor on the CPU needs g++")
def test_train_with_compile_logs_the_losses_of_eager_training_and_saves_a_plain_checkpoint(tmp_path):
    data = random_corpus(tmp_path / "data")
    runs = {}
    for compile_model in (False, True):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        out = tmp_path / f"compile={compile_model}"
        train_in_process(tiny_train_args(data, out, compile=compile_model, dim_1=8, dim_2=16, factors=2, init="random",
                                         max_iters=6, eval_interval=3, lr_decay_iters=6))
        assert (torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0) == compile_model  # compiled, or not
        records = metrics(out)
        runs[compile_model] = ([r["loss"] for r in records if "loss" in r],
                               [r["val_loss"] for r in records if "val_loss" in r])
        assert len(runs[compile_model][0]) == 6 and len(runs[compile_model][1]) == 3
        checkpoint = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)
        assert not any("_orig_mod" in key for key in checkpoint["model"])  # loads into a plain GPT
    for eager, compiled in zip(runs[False], runs[True]):
        assert compiled == pytest.approx(eager, abs=1e-3)
