import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import kron_sum, make_hf_gpt2

from checkpoints import load_checkpoint, load_model, make_checkpoint, save_checkpoint
from kron_shapes import kron_flops
from kronecker import KroneckerEmbedding, KroneckerLinear
from model import GPT, GPTConfig


# --- equivalence with Hugging Face --------------------------------------------------------------------

@pytest.mark.parametrize("n_layer,n_head,n_embd", [(1, 1, 32), (2, 4, 64), (3, 6, 96)])
def test_from_pretrained_matches_transformers(tmp_path, n_layer, n_head, n_embd):
    hf = make_hf_gpt2(str(tmp_path), n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=64, seed=n_layer)
    model = GPT.from_pretrained(str(tmp_path)).eval()
    assert model.config.vocab_size == 50257 and model.config.block_size == 64
    idx = torch.randint(0, 50257, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        logits, loss = model(idx[:, :-1], idx[:, 1:])
        full_logits, no_loss = model(idx)
    assert no_loss is None
    assert abs(loss.item() - ref.loss.item()) < 1e-5
    torch.testing.assert_close(full_logits, ref.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(logits, ref.logits[:, :-1], rtol=0, atol=1e-4)


def test_from_pretrained_rejects_other_activations(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=16, activation_function="relu")
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="activation_function"):
        GPT.from_pretrained(str(tmp_path))


def test_tied_embeddings_and_gpt2_numerics():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16))
    assert model.lm_head.weight is model.transformer.wte.weight
    x = torch.linspace(-4, 4, 101)
    gelu_new = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)))
    torch.testing.assert_close(model.transformer.h[0].mlp.gelu(x), gelu_new)


# --- KroneckerLinear -----------------------------------------------------------------------------------

# (in, out, a_rows, a_cols): the paper's 81M c_fc / c_proj pattern in miniature, and general shapes.
KRON_SHAPES = [(12, 48, 12, 12), (48, 12, 12, 12), (24, 96, 6, 24), (24, 96, 3, 4), (24, 96, 12, 48)]


@pytest.mark.parametrize("factors", [1, 2, 4])
@pytest.mark.parametrize("shape", KRON_SHAPES)
@pytest.mark.parametrize("a_first", [True, False])
def test_kronecker_linear_matches_materialized(shape, factors, a_first):
    torch.manual_seed(0)
    in_f, out_f, a_rows, a_cols = shape
    layer = KroneckerLinear(in_f, out_f, a_rows, a_cols, factors).double()
    with torch.no_grad():
        layer.bias.normal_()
    layer.a_first = a_first  # both contraction orders must be right for every shape
    x = torch.randn(2, 5, in_f, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 5, out_f, dtype=torch.float64)

    y = layer(x)
    y.backward(grad_out)
    got = (y, x.grad, layer.A.grad, layer.B.grad, layer.bias.grad)

    A, B, bias = (t.detach().clone().requires_grad_() for t in (layer.A, layer.B, layer.bias))
    x_ref = x.detach().clone().requires_grad_()
    y_ref = x_ref @ kron_sum(A, B) + bias
    y_ref.backward(grad_out)
    want = (y_ref, x_ref.grad, A.grad, B.grad, bias.grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    torch.testing.assert_close(layer.dense_weight(), kron_sum(layer.A, layer.B), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(12, 48, 12, 12), (48, 12, 12, 12)])  # OuterProduct, MatVec
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("autocast", [False, True])
def test_outer_product_and_matvec_paths(shape, bias, autocast):
    """B of one row or column takes the memory-speed paths; they must equal the materialized layer, without a
    bias and under bfloat16 autocast too (output in bfloat16 as nn.Linear's, gradients in the weights' dtype)."""
    torch.manual_seed(0)
    in_f, out_f, a_rows, a_cols = shape
    layer = KroneckerLinear(in_f, out_f, a_rows, a_cols, 1, bias=bias)
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    x = torch.randn(6, in_f, requires_grad=True)
    grad_out = torch.randn(6, out_f)
    params = [p for p in (layer.A, layer.B, layer.bias) if p is not None]
    refs = [p.detach().clone().requires_grad_() for p in params]
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
        y_ref = F.linear(x_ref, kron_sum(*refs[:2]).t(), refs[2] if bias else None)
    (y.float() * grad_out).sum().backward()
    (y_ref.float() * grad_out).sum().backward()
    assert y.dtype == y_ref.dtype == (torch.bfloat16 if autocast else torch.float32)
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(y.float(), y_ref.float(), **tol)
    for got, want in zip([x] + params, [x_ref] + refs):
        assert got.grad.dtype == got.dtype == torch.float32
        torch.testing.assert_close(got.grad, want.grad, **tol)


