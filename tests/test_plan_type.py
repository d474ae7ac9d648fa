"""The Plan type (kron_shapes.Plan): every written form of a plan reads to the same Plan, a per-block plan builds,
counts and decomposes block by block, and a bad per-block plan is refused naming its block and its matrix."""
import ast
import json
import os
import re

import pytest
import torch
import torch.nn as nn
from conftest import kron_sum, run_main, tiny_gpt

import kron_decompose
from checkpoints import load_checkpoint, make_checkpoint, read_hf_config, save_checkpoint
from compress import nearest_kronecker
from kron_shapes import Plan, parse_kron
from model import GPT, GPTConfig

# c_fc is 16x64, c_proj 64x16, c_attn 16x48, attn_proj 16x16, wte 64x16
N_EMBD, N_LAYER, VOCAB = 16, 4, 64
MODEL = dict(block_size=8, vocab_size=VOCAB, n_layer=N_LAYER, n_head=2, n_embd=N_EMBD)


def mlp_in(blocks, factors=1):
    """The shapes of the MLP shorthand dim_1=4 dim_2=8, written out: c_fc's A 4x8, c_proj's 8x4, in `blocks`."""
    return {**{("c_fc", b): (4, 8, factors) for b in blocks}, **{("c_proj", b): (8, 4, factors) for b in blocks}}


# block 1's c_fc with 2 factors, the other blocks' with 1; everything else dense
PER_BLOCK = {("c_fc", 0): (4, 8, 1), ("c_fc", 1): (4, 8, 2), ("c_fc", 2): (4, 8, 1), ("c_fc", 3): (4, 8, 1)}


def plan(shapes):
    return Plan(N_EMBD, N_LAYER, VOCAB, shapes)


def from_settings(**settings):
    return Plan.from_settings(N_EMBD, N_LAYER, VOCAB, **settings)


# --- every written form, one Plan -----------------------------------------------------------------------

MLP = {"c_fc": (4, 8, 1), "c_proj": (8, 4, 1)}


@pytest.mark.parametrize("settings,shapes", [
    (dict(dim_1=4, dim_2=8, factors=1), mlp_in(range(4))),
    (dict(kron=MLP), mlp_in(range(4))),
    (dict(kron={"c_fc@0,1,2,3": (4, 8, 1), "c_proj@3,2,1,0": (8, 4, 1)}), mlp_in(range(4))),
    (dict(dim_1=4, dim_2=8, factors=1, kron_layers="odd"), mlp_in((1, 3))),
    (dict(kron=MLP, kron_layers="odd"), mlp_in((1, 3))),
    (dict(kron=MLP, kron_layers=(1, 3)), mlp_in((1, 3))),
    (dict(kron={"c_fc@1,3": (4, 8, 1), "c_proj@1,3": (8, 4, 1)}), mlp_in((1, 3))),
    (dict(kron={"c_fc@3": [4, 8, 1], "c_fc@1": [4, 8, 1], "c_proj@1,3": [8, 4, 1]}), mlp_in((1, 3))),  # JSON lists
    (dict(dim_1=4, dim_2=8, factors=1, kron={"c_fc": [4, 8, 1]}, kron_layers="1,3"), mlp_in((1, 3))),  # agreeing
    (dict(kron=MLP, kron_layers="even"), mlp_in((0, 2))),
    (dict(kron=MLP, kron_layers="0,2"), mlp_in((0, 2))),
    (dict(kron=MLP, kron_layers=[0, 2]), mlp_in((0, 2))),
    (dict(dim_1=4, dim_2=8, factors=1, kron_layers="2,0"), mlp_in((0, 2))),
    (dict(kron={"c_fc": (4, 8, 1), "c_fc@1": (4, 8, 2)}), PER_BLOCK),  # NAME@BLOCKS overrides NAME in its blocks
    (dict(kron={"c_fc@1": (4, 8, 2), "c_fc": (4, 8, 1)}), PER_BLOCK),  # in any order
    (dict(kron={"c_fc@0,2,3": (4, 8, 1), "c_fc@1": (4, 8, 2)}), PER_BLOCK),
    (dict(kron={"c_fc": (4, 8, 1), "c_fc@1": (4, 8, 2)}, kron_layers="0,2,3"), PER_BLOCK),
    (dict(kron={"c_fc": (4, 8, 1), "c_fc@0": (4, 8, 2)}, kron_layers="odd"),  # @BLOCKS outside kron_layers
     {("c_fc", 0): (4, 8, 2), ("c_fc", 1): (4, 8, 1), ("c_fc", 3): (4, 8, 1)}),
    (dict(kron={"wte": (16, 8, 1)}, kron_layers="odd"), {("wte", None): (16, 8, 1)}),  # wte has no block
    (dict(), {}),
])
def test_every_written_form_gives_the_same_plan(settings, shapes):
    assert from_settings(**settings) == plan(shapes)
    assert GPTConfig.from_settings(**MODEL, **settings).plan == plan(shapes)


