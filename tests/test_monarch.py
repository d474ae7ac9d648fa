"""Monarch matrices: the layer against block_diag and permutation matrices built here, its projection, the plan's
--monarch entries and counts, the inits, and the exports."""
import pytest
import torch

from conftest import tiny_gpt

SHAPES = [(16, 64, 4), (64, 16, 2), (16, 48, 4), (12, 36, 3), (16, 16, 8), (16, 64, 1)]  # c_fc, c_proj, c_attn, ...


def explicit_monarch(in_factor, out_factor):
    """W built from dense matrices, independent of monarch.py's reshapes: block_diag(in_factor), the permutation
    sending middle feature m to row (m % nblocks, m // nblocks) of the second factor, block_diag(out_factor), and
    the permutation sending output (l, s) to s*nblocks + l."""
    nblocks, _, mid_block = in_factor.shape
    out_block = out_factor.shape[2]
    middle = torch.zeros(nblocks * mid_block, nblocks * mid_block, dtype=in_factor.dtype)
    for m in range(nblocks * mid_block):
        middle[m, (m % nblocks) * mid_block + m // nblocks] = 1
    output = torch.zeros(nblocks * out_block, nblocks * out_block, dtype=in_factor.dtype)
    for l in range(nblocks):
        for s in range(out_block):
            output[l * out_block + s, s * nblocks + l] = 1
    return torch.block_diag(*in_factor) @ middle @ torch.block_diag(*out_factor) @ output


@pytest.mark.parametrize("in_features,out_features,nblocks", SHAPES)
def test_forward_is_the_monarch_matrix_and_its_materialization(in_features, out_features, nblocks):
    from monarch import MonarchLinear
    torch.manual_seed(0)
    layer = MonarchLinear(in_features, out_features, nblocks)
    torch.nn.init.normal_(layer.bias)
    W = explicit_monarch(layer.in_factor.detach(), layer.out_factor.detach())
    x = torch.randn(3, 5, in_features)
    assert torch.allclose(layer(x), x @ W + layer.bias, atol=1e-5)
    assert torch.allclose(layer.dense_weight(), W, atol=1e-6)
    # parameters exact: min(in, out) * (in + out) / nblocks weights, and the bias
    weights = min(in_features, out_features) * (in_features + out_features) // nblocks
    assert sum(p.numel() for p in layer.parameters()) == weights + out_features


@pytest.mark.parametrize("in_features,out_features,nblocks", SHAPES)
def test_the_projection_of_a_monarch_matrix_recovers_it(in_features, out_features, nblocks):
    from monarch import MonarchLinear, monarch_weight, nearest_monarch
    torch.manual_seed(1)
    W = MonarchLinear(in_features, out_features, nblocks).dense_weight().detach()
    assert torch.allclose(monarch_weight(*nearest_monarch(W, nblocks)), W, atol=1e-5)


def test_the_projection_is_the_best_per_pair_of_blocks_and_one_block_is_exact():
    """Each part of W between input block k and output block l is its own truncated SVD: the error is the norm of
    the discarded singular values, and nblocks=1 represents any W."""
    from monarch import monarch_weight, nearest_monarch
    torch.manual_seed(2)
    W = torch.randn(16, 64, dtype=torch.float64)
    assert torch.allclose(monarch_weight(*nearest_monarch(W, 1)), W, atol=1e-10)
    nblocks, rank = 4, 1  # mid_block 4 over 4 blocks: rank 1 per pair
    parts = W.reshape(nblocks, 4, 16, nblocks).permute(0, 3, 1, 2)
    tail = torch.linalg.svdvals(parts)[..., rank:].square().sum()
    error = (monarch_weight(*nearest_monarch(W, nblocks)) - W).square().sum()
    assert torch.allclose(error, tail)


def test_gradients_are_checked():
    from monarch import monarch_matmul
    torch.manual_seed(3)
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    in_factor = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    out_factor = torch.randn(3, 4, 12, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(36, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(monarch_matmul, (x, in_factor, out_factor, bias))


def test_compiles_with_fullgraph():
    from monarch import MonarchLinear
    torch.manual_seed(4)
    layer = MonarchLinear(16, 64, 4)
    x = torch.randn(2, 3, 16)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)


def test_plan_counts_are_exact_and_round_trip():
    from model import GPT, GPTConfig
    monarch = {"c_fc": 4, "c_proj@1": 2, "c_attn": 16, "attn_proj@0": 8}
    config = GPTConfig.from_settings(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=64, monarch=monarch,
                                     kron={"c_proj@0": (4, 4, 1)})
    model = GPT(config)
    assert sum(config.plan.count_parts(8).values()) == model.get_num_params(False)
    assert str(config.plan) == "c_proj@0=4x4:1 c_attn=monarch:16 attn_proj@0=monarch:8 c_fc=monarch:4 " \
                               "c_proj@1=monarch:2"
    assert GPTConfig.from_args(config.to_args()).plan == config.plan
    assert GPTConfig.from_hf(config.to_hf()).plan == config.plan
    assert "monarch" not in tiny_gpt().config.to_args()  # a plan without Monarch writes model_args as before


@pytest.mark.parametrize("monarch,kron,message", [
    ({"c_fc": 3}, None, "c_fc in block 0 is 16x64: Monarch nblocks=3 must divide both sides; nearest valid: 2 or 4"),
    ({"wte": 2}, None, "wte: a Monarch matrix is one of c_attn, attn_proj, c_fc, c_proj, not wte"),
    ({"c_fc": 2}, {"c_fc@1": (4, 4, 1)}, "c_fc in block 1 is both Kronecker-factored and Monarch"),
    ({"c_fcc": 2}, None, "'c_fcc' is not a factorable matrix"),
])
def test_plans_that_cannot_be_built_are_refused(monarch, kron, message):
    from model import GPTConfig
    with pytest.raises(ValueError, match=message):
        GPTConfig.from_settings(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=64, monarch=monarch,
                                kron=kron)


def test_one_block_gives_the_teachers_logits():
    from compress import compress
    from kron_shapes import Plan
    teacher = tiny_gpt()
    plan = Plan.from_settings(16, 2, 64, monarch={"c_fc": 1, "c_proj": 1, "c_attn": 1, "attn_proj": 1})
    student = compress(teacher, plan, "vl")
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(student(idx)[0], teacher(idx)[0], atol=1e-4)


def test_act_fits_the_outputs_better_than_vl():
    from compress import compress, output_errors
    from kron_shapes import Plan
    teacher = tiny_gpt()
    plan = Plan.from_settings(16, 2, 64, monarch={"c_fc": 4, "c_proj": 4})
    calibration = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(0))
    vl = output_errors(teacher, compress(teacher, plan, "vl"), calibration)
    act = compress(teacher, plan, "act", calibration=calibration, act_steps=20)
    act_errors = output_errors(teacher, act, calibration)
    assert sum(act_errors.values()) < sum(vl.values())
    random = compress(teacher, plan, "random")
    assert random.config.plan == plan


def test_exports_compute_our_logits(tmp_path):
    """The dense export multiplies the Monarch factors out; the factored one keeps them, runs the shipped
    monarch.py, and its config.json carries the plan (reloaded, and read back by load_model)."""
    from transformers import AutoModelForCausalLM

    from checkpoints import load_model
    from krony_to_gpt import REMOTE_CODE, to_hf, to_hf_factored
    assert "monarch.py" in REMOTE_CODE
    model = tiny_gpt(monarch={"c_fc": 4, "c_proj@1": 2, "c_attn": 2}, kron={"attn_proj": (4, 4, 1)})
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    ours = model(idx)[0]
    assert torch.allclose(to_hf(model)(idx).logits, ours, atol=1e-5)
    to_hf_factored(model, tmp_path).save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True, dtype=torch.float32).eval()
    assert reloaded.config.monarch == {"c_attn": 2, "c_fc": 4, "c_proj@1": 2}
    assert torch.allclose(reloaded(idx).logits, ours, atol=1e-5)
    loaded = load_model(str(tmp_path))
    assert loaded.config.plan == model.config.plan
    assert torch.allclose(loaded(idx)[0], ours, atol=1e-5)


