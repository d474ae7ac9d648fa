import os
import time

import pytest
import torch
from conftest import ROOT, kron_sum, run_main, run_script, tiny_gpt

from checkpoints import load_checkpoint, make_checkpoint, save_checkpoint
from compress import compress, nearest_kronecker, normalized_kronecker, pruned_kronecker
from kron_decompose import format_listing, main, mark_target, parse_size, teacher_name
from kron_shapes import Plan, check_shape, count_params, list_shapes
from model import GPT, GPTConfig, factorable_matrices, weight_of

SCRIPT = os.path.join(ROOT, "kron_decompose.py")


def compress_mlp(teacher, dim_1, dim_2, factors, init="vl"):
    """compress with the MLP shorthand's plan (c_fc's A dim_1 x dim_2, c_proj's its transpose) in every block."""
    c = teacher.config
    return compress(teacher, Plan.from_settings(c.n_embd, c.n_layer, c.vocab_size, dim_1=dim_1, dim_2=dim_2,
                                                 factors=factors), init)


def rearranged_by_blocks(W, a_rows, a_cols):
    """Van Loan's rearrangement written out block by block: row i*a_cols + j is block (i, j) flattened."""
    b_rows, b_cols = W.shape[0] // a_rows, W.shape[1] // a_cols
    return torch.stack([W[i * b_rows:(i + 1) * b_rows, j * b_cols:(j + 1) * b_cols].flatten()
                        for i in range(a_rows) for j in range(a_cols)])


def relative_errors(teacher, student):
    """{"h.0.c_fc": ||W - W_hat||_F / ||W||_F, ...} of every MLP matrix."""
    return {f"h.{layer}.{name}": ((weight_of(t) - weight_of(s)).norm() / weight_of(t).norm()).item()
            for (name, layer, t), (_, _, s) in zip(factorable_matrices(teacher), factorable_matrices(student))
            if name in ("c_fc", "c_proj")}


def assert_other_weights_copied(teacher, student):
    teacher_state = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        if not name.endswith((".mlp.c_fc.A", ".mlp.c_fc.B", ".mlp.c_proj.A", ".mlp.c_proj.B")):
            assert torch.equal(tensor, teacher_state[name]), name


# --- Van Loan ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a_shape,b_shape,r", [((6, 8), (4, 3), 1), ((6, 8), (4, 3), 3), ((2, 12), (8, 1), 2)])
def test_vl_recovers_exact_kronecker_sum(a_shape, b_shape, r):
    g = torch.Generator().manual_seed(r)
    A0, B0 = torch.randn(r, *a_shape, generator=g), torch.randn(r, *b_shape, generator=g)
    W = kron_sum(A0, B0)
    A, B = nearest_kronecker(W, *a_shape, r)
    assert A.shape == (r, *a_shape) and B.shape == (r, *b_shape) and A.dtype == W.dtype
    torch.testing.assert_close(kron_sum(A, B), W, rtol=0, atol=1e-5)