PLANS = [
    plan(mlp_in(range(4))),
    plan(mlp_in((1, 3))),
    plan(PER_BLOCK),
    plan({("wte", None): (16, 8, 1), ("c_attn", 2): (4, 12, 3), ("attn_proj", 0): (4, 4, 1),
          ("attn_proj", 3): (2, 8, 2), **mlp_in((0,), factors=2)}),
    plan({("wte", None): (64, 16, 1)}),
]


@pytest.mark.parametrize("p", PLANS, ids=str)
def test_every_written_form_reads_back_to_the_plan(p):
    assert from_settings(kron=parse_kron(str(p).split())) == p  # the --kron syntax
    assert from_settings(kron=p.to_kron()) == p
    assert from_settings(kron=json.loads(json.dumps(p.to_kron()))) == p  # a config.json or a JSON log
    config = GPTConfig(**MODEL).with_plan(p)
    for args in (config.to_args(), json.loads(json.dumps(config.to_args()))):
        assert GPTConfig.from_args(args) == config and GPTConfig.from_args(args).plan == p


def test_the_written_form_is_the_documented_syntax():
    assert str(plan(mlp_in(range(4)))) == "c_fc=4x8:1 c_proj=8x4:1"
    assert plan(mlp_in(range(4))).to_kron() == {"c_fc": [4, 8, 1], "c_proj": [8, 4, 1]}
    assert str(plan(mlp_in((1, 3)))) == "c_fc@1,3=4x8:1 c_proj@1,3=8x4:1"
    assert str(plan(PER_BLOCK)) == "c_fc@0,2,3=4x8:1 c_fc@1=4x8:2"
    assert str(plan({**PER_BLOCK, ("wte", None): (16, 8, 1)})) == "wte=16x8:1 c_fc@0,2,3=4x8:1 c_fc@1=4x8:2"
    assert str(plan({})) == "dense" and not plan({}) and plan(PER_BLOCK)
    assert repr(plan(PER_BLOCK)) == "Plan(16, 4, 64, 'c_fc@0,2,3=4x8:1 c_fc@1=4x8:2')"
    p = plan({**PER_BLOCK, **mlp_in((3,)), ("wte", None): (16, 8, 1)})
    assert p.names == ("wte", "c_fc", "c_proj") and p.blocks == (0, 1, 2, 3)
    assert p.shape("c_fc", 1) == (4, 8, 2) and p.shape("c_proj", 3) == (8, 4, 1) and p.shape("c_proj", 0) is None
    assert p.shape("wte") == (16, 8, 1) and p.places("c_proj") == [(3, (8, 4, 1))]


# --- plans written before they were per block ------------------------------------------------------------

OLD_MODEL_ARGS = dict(**MODEL, dropout=0.0, bias=True, dim_1=None, dim_2=None, factors=None, kron=None,
                      kron_layers="all")  # GPTConfig's fields before plans were per block