@pytest.fixture
def teacher_file(tmp_path):
    from checkpoints import make_checkpoint, save_checkpoint
    teacher = tiny_gpt()
    save_checkpoint(make_checkpoint(teacher), str(tmp_path / "teacher.pt"))
    return teacher, str(tmp_path / "teacher.pt")


def test_kron_decompose_with_one_block_gives_the_teachers_logits(teacher_file, tmp_path, capsys):
    import kron_decompose
    from checkpoints import load_model
    from conftest import run_main
    teacher, path = teacher_file
    out = tmp_path / "student.pt"
    status, stdout, _ = run_main(kron_decompose.main, ["--model", path, "--monarch", "c_fc=1", "--monarch", "c_proj=1",
                                                       "--out", out], capsys)
    assert status == 0 and "c_fc=monarch:1 c_proj=monarch:1" in stdout
    assert "--monarch=\"{'c_fc': 1, 'c_proj': 1}\"" in stdout  # the next command keeps the plan
    student = load_model(str(out))
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(student(idx)[0], teacher(idx)[0], atol=1e-4)


@pytest.mark.parametrize("entries,message", [
    (["--monarch", "c_fc=3"], "c_fc in block 0 is 16x64: Monarch nblocks=3 must divide both sides"),
    (["--monarch", "c_fcc=2"], "'c_fcc' is not one of"),
    (["--monarch", "c_fc=2", "--kron", "c_fc@1=4x4:1"], "c_fc in block 1 is both Kronecker-factored and Monarch"),
    (["--monarch", "c_fc=2", "--init", "vl_norm"], "init=vl_norm has no Monarch form"),
])
def test_kron_decompose_refuses_plans_in_one_line_before_weights(teacher_file, tmp_path, monkeypatch, capsys,
                                                                entries, message):
    import checkpoints
    import kron_decompose
    from conftest import run_main
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: pytest.fail("the teacher's weights were read"))
    status, _, err = run_main(kron_decompose.main, ["--model", teacher_file[1], *entries, "--out", tmp_path / "s.pt"],
                              capsys)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


