"""The frontier's families: rank-r factors are the truncated SVD, --keep_blocks copies blocks exactly, and study.py
matches each family to a budget within 3% or refuses it in one line."""
import numpy as np
import pytest
import torch
from conftest import run_main, tiny_gpt

import kron_decompose
import study
from checkpoints import load_model, make_checkpoint, read_checkpoint, save_checkpoint
from compress import compress, keep_blocks, materialize
from kron_shapes import Plan, parse_rank
from model import GPTConfig


def test_rank_r_vl_is_numpys_truncated_svd_with_r_times_in_plus_out_parameters():
    teacher = tiny_gpt(n_layer=2, n_embd=16)
    plan = Plan.from_settings(16, 2, 64, rank={"c_fc": 5, "c_proj@1": 3})
    assert plan == Plan.from_settings(16, 2, 64, kron={"c_fc": (16, 1, 5), "c_proj@1": (64, 1, 3)})
    student = materialize(compress(teacher, plan, "vl"))
    for block, name, r in ((0, "c_fc", 5), (1, "c_fc", 5), (1, "c_proj", 3)):
        W = getattr(teacher.transformer.h[block].mlp, name).weight.detach().double().numpy().T  # (in, out)
        U, S, Vt = np.linalg.svd(W, full_matrices=False)
        truncated = (U[:, :r] * S[:r]) @ Vt[:r]
        ours = getattr(student.transformer.h[block].mlp, name).weight.detach().double().numpy().T
        np.testing.assert_allclose(ours, truncated, atol=1e-5)
    parts = plan.count_parts(8, True)
    dense_mlp = Plan(16, 2, 64).count_parts(8, True)["mlp"]
    assert dense_mlp - parts["mlp"] == 2 * 16 * 64 - 2 * 5 * (16 + 64) + 16 * 64 - 3 * (64 + 16)
    assert parse_rank(["c_fc=5", "c_proj@1=3"]) == {"c_fc": 5, "c_proj@1": 3}
    with pytest.raises(ValueError, match="NAME=RANK"):
        parse_rank(["c_fc=5x"])


def test_cli_rank_writes_the_truncated_svd(tmp_path, capsys):
    teacher = tiny_gpt(n_layer=2, n_embd=16)
    save_checkpoint(make_checkpoint(teacher), tmp_path / "t.pt")
    status, out, _ = run_main(kron_decompose.main, ["--model", tmp_path / "t.pt", "--rank", "c_fc=4",
                                                    "--rank", "c_proj=4", "--out", tmp_path / "s.pt"], capsys)
    assert status == 0, out
    student = load_model(str(tmp_path / "s.pt"))
    assert str(student.config.plan) == "c_fc=16x1:4 c_proj=64x1:4"
    W = teacher.transformer.h[0].mlp.c_fc.weight.detach().double().numpy().T
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    ours = materialize(student).transformer.h[0].mlp.c_fc.weight.detach().double().numpy().T
    np.testing.assert_allclose(ours, (U[:, :4] * S[:4]) @ Vt[:4], atol=1e-5)


def test_keep_blocks_copies_the_kept_blocks_bit_exactly_renumbered(tmp_path, capsys):
    teacher = tiny_gpt(n_layer=4, n_embd=16)
    save_checkpoint(make_checkpoint(teacher), tmp_path / "t.pt")
    status, out, _ = run_main(kron_decompose.main, ["--model", tmp_path / "t.pt", "--keep_blocks", "3,0",
                                                    "--out", tmp_path / "s.pt"], capsys)
    assert status == 0, out
    student = load_model(str(tmp_path / "s.pt"))
    assert student.config.n_layer == 2 and student.config.teacher_blocks == [3, 0]
    ours, theirs = student.state_dict(), teacher.state_dict()
    for key, tensor in ours.items():
        source = key.replace("transformer.h.0.", "transformer.h.3.").replace("transformer.h.1.", "transformer.h.0.")
        assert torch.equal(tensor, theirs[source]), key
    assert read_checkpoint(str(tmp_path / "s.pt"))["init"]["keep_blocks"] == [3, 0]
    # a student of the student records the first teacher's blocks; a plan factors the kept model
    again = keep_blocks(student, [1])
    assert again.config.teacher_blocks == [0]
    status, out, _ = run_main(kron_decompose.main, ["16", "16", "1", "--model", tmp_path / "t.pt", "--keep_blocks",
                                                    "0,2", "--out", tmp_path / "k.pt"], capsys)
    factored = load_model(str(tmp_path / "k.pt"))
    assert status == 0 and factored.config.n_layer == 2 and factored.config.plan.blocks == (0, 1)
    assert torch.equal(factored.transformer.h[1].attn.c_attn.weight, teacher.transformer.h[2].attn.c_attn.weight)