@pytest.mark.parametrize("shape", [(12, 48, 12, 12), (48, 12, 12, 12), (24, 24, 6, 4)])  # outer, matvec, GEMMs
@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
def test_inference_path_equals_materialized_layer(shape, no_grad):
    """Without autograd (decoding) the layers skip their autograd Functions: the same numbers as the materialized
    W, for KroneckerLinear and for a factored lm_head (transposed factor views)."""
    torch.manual_seed(0)
    in_f, out_f, a_rows, a_cols = shape
    layer = KroneckerLinear(in_f, out_f, a_rows, a_cols, 1)
    embedding = KroneckerEmbedding(out_f, in_f, a_cols, a_rows, 1)  # wte (out_f x in_f): lm_head maps in_f -> out_f
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 1, in_f)
    with no_grad():
        y, logits = layer(x), embedding.unembed(x)
    torch.testing.assert_close(y, x @ kron_sum(layer.A, layer.B).detach() + layer.bias.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, x @ embedding.dense_weight().detach().t(), rtol=0, atol=1e-5)


def test_kronecker_linear_picks_cheaper_order():
    orders = set()
    for in_f, out_f, a_rows, a_cols in KRON_SHAPES:
        layer = KroneckerLinear(in_f, out_f, a_rows, a_cols, 2)
        b_rows, b_cols = in_f // a_rows, out_f // a_cols
        # independent count: GEMM (n*b_rows x a_rows x r*a_cols) then (n*a_cols x r*b_rows x b_cols), or
        # GEMM (n*a_rows x b_rows x r*b_cols) then (n*b_cols x r*a_rows x a_cols)
        cost_a = b_rows * a_rows * 2 * a_cols + a_cols * 2 * b_rows * b_cols
        cost_b = a_rows * b_rows * 2 * b_cols + b_cols * 2 * a_rows * a_cols
        assert kron_flops(in_f, out_f, a_rows, a_cols, 2) == (cost_a, cost_b)
        assert layer.a_first == (cost_a <= cost_b)
        orders.add(layer.a_first)
    assert orders == {True, False}, "the shapes must exercise both contraction orders"
    # the paper's 81M model: c_fc costs a quarter of dense with (A^T X) B, c_proj likewise with A^T (X B)
    assert kron_flops(768, 3072, 768, 768, 1)[0] / (768 * 3072) == pytest.approx(0.2513, abs=1e-4)
    assert kron_flops(3072, 768, 768, 768, 1)[1] / (768 * 3072) == pytest.approx(0.2513, abs=1e-4)


def test_random_init_has_gpt2_weight_std():
    torch.manual_seed(0)
    layer = KroneckerLinear(256, 1024, 16, 32, factors=4)
    assert layer.dense_weight().std().item() == pytest.approx(0.02, rel=0.05)


# --- configuration and parameter counts --------------------------------------------------------------

def test_paper_parameter_counts():
    with torch.device("meta"):  # GPT-2 small's shapes, no memory and no init
        m81 = GPT(GPTConfig.from_settings(dim_1=768, dim_2=768, factors=1))
        m95 = GPT(GPTConfig.from_settings(dim_1=384, dim_2=3072, factors=1))
        dense = GPT(GPTConfig())
    assert m81.get_num_params(non_embedding=False) == 81_972_576
    assert m81.get_num_params() == 81_186_144
    assert m95.get_num_params(non_embedding=False) == 96_128_304
    assert m95.get_num_params() == 95_341_872
    assert dense.get_num_params(non_embedding=False) == 124_439_808  # GPT-2 small