def test_train_builds_and_refuses_monarch_plans(tmp_path, capsys):
    import train
    from checkpoints import load_model
    from conftest import random_corpus, run_main, tiny_train_args
    data = random_corpus(tmp_path / "data")
    args = tiny_train_args(data, tmp_path / "out", init="random", max_iters=2, eval_interval=2, eval_iters=1)
    status, _, err = run_main(train.main, [*args, "--monarch={'c_fc': 4, 'c_attn@1': 2}"], capsys)
    assert status == 0, err
    assert load_model(str(tmp_path / "out" / "ckpt.pt")).config.plan.to_monarch() == {"c_fc": 4, "c_attn@1": 2}
    status, _, err = run_main(train.main, [*args, "--monarch={'c_fc': 5}"], capsys)
    assert status == 2 and "Monarch nblocks=5 must divide both sides" in err and len(err.strip().splitlines()) == 1


def test_list_shows_monarch_sizes_beside_the_kronecker_shapes(capsys):
    import kron_decompose
    from conftest import run_main
    from model import GPT, GPTConfig
    status, out, _ = run_main(kron_decompose.main, ["--list", "--monarch", "--n_embd", "16", "--n_layer", "2",
                                                    "--vocab_size", "64"], capsys)
    assert status == 0
    rows = {line.split()[3]: line.split() for line in out.splitlines() if "monarch:" in line}
    assert sorted(rows) == [f"monarch:{n}" for n in (1, 16, 2, 4, 8)]  # every divisor of 16, as text sorts
    model = GPT(GPTConfig.from_settings(n_layer=2, n_embd=16, n_head=2, vocab_size=64,
                                        monarch={"c_fc": 4, "c_proj": 4}))
    assert rows["monarch:4"][4:8] == ["4", "blocks", f"{16 * 80 // 4:,}", f"{model.get_num_params(False):,}"]
    assert "Kronecker" not in out and " 1x64 " in out  # the Kronecker shapes are listed too


def test_bench_times_a_monarch_mlp_beside_dense():
    import bench
    from monarch import MonarchLinear
    layers, x, _, label = bench.layer_pair("monarch4", "mlp", None, 4, "cpu")
    assert isinstance(layers["kron"].c_fc, MonarchLinear) and layers["kron"].c_fc.nblocks == 4
    assert layers["kron"](x).shape == layers["dense"](x).shape and "Monarch 4 blocks" in label


def test_the_model_card_names_monarch_matrices():
    import model_card
    config = tiny_gpt(monarch={"c_fc": 4}, kron={"attn_proj@1": (4, 4, 1)}).config
    assert "| 1 | dense | 4x4:1 | monarch:4 | dense |" in model_card.plan_rows(config)


def test_the_study_matches_a_monarch_family_to_a_budget_exactly():
    import study
    from kron_shapes import Plan
    from model import GPTConfig
    shape = GPTConfig(n_layer=4, n_head=4, n_embd=64, vocab_size=65, block_size=64)
    budget = round(0.5 * study.teacher_params_no_wpe(shape))
    variant = study.match_family("monarch", {"family": "monarch", "init": "act"}, budget, shape)
    # between the sizes of 8 and 8 blocks and of 8 and 4 in every block: the first three blocks of the larger
    assert variant["plan"] == {"monarch": {"c_fc": 8, "c_proj@0,1,2": 4, "c_proj@3": 8}}
    assert variant["init"] == "act"
    parts = Plan.from_settings(64, 4, 65, **variant["plan"]).count_parts(64)
    assert variant["budget"]["matched"] == sum(parts.values()) - parts["position"]


def test_a_monarch_budget_above_two_blocks_keeps_matrices_dense_not_one_block():
    import study
    from kron_shapes import Plan
    from model import GPTConfig
    shape = GPTConfig(n_layer=4, n_head=4, n_embd=64, vocab_size=65, block_size=64)
    budget = round(0.83 * study.teacher_params_no_wpe(shape))
    variant = study.match_family("monarch", {"family": "monarch", "init": "act"}, budget, shape)
    # a one-block Monarch matrix of c_fc has 64 * 320 weights, dense 64 * 256: the family keeps such matrices dense
    plan = Plan.from_settings(64, 4, 65, **variant["plan"])
    assert set(plan.monarch.values()) == {2} and 0 < len(plan.monarch) < 8
    parts = plan.count_parts(64)
    assert variant["budget"]["matched"] == sum(parts.values()) - parts["position"]
    assert abs(variant["budget"]["matched"] - budget) <= study.tolerance(budget, shape)