@pytest.mark.parametrize("blocks, message", [("0,4", "block 4 is out of range; the model's blocks are 0 to 3"),
                                             ("1,1", "names a block twice"), ("", "is empty"),
                                             ("0,x", "is not a list of block indices")])
def test_bad_keep_blocks_is_one_line_before_any_weights_load(tmp_path, capsys, monkeypatch, blocks, message):
    save_checkpoint(make_checkpoint(tiny_gpt(n_layer=4, n_embd=16)), tmp_path / "t.pt")
    monkeypatch.setattr("checkpoints.load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    status, out, err = run_main(kron_decompose.main, ["--model", tmp_path / "t.pt", "--keep_blocks", blocks,
                                                      "--out", tmp_path / "s.pt"], capsys)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.pt").exists()


SHAPE = GPTConfig(n_layer=6, n_head=4, n_embd=128, vocab_size=65, block_size=128)


@pytest.mark.parametrize("fraction", [0.5, 0.67, 0.83])
@pytest.mark.parametrize("spec", [{"family": "dense"}, {"family": "dense", "vary": "depth"},
                                  {"family": "lowrank"}, {"family": "drop_blocks"}])
def test_each_family_is_matched_within_3_percent_of_its_budget(fraction, spec):
    budget = round(fraction * study.teacher_params_no_wpe(SHAPE))
    variant = study.match_family("f", spec, budget, SHAPE)
    assert variant["budget"] == {"params_no_wpe": budget, "matched": variant["budget"]["matched"]}
    if "dense" in variant:
        config = GPTConfig(block_size=128, vocab_size=65, **variant["dense"])
    elif "keep_blocks" in variant:
        config = GPTConfig(n_layer=len(variant["keep_blocks"]), n_head=4, n_embd=128, vocab_size=65, block_size=128)
        spread = {3: [0, 2, 4], 4: [0, 1, 3, 4], 5: [0, 1, 2, 3, 4]}
        assert variant["keep_blocks"] == spread[len(variant["keep_blocks"])]
    else:
        config = GPTConfig.from_settings(n_layer=6, n_head=4, n_embd=128, vocab_size=65, block_size=128,
                                         **variant["plan"])
    parts = config.plan.count_parts(128, True)
    params = sum(parts.values()) - parts["position"]
    assert params == variant["budget"]["matched"] and abs(params - budget) <= 0.03 * budget


def test_kronecker_candidates_are_within_3_percent_and_none_is_an_outer_product():
    budget = round(0.5 * study.teacher_params_no_wpe(SHAPE))
    variant = study.match_family("k", {"family": "kronecker", "init": "vl"}, budget, SHAPE)
    assert variant["candidates"] and variant["init"] == "vl"
    for dim_1, dim_2, factors in variant["candidates"]:
        config = GPTConfig.from_settings(n_layer=6, n_head=4, n_embd=128, vocab_size=65, block_size=128,
                                         dim_1=dim_1, dim_2=dim_2, factors=factors)
        parts = config.plan.count_parts(128, True)
        assert abs(sum(parts.values()) - parts["position"] - budget) <= 0.03 * budget
        assert (dim_1, dim_2) not in ((128, 1), (1, 512))


def test_a_budget_a_family_cannot_meet_is_refused_in_one_line():
    budget = round(0.95 * study.teacher_params_no_wpe(SHAPE))  # between keeping 5 and all 6 blocks
    with pytest.raises(study.UsageError, match=r"^family 'drop' \(drop_blocks\) has no variant within [\d,]+ "
                                               r"parameters \(3% of those outside wte\) of the budget of [\d,]+ "
                                               r"parameters without wpe; its nearest size is"):
        study.match_family("drop", {"family": "drop_blocks"}, budget, SHAPE)
    with pytest.raises(study.UsageError, match="is not one of kronecker, lowrank, drop_blocks, dense"):
        study.match_family("x", {"family": "svd"}, budget, SHAPE)
