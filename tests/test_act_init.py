"""init act (compress.fit_to_calibration) on tiny GPTs, against independent computations: each sublayer fitted on
the inputs the compressed blocks before it produce, an exact plan kept exact, the embedding weighted by token
frequencies, the output errors as explicit sums; and its calibration tokens refused before any model is loaded."""
import os

import numpy as np
import pytest
import torch
from conftest import kron_sum, run_main, snapshot, tiny_gpt, tiny_train_args, train_in_process, write_tokens

import compress as compress_module
import kron_decompose
from checkpoints import load_checkpoint, make_checkpoint, save_checkpoint
from common import UsageError, read_calibration
from compress import (balance_factors, compress, fit_to_calibration, frequency_kronecker, nearest_kronecker,
                      output_errors, whitened_kronecker)
from kron_shapes import Plan
from kronecker import KroneckerEmbedding, KroneckerLinear
from model import weight_of

VOCAB, BLOCK = 64, 8
MLP_PLAN = dict(dim_1=4, dim_2=16, factors=1)  # c_fc 16x64: A 4x16, B 4x4


def teacher():
    return tiny_gpt(seed=0, vocab_size=VOCAB, block_size=BLOCK)


def windows(seed, n=64):
    return torch.randint(VOCAB, (n, BLOCK), generator=torch.Generator().manual_seed(seed))


def plan_of(model, **settings):
    c = model.config
    return Plan.from_settings(c.n_embd, c.n_layer, c.vocab_size, **settings)


def logits_error(model, reference, ids):
    with torch.no_grad():
        return (model.eval()(ids)[0] - reference(ids)[0]).square().mean().item()


def test_act_beats_van_loan_on_held_out_inputs_and_improves_on_its_own_start():
    model, calibration, held_out = teacher(), windows(1), windows(2)
    plan = plan_of(model, **MLP_PLAN)
    vl = compress(model, plan, "vl")
    act = compress(model, plan, "vl")
    errors = fit_to_calibration(model, act, calibration, steps=150)
    assert set(errors) == {"h.0.mlp", "h.1.mlp"}
    assert all(end < start for start, end in errors.values())
    assert logits_error(act, model, held_out) < 0.5 * logits_error(vl, model, held_out)
    vl_outputs, act_outputs = output_errors(model, vl, held_out), output_errors(model, act, held_out)
    assert sum(act_outputs.values()) < sum(vl_outputs.values())


def test_each_block_is_fitted_on_the_inputs_of_the_blocks_already_compressed():
    """The error fit_to_calibration reports for block 1 is that of the student's MLP against the teacher's MLP on
    the student's own block-1 inputs (block 0 compressed), recomputed here by hand."""
    model, calibration = teacher(), windows(3)
    student = compress(model, plan_of(model, **MLP_PLAN), "vl")
    errors = fit_to_calibration(model, student, calibration, steps=50)
    student.eval()
    with torch.no_grad():
        x = student.transformer.wte(calibration) + student.transformer.wpe(torch.arange(BLOCK))
        x = student.transformer.h[0](x)
        x = x + student.transformer.h[1].attn(student.transformer.h[1].ln_1(x))
        inputs = student.transformer.h[1].ln_2(x)
        got, want = student.transformer.h[1].mlp(inputs), model.transformer.h[1].mlp(inputs)
    assert errors["h.1.mlp"][1] == pytest.approx(((got - want).square().sum() / want.square().sum()).item(), rel=1e-4)


def test_the_closed_form_start_takes_the_first_moment_tokens_and_the_errors_all_of_them(monkeypatch):
    """With MOMENT_TOKENS two windows, block 0's start (no Adam steps) is whitened_kronecker of the second moment
    of the first two windows' inputs to c_fc, and its reported error covers every window: both by hand."""
    monkeypatch.setattr(compress_module, "MOMENT_TOKENS", 2 * BLOCK)
    model, calibration = teacher(), windows(5)
    student = compress(model, plan_of(model, **MLP_PLAN), "vl")
    errors = fit_to_calibration(model, student, calibration, steps=0)
    model.eval(), student.eval()
    with torch.no_grad():
        block = model.transformer.h[0]
        x = model.transformer.wte(calibration) + model.transformer.wpe(torch.arange(BLOCK))
        inputs = block.ln_2(x + block.attn(block.ln_1(x)))  # attention is not factored: the teacher's inputs
        first = inputs[:2].reshape(-1, inputs.shape[-1]).double()
        A, B = whitened_kronecker(weight_of(block.mlp.c_fc), first.T @ first / len(first), 4, 16, 1)
        factored = student.transformer.h[0].mlp.c_fc
        assert torch.allclose(kron_sum(factored.A, factored.B).double(), kron_sum(A, B), atol=1e-5)
        other = whitened_kronecker(weight_of(block.mlp.c_fc), (inputs.reshape(-1, inputs.shape[-1]).T @
                                   inputs.reshape(-1, inputs.shape[-1]) / inputs[..., 0].numel()).double(), 4, 16, 1)
        assert not torch.allclose(kron_sum(*other), kron_sum(A, B), atol=1e-5)  # the subset made a difference
        got, want = student.transformer.h[0].mlp(inputs), block.mlp(inputs)
    assert errors["h.0.mlp"][0] == pytest.approx(((got - want).square().sum() / want.square().sum()).item(), rel=1e-4)