@pytest.mark.parametrize("kwargs,message", [
    (dict(dim_1=500, dim_2=768, factors=1),
     r"dim_1=500 does not divide n_embd=768; nearest valid dim_1: 384 or 768 \(all: 1, 2, 3, 4, 6, 8, 12, 16"),
    (dict(dim_1=768, dim_2=1000, factors=1),
     r"dim_2=1000 does not divide 4\*n_embd=3072; nearest valid dim_2: 768 or 1024 \(all: 1, 2, 3"),
    (dict(dim_1=768, dim_2=768, factors=5), r"factors=5 must be between 1 and 4"),
    (dict(dim_1=768, dim_2=768, factors=0), r"factors=0 must be between 1 and 4"),
    (dict(dim_1=768, dim_2=None, factors=1), r"must be set together"),
    (dict(n_head=5), r"n_head=5 must divide n_embd=768"),
])
def test_invalid_shapes_say_what_divides(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig.from_settings(**kwargs)


def test_optimizer_decays_kronecker_factors_not_biases():
    model = GPT(GPTConfig.from_settings(n_layer=1, n_head=2, n_embd=32, block_size=16, dim_1=8, dim_2=16, factors=2))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    mlp = model.transformer.h[0].mlp
    assert id(mlp.c_fc.A) in decayed and id(mlp.c_proj.B) in decayed
    assert id(mlp.c_fc.bias) not in decayed and id(model.transformer.ln_f.weight) not in decayed
    n_total = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_total == len(list(model.parameters()))


def test_generate_greedy_matches_argmax_loop():
    torch.manual_seed(0)
    config = GPTConfig.from_settings(n_layer=1, n_head=2, n_embd=32, block_size=8, dim_1=4, dim_2=8, factors=1)
    model = GPT(config).eval()
    idx = torch.randint(0, 50257, (2, 3))
    out = model.generate(idx, 10, temperature=0)
    expect = idx
    with torch.no_grad():
        for _ in range(10):
            logits = model(expect[:, -8:])[0]
            expect = torch.cat([expect, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expect)


# --- checkpoints ---------------------------------------------------------------------------------------

def test_checkpoint_round_trip_strips_wrapper_prefixes(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_settings(n_layer=2, n_head=2, n_embd=32, block_size=16, dim_1=8, dim_2=32, factors=2))
    checkpoint = make_checkpoint(model, iter_num=7)
    # what DDP(torch.compile(model)).state_dict() would have produced
    checkpoint["model"] = {"module._orig_mod." + k: v for k, v in checkpoint["model"].items()}
    path = str(tmp_path / "sub" / "ckpt.pt")
    save_checkpoint(checkpoint, path)
    assert os.listdir(tmp_path / "sub") == ["ckpt.pt"]  # no temporary file left behind
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["iter_num"] == 7 and loaded.config == model.config
    idx = torch.randint(0, 50257, (1, 16))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)
    torch.testing.assert_close(load_model(path)(idx)[0], model(idx)[0], rtol=0, atol=0)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the plain pickle it refuses
def test_load_checkpoint_refuses_pickled_code_and_garbage(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Exploit(), "model_args": {}}, f)
    with pytest.raises(ValueError, match="not a readable krony checkpoint"):
        load_checkpoint(str(evil))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable krony checkpoint"):
        load_checkpoint(str(garbage))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected a dict with 'model' and 'model_args'"):
        load_checkpoint(str(tmp_path / "other.pt"))


def test_save_checkpoint_keeps_old_file_when_save_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint({"model": {}, "model_args": {}, "iter_num": 1}, path)

    def crash(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {}, "model_args": {}, "iter_num": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["iter_num"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]