def test_vl_error_is_the_singular_value_tail_and_falls_with_factors():
    W = torch.randn(24, 36, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a_rows, a_cols = 4, 6  # B is 6x6; the rearranged matrix is 24x36, so rank 24
    s = torch.linalg.svdvals(rearranged_by_blocks(W, a_rows, a_cols))
    errors = []
    for factors in range(1, 25):
        A, B = nearest_kronecker(W, a_rows, a_cols, factors)
        error = ((W - kron_sum(A, B)).norm() / W.norm()).item()
        tail = (s[factors:].square().sum().sqrt() / s.square().sum().sqrt()).item()
        assert error == pytest.approx(tail, abs=1e-5)
        errors.append(error)
    assert all(later < earlier for earlier, later in zip(errors, errors[1:-1]))
    assert errors[-1] < 1e-10  # full rank: exact


def test_vl_signs_are_fixed_and_results_deterministic():
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    A, B = nearest_kronecker(W, 8, 16, 5)
    for r in range(5):
        flat = A[r].flatten()
        assert flat[flat.abs().argmax()] > 0
    A2, B2 = nearest_kronecker(W.clone(), 8, 16, 5)
    assert torch.equal(A, A2) and torch.equal(B, B2)
    # each A_r is sqrt(sigma_r) times a unit vector, and so is each B_r: ||A_r|| = ||B_r||
    torch.testing.assert_close(A.flatten(1).norm(dim=1), B.flatten(1).norm(dim=1))


def test_vl_norm_matches_the_norm_of_w_along_vl():
    W = torch.randn(24, 96, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for factors in (1, 3):
        A, B = nearest_kronecker(W, 6, 12, factors)
        An, Bn = normalized_kronecker(W, 6, 12, factors)
        W_vl, W_norm = kron_sum(A, B), kron_sum(An, Bn)
        assert W_norm.norm().item() == pytest.approx(W.norm().item(), rel=1e-10)
        assert W_vl.norm().item() < 0.9 * W.norm().item()  # so the rescaling did something
        c = W.norm() / W_vl.norm()
        torch.testing.assert_close(W_norm, c * W_vl)
        s = torch.linalg.svdvals(rearranged_by_blocks(W, 6, 12))  # the documented closed form of c
        assert c.item() == pytest.approx((s.square().sum() / s[:factors].square().sum()).sqrt().item())


# --- pruning ---------------------------------------------------------------------------------------------

def test_prune_matches_the_papers_95m_init():
    W_fc = torch.randn(768, 3072, generator=torch.Generator().manual_seed(3))
    A, B = pruned_kronecker(W_fc, 384, 3072, 1)
    assert torch.equal(A[0], W_fc[0::2, :]) and torch.equal(B[0], torch.tensor([[1.0], [0.0]]))
    W_proj = W_fc.T.contiguous()
    A, B = pruned_kronecker(W_proj, 3072, 384, 1)
    assert torch.equal(A[0], W_proj[:, 0::2]) and torch.equal(B[0], torch.tensor([[1.0, 0.0]]))


@pytest.mark.parametrize("dim_1,dim_2,k,axis", [(8, 64, 2, "embedding"), (16, 16, 4, "hidden"),
                                                (16, 32, 2, "hidden"), (4, 64, 4, "embedding")])
def test_prune_keeps_every_kth_row_or_column_and_zeros_the_rest(dim_1, dim_2, k, axis):
    teacher = tiny_gpt()
    for factors in (1, 2, k):
        student = compress_mlp(teacher, dim_1, dim_2, factors, init="prune")
        assert_other_weights_copied(teacher, student)
        for t_block, s_block in zip(teacher.transformer.h, student.transformer.h):
            W_fc, W_proj = t_block.mlp.c_fc.weight.T, t_block.mlp.c_proj.weight.T  # x @ W orientation
            kept = torch.arange(W_fc.shape[0 if axis == "embedding" else 1]) % k < factors
            if axis == "embedding":  # c_fc keeps input rows, c_proj output columns
                want_fc, want_proj = W_fc * kept[:, None], W_proj * kept[None, :]
            else:  # both keep the same hidden units: c_fc's output columns, c_proj's input rows
                want_fc, want_proj = W_fc * kept[None, :], W_proj * kept[:, None]
            assert torch.equal(s_block.mlp.c_fc.dense_weight(), want_fc)
            assert torch.equal(s_block.mlp.c_proj.dense_weight(), want_proj)
        errors = relative_errors(teacher, student)
        assert (max(errors.values()) == 0) == (factors == k)


def test_prune_refuses_other_shapes_and_says_which_work():
    with pytest.raises(ValueError, match=r"prune needs .*dim_1=16 .* or dim_2=64"):
        compress_mlp(tiny_gpt(), 8, 32, 1, init="prune")
    with pytest.raises(ValueError, match="single row or column"):
        pruned_kronecker(torch.randn(16, 64), 8, 32, 1)


# --- whole models ----------------------------------------------------------------------------------------

def test_full_rank_compression_of_hugging_face_gpt2_gives_its_logits(hf_gpt2_dir):
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel.from_pretrained(hf_gpt2_dir).eval()  # n_embd 64: A 8x16, B 8x16, rank 128
    teacher = GPT.from_pretrained(hf_gpt2_dir)
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(idx).logits
        for init in ("vl", "vl_norm"):
            student = compress_mlp(teacher, 8, 16, 128, init=init).eval()
            assert student.config.plan.shape("c_fc", 1) == (8, 16, 128)
            assert student.config.block_size == teacher.config.block_size
            assert max(relative_errors(teacher, student).values()) < 1e-6
            torch.testing.assert_close(student(idx)[0], want, rtol=0, atol=1e-4)


def test_kronecker_teacher_is_decomposed_through_its_weights():
    teacher = compress_mlp(tiny_gpt(), 4, 32, 2, init="random")  # a rank-2 Kronecker model
    same = compress_mlp(teacher, 4, 32, 2)
    other = compress_mlp(teacher, 8, 16, 1)
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(same(idx)[0], teacher(idx)[0], rtol=0, atol=1e-5)
    assert max(relative_errors(teacher, same).values()) < 1e-5
    assert min(relative_errors(teacher, other).values()) > 0.01
    assert_other_weights_copied(teacher, other)


def test_random_init_keeps_other_weights_and_has_scratch_std():
    teacher = tiny_gpt(n_embd=64, n_head=4)
    student = compress_mlp(teacher, 8, 16, 2, init="random")
    assert_other_weights_copied(teacher, student)
    W = student.transformer.h[0].mlp.c_fc.dense_weight()
    assert W.std().item() == pytest.approx(0.02, rel=0.15)


@pytest.mark.parametrize("args,message", [
    ((7, 64, 1), r"dim_1=7 does not divide n_embd=16; nearest valid dim_1: 4 or 8"),
    ((16, 48, 1), r"dim_2=48 does not divide 4\*n_embd=64; nearest valid dim_2: 32 or 64"),
    ((0, 64, 1), r"nearest valid dim_1: 1 \(all: 1, 2, 4, 8, 16\)"),
    ((8, 16, 9), r"factors=9 must be between 1 and 8"),
    ((8, 16, 0), r"factors=0 must be between 1 and 8"),
])
def test_bad_shapes_name_the_nearest_valid_values(args, message):
    with pytest.raises(ValueError, match=message):
        check_shape(16, *args)


# --- listing ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,bias", [(None, True), ((8, 16, 1), True), ((4, 64, 2), True), ((2, 8, 3), False),
                                        ((16, 1, 1), False)])