@pytest.mark.parametrize("old_plan,shapes", [
    (dict(dim_1=4, dim_2=8, factors=1), mlp_in(range(4))),
    (dict(dim_1=4, dim_2=8, factors=1, kron={"attn_proj": (4, 4, 2)}, kron_layers="odd"),
     {**mlp_in((1, 3)), ("attn_proj", 1): (4, 4, 2), ("attn_proj", 3): (4, 4, 2)}),
    (dict(kron={"c_fc": (4, 8, 1), "wte": (16, 8, 1)}, kron_layers=(0, 2)),
     {("wte", None): (16, 8, 1), ("c_fc", 0): (4, 8, 1), ("c_fc", 2): (4, 8, 1)}),
    (dict(kron={"wte": (16, 8, 1)}), {("wte", None): (16, 8, 1)}),
    (dict(kron_layers="odd"), {}),
])
def test_an_old_checkpoint_loads_with_its_plan(tmp_path, old_plan, shapes):
    want = plan(shapes)
    old_args = {**OLD_MODEL_ARGS, **old_plan}
    assert GPTConfig.from_args(old_args).plan == want
    model = tiny_gpt(**MODEL, kron=want.to_kron())  # the weights such a checkpoint holds
    checkpoint = make_checkpoint(model)
    checkpoint["model_args"] = old_args
    path = str(tmp_path / "old.pt")
    save_checkpoint(checkpoint, path)
    loaded, _ = load_checkpoint(path)
    assert loaded.config.plan == want
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize("exported,shapes", [
    ({"kron": {"wte": [16, 8, 1], "c_fc": [4, 8, 1], "c_proj": [8, 4, 1]}, "kron_layers": [1, 3]},  # an old export
     {("wte", None): (16, 8, 1), **mlp_in((1, 3))}),
    ({"kron": {"c_fc": [4, 8, 1], "c_proj": [8, 4, 1]}, "kron_layers": [0, 1, 2, 3]}, mlp_in(range(4))),
    ({"kron": {"wte": [16, 8, 1]}, "kron_layers": []}, {("wte", None): (16, 8, 1)}),  # no block factored
    ({"kron": {"c_fc@0,2,3": [4, 8, 1], "c_fc@1": [4, 8, 2]}}, PER_BLOCK),  # a new export: kron alone
])
def test_an_exported_config_json_gives_its_plan(tmp_path, exported, shapes):
    hf = {"model_type": "krony", "n_embd": N_EMBD, "n_layer": N_LAYER, "vocab_size": VOCAB, "n_positions": 8,
          "n_head": 2, **exported}
    assert Plan.from_hf(hf) == plan(shapes)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert read_hf_config(str(tmp_path)).plan == plan(shapes)


# --- a per-block plan -------------------------------------------------------------------------------------

def test_a_per_block_plan_builds_and_counts_block_by_block():
    p = plan(PER_BLOCK)
    model = GPT(GPTConfig(**MODEL).with_plan(p))
    for block, h in enumerate(model.transformer.h):
        factors = 2 if block == 1 else 1
        assert h.mlp.c_fc.A.shape == (factors, 4, 8) and h.mlp.c_fc.B.shape == (factors, 4, 8)
        assert all(type(m) is nn.Linear for m in (h.mlp.c_proj, h.attn.c_attn, h.attn.c_proj))
    assert type(model.transformer.wte) is nn.Embedding

    n, hidden = N_EMBD, 4 * N_EMBD
    dense_block = 2 * 2 * n + (n * 3 * n + 3 * n) + (n * n + n) + (n * hidden + hidden) + (hidden * n + n)
    factored_c_fc = 3 * 1 * (4 * 8 + 4 * 8) + 2 * (4 * 8 + 4 * 8)  # blocks 0, 2, 3 and block 1: r (|A| + |B|)
    by_hand = VOCAB * n + 8 * n + N_LAYER * dense_block + 2 * n - N_LAYER * n * hidden + factored_c_fc
    parts = p.count_parts(block_size=8, bias=True)
    assert model.get_num_params(non_embedding=False) == sum(parts.values()) == by_hand
    assert model.get_num_params() == by_hand - parts["position"] == by_hand - 8 * n
    by_part = model.get_num_params_by_part()
    assert {part: parts[part] for part in by_part} == by_part


def rearranged_by_blocks(W, a_rows, a_cols):
    """Van Loan's rearrangement written out block by block: row i*a_cols + j is block (i, j) flattened."""
    b_rows, b_cols = W.shape[0] // a_rows, W.shape[1] // a_cols
    return torch.stack([W[i * b_rows:(i + 1) * b_rows, j * b_cols:(j + 1) * b_cols].flatten()
                        for i in range(a_rows) for j in range(a_cols)])