def test_attention_is_fitted_where_it_is_factored():
    model = teacher()
    student = compress(model, plan_of(model, kron={"c_attn@1": (4, 12, 1), "attn_proj@1": (4, 4, 1)}), "vl")
    errors = fit_to_calibration(model, student, windows(4), steps=50)
    assert set(errors) == {"h.1.attn"}
    start, end = errors["h.1.attn"]
    assert end < start


def test_balancing_equalises_each_factor_pairs_norms_and_keeps_w():
    torch.manual_seed(0)
    layer = KroneckerLinear(8, 12, a_rows=4, a_cols=3, factors=3)
    with torch.no_grad():
        layer.A.mul_(torch.tensor([50.0, 0.1, 3.0])[:, None, None])
        layer.A[2] = 0  # a vanished pair is left alone, not divided by zero
    before = kron_sum(layer.A.detach(), layer.B.detach())
    balance_factors(layer)
    assert torch.allclose(kron_sum(layer.A.detach(), layer.B.detach()), before, atol=1e-6)
    a_norms, b_norms = layer.A.flatten(1).norm(dim=1), layer.B.flatten(1).norm(dim=1)
    assert torch.allclose(a_norms[:2], b_norms[:2]) and a_norms[2] == 0 and torch.isfinite(layer.B).all()


def test_balancing_per_entry_equalises_the_factors_root_mean_squares():
    torch.manual_seed(0)
    layer = KroneckerLinear(8, 12, a_rows=8, a_cols=6, factors=2)  # A 8x6, B 1x2
    before = kron_sum(layer.A.detach(), layer.B.detach())
    balance_factors(layer, per_entry=True)
    assert torch.allclose(kron_sum(layer.A.detach(), layer.B.detach()), before, atol=1e-6)
    assert torch.allclose(layer.A.square().mean((1, 2)), layer.B.square().mean((1, 2)))


def test_adam_starts_from_factors_balanced_per_entry(monkeypatch):
    """What Adam is given: the closed form's factors rescaled to equal root mean squares (with a B of 4 entries
    and an A of 64 they would otherwise differ by far more than rounding)."""
    started = []

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, params, **settings):
            params = list(params)
            started.append({id(p): p.detach().clone() for p in params})
            super().__init__(params, **settings)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    model = teacher()
    student = compress(model, plan_of(model, **MLP_PLAN), "vl")
    fit_to_calibration(model, student, windows(6), steps=1)
    assert len(started) == model.config.n_layer
    starts = {key: value for start in started for key, value in start.items()}
    for module in student.modules():
        if isinstance(module, KroneckerLinear):
            A, B = starts[id(module.A)], starts[id(module.B)]
            assert torch.allclose(A.square().mean((1, 2)), B.square().mean((1, 2)), rtol=1e-4)


def test_act_leaves_every_factor_pair_balanced():
    model = teacher()
    student = compress(model, plan_of(model, **MLP_PLAN, kron={"wte": (16, 4, 2)}), "vl")
    fit_to_calibration(model, student, windows(4), steps=20)
    factored = [m for m in student.modules() if isinstance(m, (KroneckerLinear, KroneckerEmbedding))]
    assert len(factored) == 5
    for module in factored:
        assert torch.allclose(module.A.flatten(1).norm(dim=1), module.B.flatten(1).norm(dim=1), rtol=1e-5)


def test_a_plan_that_holds_w_exactly_stays_exact():
    """Four factors of A 4x16, B 4x4 span every 16x64 matrix: the start is exact, and Adam may not spoil it."""
    model, calibration = teacher(), windows(5)
    student = compress(model, plan_of(model, dim_1=4, dim_2=16, factors=16), "act", calibration=calibration,
                       act_steps=20)
    assert logits_error(student, model, windows(6)) < 1e-9