def test_parameter_arithmetic_matches_the_model(shape, bias):
    shorthand = dict(zip(("dim_1", "dim_2", "factors"), shape)) if shape else {}
    model = GPT(GPTConfig.from_settings(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=64, bias=bias,
                                        **shorthand))
    want = model.get_num_params(non_embedding=False), model.get_num_params()
    assert count_params(16, n_layer=2, vocab_size=64, block_size=8, bias=bias, **shorthand) == want


def test_listing_has_the_papers_shapes_and_is_fast():
    t0 = time.perf_counter()
    rows = list_shapes(768, (1, 2, 4))
    text = format_listing(rows, 768, 12, parse_size("81M"))
    seconds = time.perf_counter() - t0
    assert seconds < 5  # arithmetic (~0.1 s alone): building even one GPT-2 per row would take minutes
    by_shape = {(r["dim_1"], r["dim_2"], r["factors"]): r for r in rows}
    # the model issue's counts (tests/test_model.py builds these models)
    assert (by_shape[768, 768, 1]["params"], by_shape[768, 768, 1]["params_no_wpe"]) == (81_972_576, 81_186_144)
    assert (by_shape[384, 3072, 1]["params"], by_shape[384, 3072, 1]["params_no_wpe"]) == (96_128_304, 95_341_872)
    assert by_shape[768, 768, 1]["matrix_flops"] == pytest.approx(0.2513, abs=1e-4)
    # the 67M class, the smallest factorisations: 123,653,376 - 12 * 2 * 768 * 3072 + 12 * 2 * 3072 parameters
    assert rows[0]["params_no_wpe"] == by_shape[24, 64, 1]["params_no_wpe"] == 67_104_000
    assert rows.index(by_shape[24, 64, 1]) in mark_target(rows, 67e6)
    assert len(rows) == len(by_shape) and all(r["factors"] <= 4 for r in rows)
    assert (768, 768, 5) not in by_shape and (768, 768, 4) in by_shape  # rank limit 4
    assert [r["params"] for r in rows] == sorted(r["params"] for r in rows)
    marked = [line.split() for line in text.splitlines() if line.endswith("<- 81M")]
    assert ["768", "768", "1"] in [line[:3] for line in marked] and len(marked) == 6  # same count, 6 shapes
    assert {line[7] for line in marked} == {"81,186,144"}