def test_kron_decompose_per_block_writes_each_blocks_van_loan_factors(tmp_path, monkeypatch, capsys):
    teacher = tiny_gpt(**MODEL)
    save_checkpoint(make_checkpoint(teacher), str(tmp_path / "teacher.pt"))
    monkeypatch.chdir(tmp_path)  # the default --out is relative: checks/...
    status, out, err = run_main(kron_decompose.main, ["--kron", "c_fc=4x8:1", "--kron", "c_fc@1=4x8:2",
                                                      "--model", "teacher.pt"], capsys)
    assert status == 0, err
    path = os.path.join("checks", f"krony_{kron_decompose.teacher_name('teacher.pt')}_"
                                  f"c_fc-at-0.2.3-4x8-1_c_fc-at-1-4x8-2_vl.pt")
    assert f"wrote {path}" in out
    student, ckpt = load_checkpoint(path)
    assert student.config.plan == plan(PER_BLOCK)
    assert ckpt["init"]["kron"] == {"c_fc@0,2,3": [4, 8, 1], "c_fc@1": [4, 8, 2]}
    next_kron = re.search(r'^next: python train\.py .* --kron="(.*)"$', out, re.MULTILINE).group(1)
    assert from_settings(kron=ast.literal_eval(next_kron)) == plan(PER_BLOCK)  # what train.py is told

    errors = {}
    for block in range(N_LAYER):
        factors = PER_BLOCK["c_fc", block][2]
        W = teacher.transformer.h[block].mlp.c_fc.weight.T  # x @ W orientation
        U, S, Vh = torch.linalg.svd(rearranged_by_blocks(W.double(), 4, 8))
        want = sum(S[r] * torch.kron(U[:, r].reshape(4, 8), Vh[r].reshape(4, 8)) for r in range(factors))
        c_fc = student.transformer.h[block].mlp.c_fc
        torch.testing.assert_close(kron_sum(c_fc.A, c_fc.B).double(), want, rtol=0, atol=1e-6)
        A, B = nearest_kronecker(W, 4, 8, factors)
        assert torch.equal(c_fc.A, A) and torch.equal(c_fc.B, B)
        errors[block] = ((W.double() - want).norm() / W.double().norm()).item()
        assert ckpt["init"]["errors"][f"h.{block}.c_fc"] == pytest.approx(errors[block], abs=1e-6)
    assert errors[1] < min(errors[b] for b in (0, 2, 3))  # two factors fit closer than one
    teacher_state = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        if not name.endswith((".mlp.c_fc.A", ".mlp.c_fc.B")):
            assert torch.equal(tensor, teacher_state[name]), name

    lines = out.splitlines()
    rows = [line.split() for line in lines if line.split()[:1] == ["c_fc"]]  # one row per shape
    assert [(row[5], row[6]) for row in rows] == [("1", "0,2,3"), ("2", "1")]  # factors, blocks
    assert float(rows[0][7]) == pytest.approx(sum(errors[b] for b in (0, 2, 3)) / 3, abs=1e-4)
    assert float(rows[1][7]) == pytest.approx(errors[1], abs=1e-4)
    table = lines[lines.index(next(line for line in lines if line.startswith("relative Frobenius error"))) + 1:]
    assert table[0].split() == ["layer", "c_fc"]
    assert {int(line.split()[0]): float(line.split()[1]) for line in table[1:1 + N_LAYER]} == \
        pytest.approx(errors, abs=1e-4)
    assert "plan c_fc@0,2,3=4x8:1 c_fc@1=4x8:2" in out