def test_the_embedding_weighting_is_the_closed_form_with_the_one_hot_inputs_second_moment():
    g = torch.Generator().manual_seed(7)
    W = torch.randn(12, 6, generator=g, dtype=torch.float64)
    counts = torch.randint(0, 50, (12,), generator=g).double()
    counts[3] = 0  # a row never seen
    want = whitened_kronecker(W, torch.diag(counts / counts.sum()), 4, 3, 2)
    got = frequency_kronecker(W, counts, 4, 3, 2)
    for g_, w_ in zip(got, want):
        assert torch.isfinite(g_).all()
    torch.testing.assert_close(torch.einsum("rij,rkl->ikjl", *got), torch.einsum("rij,rkl->ikjl", *want))


def test_a_factored_embedding_is_fitted_to_the_rows_the_calibration_uses():
    """Calibration windows of ids 0..7 only, each as often: their rows are A's rows 0 and 1 (x) B, so the weighted
    fit is Van Loan's of those 8 rows alone, which vl (fitting all 64) cannot match."""
    model = teacher()
    calibration = torch.arange(BLOCK).repeat(64, 1)
    plan = plan_of(model, kron={"wte": (16, 4, 1)})
    vl, act = compress(model, plan, "vl"), compress(model, plan, "act", calibration=calibration, act_steps=0)
    W = weight_of(model.transformer.wte).detach().double()[:8]
    rows_alone = ((W - kron_sum(*nearest_kronecker(W, 2, 4, 1))).square().sum() / W.square().sum()).item()
    act_error, vl_error = output_errors(model, act, calibration)["wte"], output_errors(model, vl, calibration)["wte"]
    assert act_error == pytest.approx(rows_alone, rel=1e-4)
    assert act_error < 0.9 * vl_error


def test_output_errors_are_the_explicit_relative_errors_of_each_matrixs_outputs():
    model, calibration = teacher(), windows(9, n=16)
    student = compress(model, plan_of(model, **MLP_PLAN), "vl")
    inputs = {}
    hooks = [module.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0].reshape(-1, 64)))
             for i, module in enumerate([model.transformer.h[1].mlp.c_proj])]
    with torch.no_grad():
        model(calibration)
    for hook in hooks:
        hook.remove()
    X = inputs[0].double()
    W, W_hat = weight_of(model.transformer.h[1].mlp.c_proj).double(), weight_of(student.transformer.h[1].mlp.c_proj)
    want = ((X @ (W - W_hat.double())).square().sum() / (X @ W).square().sum()).item()
    assert output_errors(model, student, calibration)["h.1.c_proj"] == pytest.approx(want, rel=1e-6)