def test_cli_offers_every_initialisation_of_the_model():
    import kron_decompose
    from compress import INITS
    from common import INIT_NAMES
    assert INIT_NAMES == tuple(INITS)  # the names live torch-free, so that --list needs no torch
    init_action = next(a for a in kron_decompose.build_parser()._actions if a.dest == "init")
    assert tuple(init_action.choices) == INIT_NAMES


def test_list_command_never_imports_torch():
    """Importing torch takes seconds; the listing must answer at once."""
    code = ("import sys, time; t0 = time.perf_counter(); import kron_decompose; "
            "kron_decompose.main(['--list', '--factors', '1,2,4']); "
            "print('torch' in sys.modules, time.perf_counter() - t0, file=sys.stderr)")
    result = run_script("-c", code, timeout=60)
    assert result.returncode == 0, result.stderr
    torch_imported, seconds = result.stderr.split()
    assert torch_imported == "False" and float(seconds) < 1.0
    assert "768   768       1" in result.stdout


def test_mark_target_picks_the_closest_with_ties():
    rows = [{"params_no_wpe": p} for p in (50, 70, 90, 90)]
    assert mark_target(rows, 80) == [1, 2, 3]
    assert mark_target(rows, 89) == [2, 3]
    assert mark_target(rows, 10) == [0]
    assert parse_size("81M") == 81_000_000 and parse_size("95.3m") == 95_300_000 and parse_size("1200") == 1200


# --- command line ----------------------------------------------------------------------------------------