# --- bad per-block plans -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kron,message", [
    ({"c_fc@5": (4, 8, 1)}, "c_fc@5: block 5 is out of range; the model's blocks are 0 to 3"),
    ({"c_fc": (4, 8, 1), "c_fc@0,4": (4, 8, 2)}, "c_fc@0,4: block 4 is out of range"),
    ({"c_fc@1": (5, 8, 1)}, "c_fc in block 1 is 16x64: A's rows=5 do not divide 16; nearest valid: 4 or 8"),
    ({"c_fc@1": (4, 8, 33)}, "c_fc in block 1: factors=33 must be between 1 and 32"),
    ({"c_fc@1": (4, 8, 1), "c_fc@1,2": (4, 8, 2)}, r"c_fc in block 1 is given twice \(c_fc@1 and c_fc@1,2\)"),
    ({"wte@1": (16, 8, 1)}, "wte@1: wte is once per model, not per block"),
    ({"c_fcc@1": (4, 8, 1)}, "c_fcc@1: 'c_fcc' is not a factorable matrix: use wte, c_attn, attn_proj, c_fc, c_proj"),
    ({"c_fc@": (4, 8, 1)}, "c_fc@: blocks must be a list of block indices like c_fc@1,3"),
    ({"c_fc@1,,2": (4, 8, 1)}, "c_fc@1,,2: blocks must be a list of block indices"),
])
def test_bad_per_block_plans_name_the_block_and_the_matrix(kron, message):
    with pytest.raises(ValueError, match=message):
        from_settings(kron=kron)


@pytest.mark.parametrize("shapes,message", [
    ({("c_fc", 4): (4, 8, 1)}, "c_fc in block 4: the model's blocks are 0 to 3"),
    ({("wte", 0): (16, 8, 1)}, "wte: wte is once per model"),
    ({("c_fc", None): (4, 8, 1)}, "c_fc: wte is once per model .*, every other matrix is in a block"),
    ({("c_proj", 2): (8, 5, 1)}, "c_proj in block 2 is 64x16: A's columns=5 do not divide 16"),
])
def test_the_plan_constructor_checks_every_place(shapes, message):
    with pytest.raises(ValueError, match=message):
        plan(shapes)


def test_prune_names_the_block_whose_b_it_cannot_prune():
    prunable = {("c_fc", 0): (16, 8, 1), ("c_fc", 2): (8, 64, 2)}  # B 1x8 and 2x1
    plan(prunable).check_init("prune")
    with pytest.raises(ValueError, match="init=prune needs B to be a single row or column, but c_fc's B in block 1 "
                                         "is 4x8"):
        plan({**prunable, ("c_fc", 1): (4, 8, 2)}).check_init("prune")


@pytest.mark.parametrize("args,message", [
    (["--kron", "c_fc@5=4x8:1"], "c_fc@5: block 5 is out of range"),
    (["--kron", "c_fc=4x8:1", "--kron", "c_fc@1=5x8:1"], "c_fc in block 1 is 16x64: A's rows=5 do not divide 16"),
    (["--kron", "c_fc@1=4x8:1", "--kron", "c_fc@1,2=4x8:2"], "c_fc in block 1 is given twice (c_fc@1 and c_fc@1,2)"),
    (["--kron", "c_fc@1=4x8:1", "--kron", "c_fc@1=4x8:2"], "--kron names c_fc@1 twice"),
    (["--kron", "wte@1=16x8:1"], "wte@1: wte is once per model, not per block"),
    (["--kron", "c_fcc@1=4x8:1"], "--kron 'c_fcc@1=4x8:1': 'c_fcc' is not one of wte, c_attn, attn_proj, c_fc"),
    (["--kron", "c_fc@=4x8:1"], "is not NAME=ROWSxCOLS:FACTORS or NAME@BLOCKS=ROWSxCOLS:FACTORS"),
    (["--kron", "c_fc=4x8:1", "--kron", "c_fc@1=4x8:2", "--init", "prune"], "but c_fc's B in block 0 is 4x8"),
])
def test_kron_decompose_refuses_bad_per_block_plans(tmp_path, capsys, args, message):
    teacher = str(tmp_path / "teacher.pt")
    save_checkpoint(make_checkpoint(tiny_gpt(**MODEL)), teacher)
    status, out, err = run_main(kron_decompose.main, [*args, "--model", teacher, "--out", tmp_path / "x.pt"], capsys)
    assert status == 2 and err.startswith("kron_decompose.py: error: ") and message in err, err
    assert len(err.splitlines()) == 1 and out == ""
    assert os.listdir(tmp_path) == ["teacher.pt"]