def test_calibration_windows_are_seeded_and_come_from_the_file(tmp_path):
    tokens = np.arange(1000) % VOCAB
    write_tokens(tmp_path, tokens)
    path = os.path.join(tmp_path, "train.bin")
    got = read_calibration(path, 100, BLOCK, VOCAB)
    assert got.shape == (100 // BLOCK, BLOCK)
    np.testing.assert_array_equal(got, read_calibration(path, 100, BLOCK, VOCAB))
    for window in got:  # each a contiguous run of the file
        np.testing.assert_array_equal(window, (window[0] + np.arange(BLOCK)) % VOCAB)
    assert read_calibration(path, 5, BLOCK, VOCAB).shape == (1, 5)  # fewer tokens than a window: one short window


@pytest.mark.parametrize("case", ["missing", "short", "vocabulary"])
def test_bad_calibration_files_are_refused(tmp_path, case):
    write_tokens(tmp_path, np.arange(200) % (VOCAB + 10 if case == "vocabulary" else VOCAB))
    path = os.path.join(tmp_path, "absent.bin" if case == "missing" else "train.bin")
    with pytest.raises(UsageError, match={"missing": "no such token file", "short": "fewer calibration tokens",
                                          "vocabulary": "beyond the model's vocabulary"}[case]):
        read_calibration(path, 500 if case == "short" else 100, BLOCK, VOCAB)


def test_act_refuses_a_device_without_float64_before_any_work():
    model = teacher()
    with pytest.raises(ValueError, match="fits on cpu or cuda, not meta"):
        compress(model, plan_of(model, **MLP_PLAN), "act", calibration=windows(1), act_device="meta")


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("act")
    save_checkpoint(make_checkpoint(teacher()), folder / "teacher.pt")
    write_tokens(folder / "data", np.random.default_rng(0).integers(0, VOCAB, 3000))
    return folder


def test_kron_decompose_act_reports_output_errors_and_saves_them(teacher_files, tmp_path, capsys):
    common = [4, 16, 1, "--model", teacher_files / "teacher.pt", "--calibration", teacher_files / "data" / "train.bin",
              "--calibration_tokens", 512]
    outs = {}
    for init in ("vl", "act"):
        outs[init] = tmp_path / f"{init}.pt"
        status, out, _ = run_main(kron_decompose.main, common + ["--init", init, "--act_steps", 100, "--out",
                                                                  outs[init]], capsys)
        assert status == 0
        assert "output err" in out and "relative output error" in out
    infos = {init: load_checkpoint(path)[1]["init"] for init, path in outs.items()}
    assert infos["act"]["calibration"]["tokens"] == 512 and infos["act"]["act_steps"] == 100
    assert sum(infos["act"]["output_errors"].values()) < sum(infos["vl"]["output_errors"].values())


def test_kron_decompose_act_fits_on_the_device_auto_names(teacher_files, tmp_path, capsys):
    """--device auto resolves to this machine's default device once, for both the check and the fit."""
    out = tmp_path / "auto.pt"
    status, _, err = run_main(kron_decompose.main, [4, 16, 1, "--model", teacher_files / "teacher.pt", "--init", "act",
                                                    "--calibration", teacher_files / "data" / "train.bin",
                                                    "--calibration_tokens", 256, "--act_steps", 2, "--device", "auto",
                                                    "--out", out], capsys)
    assert status == 0, err
    assert load_checkpoint(out)[1]["init"]["method"] == "act"


@pytest.mark.parametrize("case", ["no calibration", "missing file", "device"])
def test_kron_decompose_refuses_act_without_usable_calibration_or_device_before_loading(teacher_files, tmp_path,
                                                                                        capsys, monkeypatch, case):
    import checkpoints
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: pytest.fail("the teacher was loaded"))
    extra = {"no calibration": [], "missing file": ["--calibration", tmp_path / "absent.bin"],
             "device": ["--calibration", teacher_files / "data" / "train.bin", "--device", "meta"]}[case]
    before = snapshot(tmp_path)
    status, out, err = run_main(kron_decompose.main, [4, 16, 1, "--model", teacher_files / "teacher.pt", "--init",
                                                      "act", "--out", tmp_path / "s.pt", *extra], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert {"no calibration": "--calibration FILE", "missing file": "no such token file",
            "device": "fits on cpu or cuda, not meta"}[case] in err
    assert snapshot(tmp_path) == before


def test_train_compresses_with_act_on_its_own_train_bin(teacher_files, tmp_path):
    args = tiny_train_args(teacher_files / "data", tmp_path / "run", n_embd=16, block_size=BLOCK,
                           init_from=teacher_files / "teacher.pt", init="act", calibration_tokens=256, act_steps=30,
                           max_iters=1, eval_interval=1, learning_rate=0, min_lr=0, **MLP_PLAN)
    train_in_process(args)
    model, checkpoint = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert checkpoint["config"]["init"] == "act"
    vl = compress(teacher(), plan_of(model, **MLP_PLAN), "vl")
    held_out = windows(10)
    assert logits_error(model, teacher(), held_out) < logits_error(vl, teacher(), held_out)


def test_train_refuses_a_calibration_too_short_before_loading(teacher_files, tmp_path, monkeypatch):
    import train
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    args = tiny_train_args(teacher_files / "data", tmp_path / "run", n_embd=16, block_size=BLOCK,
                           init_from=teacher_files / "teacher.pt", init="act", calibration_tokens=10 ** 6, **MLP_PLAN)
    with pytest.raises(UsageError, match="fewer calibration tokens"):
        train_in_process(args)
    assert not os.path.exists(tmp_path / "run" / "ckpt.pt")


def test_study_makes_act_students_calibrated_on_its_data_dir(teacher_files, tmp_path):
    import study
    variant = {"plan": MLP_PLAN, "init": "act", "act": {"calibration_tokens": 256, "act_steps": 5}}
    path = tmp_path / "init.pt"
    assert study.make_student(variant, teacher(), str(teacher_files / "teacher.pt"), path,
                              str(teacher_files / "data")) is None
    info = load_checkpoint(path)[1]["init"]
    assert (info["method"], info["calibration_tokens"], info["act_steps"]) == ("act", 256, 5)
    error = study.make_student(variant, teacher(), str(teacher_files / "teacher.pt"), tmp_path / "other.pt",
                               str(tmp_path / "no_data"))
    assert "no such token file" in error and not (tmp_path / "other.pt").exists()