def test_cli_writes_a_checkpoint_from_hugging_face_and_refuses_garbage(tmp_path, hf_gpt2_dir, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    bad_rc, _, bad_err = run_main(main, ["8", "16", "1", "--model", garbage, "--out", tmp_path / "x.pt"], capsys)
    assert bad_rc == 2 and "Traceback" not in bad_err
    assert bad_err.startswith("kron_decompose.py: error: cannot load --model") and len(bad_err.splitlines()) == 1
    assert "not a readable krony checkpoint" in bad_err and not (tmp_path / "x.pt").exists()

    result = run_script(SCRIPT, "8", "16", "4", "--model", hf_gpt2_dir, cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    path = tmp_path / "checks" / f"krony_{teacher_name(hf_gpt2_dir)}_8_16_4_vl.pt"  # the default --out
    assert (f"next: python train.py config/train_gpt2.py --init_from={os.path.join('checks', path.name)} "
            f"--out_dir={os.path.join('checks', path.stem)} --dim_1=8 --dim_2=16 --factors=4") in out
    student, ckpt = load_checkpoint(str(path))
    teacher = GPT.from_pretrained(hf_gpt2_dir)
    mlp_plan = {"c_fc": [8, 16, 4], "c_proj": [16, 8, 4]}  # c_proj's A is c_fc's transposed
    assert ckpt["model_args"] == {**ckpt["model_args"], "kron": mlp_plan, "n_embd": 64}
    assert GPTConfig.from_args(ckpt["model_args"]).plan.shapes == \
        {(name, block): tuple(shape) for name, shape in mlp_plan.items() for block in (0, 1)}
    info = ckpt["init"]
    assert (info["teacher"], info["method"], info["kron"]) == (hf_gpt2_dir, "vl", mlp_plan)
    assert info["params"] == student.get_num_params(False) and info["teacher_params"] == teacher.get_num_params(False)
    errors = relative_errors(teacher, student)
    assert info["errors"].keys() == errors.keys() == {"h.0.c_fc", "h.0.c_proj", "h.1.c_fc", "h.1.c_proj"}
    for name, error in errors.items():
        assert 0.5 < error < 1 and info["errors"][name] == pytest.approx(error, abs=1e-6)
        layer, matrix = name.split(".")[1], name.split(".")[2]
        row = next(line.split() for line in out.splitlines() if line.split()[:1] == [layer])
        assert float(row[1 if matrix == "c_fc" else 2]) == pytest.approx(error, abs=1e-4)
    assert f"{student.get_num_params(False):,} parameters, {student.get_num_params():,} without wpe" in out
    assert f"{teacher.get_num_params(False):,} parameters" in out


@pytest.fixture
def kron_checkpoint(tmp_path):
    """One of our checkpoints holding a Kronecker model (n_embd 16), as train.py would write it."""
    path = str(tmp_path / "kron.pt")
    model = compress_mlp(tiny_gpt(), 4, 32, 2, init="random")
    save_checkpoint(make_checkpoint(model, iter_num=10), path)
    return path


def test_cli_refactors_our_kronecker_checkpoint(tmp_path, kron_checkpoint, capsys):
    out_path = str(tmp_path / "out" / "re.pt")
    status, out, err = run_main(main, ["4", "32", "2", "--model", kron_checkpoint, "--init", "vl_norm",
                                       "--out", out_path], capsys)
    assert status == 0, err
    assert "teacher " + kron_checkpoint + " (Kronecker)" in out and f"--init_from={out_path}" in out
    student, ckpt = load_checkpoint(out_path)
    teacher, _ = load_checkpoint(kron_checkpoint)
    assert ckpt["init"]["method"] == "vl_norm" and max(ckpt["init"]["errors"].values()) < 1e-5
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(student(idx)[0], teacher(idx)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("argv,message", [
    (["7", "32", "1"], "dim_1=7 does not divide n_embd=16; nearest valid dim_1: 4 or 8"),
    (["4", "33", "1"], "dim_2=33 does not divide 4*n_embd=64; nearest valid dim_2: 32 or 64"),
    (["4", "32", "9"], "factors=9 must be between 1 and 8"),
    (["4", "32", "1", "--init", "prune"], "init=prune needs B to be a single row or column"),
    (["4", "32"], "give DIM_1 DIM_2 FACTORS"),
    (["4", "32", "1", "--list"], "--list takes no DIM_1 DIM_2 FACTORS"),
    (["--list", "--target", "big"], "--target 'big' is not a size"),
    (["--list", "--factors", "1,x"], "--factors '1,x' is not a comma-separated list"),
    (["4", "32", "1", "--model", "{tmp}/missing.pt"], "cannot load --model"),
])
def test_cli_bad_input_exits_2_with_one_line_and_no_file(tmp_path, kron_checkpoint, capsys, argv, message):
    out_path = tmp_path / "bad.pt"
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--model" not in argv:
        argv += ["--model", kron_checkpoint]
    status, out, err = run_main(main, argv + ["--out", out_path], capsys)
    assert status == 2
    assert err.startswith("kron_decompose.py: error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not list(tmp_path.glob("bad.pt*"))


def test_cli_list_marks_the_target(capsys):
    status, out, err = run_main(main, ["--list", "--factors", "1,2", "--target", "95M"], capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert any(line.split()[:3] == ["384", "3072", "1"] and "96,128,304" in line and line.endswith("<- 95M")
               for line in lines)
    assert lines[-1].startswith(f"{len(list_shapes(768, (1, 2)))} valid shapes")
