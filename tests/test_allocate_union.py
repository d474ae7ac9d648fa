"""The allocated family at its best: its student starts at least as well on the calibration tokens as each factored
family's best at the same budget, and Monarch matrices are among the options it prices."""
import json

import numpy as np
import pytest
import torch
from conftest import tiny_gpt

import study
from checkpoints import load_model, make_checkpoint, save_checkpoint
from common import read_calibration
from kron_shapes import BLOCK_MATRICES

ACT = {"calibration_tokens": 512, "act_steps": 5}


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    """A tiny teacher saved as a checkpoint and a train.bin of its vocabulary."""
    folder = tmp_path_factory.mktemp("union")
    teacher = tiny_gpt(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=64)
    save_checkpoint(make_checkpoint(teacher, None), folder / "teacher.pt")
    np.random.default_rng(0).integers(0, 64, 4096).astype(np.uint16).tofile(folder / "train.bin")
    return teacher, folder


def loss(model, calibration):
    with torch.no_grad():
        return model.eval()(calibration[:, :-1], calibration[:, 1:])[1].item()


def test_the_allocated_student_starts_no_worse_than_each_familys_best_at_its_budget(teacher_and_data):
    teacher, folder = teacher_and_data
    shape = teacher.config
    budget = round(0.6 * study.teacher_params_no_wpe(shape))
    rivals = {}
    for family in study.RIVAL_FAMILIES:
        variant = study.match_family(family, {"family": family, "init": "act", "act": ACT}, budget, shape)
        rivals[family] = str(folder / f"{family}.pt")
        assert study.make_student(variant, teacher, str(folder / "teacher.pt"), rivals[family], str(folder)) is None
    allocated = {"family": "allocated", "allocate": list(BLOCK_MATRICES), "init": "act", "act": ACT,
                 "budget": {"params_no_wpe": budget, "matched": None}}
    (folder / "allocated").mkdir()
    init_path = folder / "allocated" / "init.pt"
    assert study.make_student(allocated, teacher, str(folder / "teacher.pt"), str(init_path), str(folder),
                              rivals=rivals) is None
    calibration = torch.from_numpy(read_calibration(str(folder / "train.bin"), 512, 8, 64))
    losses = {family: loss(load_model(path), calibration) for family, path in rivals.items()}
    chosen = load_model(str(init_path))
    assert all(loss(chosen, calibration) <= rival + 1e-6 for rival in losses.values())
    assert abs(chosen.get_num_params() - budget) <= study.tolerance(budget, shape)  # a rival is matched within it
    record = json.loads((folder / "allocated" / "allocation.json").read_text())
    assert set(record["calibration_loss"]) == {"allocated", *study.RIVAL_FAMILIES}
    assert record["calibration_loss"][record["won"]] == pytest.approx(loss(chosen, calibration), abs=1e-6)
    for family, value in losses.items():  # the record holds what each rival scored
        assert record["calibration_loss"][family] == pytest.approx(value, abs=1e-6)


def test_a_rival_that_starts_better_is_kept_in_the_allocations_place(teacher_and_data, tmp_path):
    """On calibration text of one repeated character, a dense rival whose last LayerNorm always points at it has
    far less loss than the allocated student: it is what the variant keeps, and its row says so."""
    teacher, folder = teacher_and_data
    np.full(4096, 5, dtype=np.uint16).tofile(tmp_path / "train.bin")
    rival = tiny_gpt(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=64)
    with torch.no_grad():
        rival.transformer.ln_f.weight.zero_()
        token = rival.transformer.wte.weight[5]
        rival.transformer.ln_f.bias.copy_(50 * token / token.square().sum())  # a logit of 50 for token 5
    save_checkpoint(make_checkpoint(rival, None), tmp_path / "rival.pt")
    budget = round(0.6 * study.teacher_params_no_wpe(teacher.config))
    allocated = {"family": "allocated", "allocate": ["c_fc", "c_proj"], "init": "act", "act": ACT,
                 "budget": {"params_no_wpe": budget, "matched": None}}
    (tmp_path / "kept").mkdir()
    init_path = tmp_path / "kept" / "init.pt"
    assert study.make_student(allocated, teacher, str(folder / "teacher.pt"), str(init_path), str(tmp_path),
                              rivals={"dense": str(tmp_path / "rival.pt")}) is None
    record = json.loads((tmp_path / "kept" / "allocation.json").read_text())
    assert record["won"] == "dense" and record["calibration_loss"]["dense"] < 1 < \
        record["calibration_loss"]["allocated"]
    assert not load_model(str(init_path)).config.plan
    assert study.allocated_text({"allocation": record, "plan": "dense"}).startswith("dense's student")


def monarch_teacher(nblocks):
    """A tiny teacher whose block 0 c_fc is itself a Monarch matrix of nblocks blocks (random factors)."""
    from monarch import monarch_weight
    teacher = tiny_gpt(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64)
    generator = torch.Generator().manual_seed(1)
    in_factor, out_factor = torch.randn(nblocks, 16 // nblocks, 16 // nblocks, generator=generator), \
        torch.randn(nblocks, 16 // nblocks, 64 // nblocks, generator=generator)
    with torch.no_grad():
        teacher.transformer.h[0].mlp.c_fc.weight.copy_(0.1 * monarch_weight(in_factor, out_factor).t())
    return teacher


@pytest.mark.parametrize("calibrated", [False, True])
def test_a_monarch_matrix_gets_a_monarch_option_priced_near_zero_and_is_allocated_so(calibrated):
    """Weight error (vl) and the output error scaled to the loss (act) alike price a W that is itself Monarch of
    4 blocks at (near) zero as a Monarch matrix of 4 blocks, which costs 16 * 80 / 4 = 320 of W's 1,024 weights,
    and the allocation within those weights picks it; other Monarch block counts err."""
    from compress import MONARCH, allocated_plan, allocation_options, calibrated_options
    teacher = monarch_teacher(4)
    calibration = torch.randint(0, 64, (64, 8), generator=torch.Generator().manual_seed(0)) if calibrated else None
    options = calibrated_options(teacher, ["c_fc"], calibration) if calibrated else \
        allocation_options(teacher, ["c_fc"])
    prices = {choice[1]: (params, price) for params, price, choice in options["c_fc", 0]
              if choice is not None and choice[0] == MONARCH}
    assert set(prices) == {2, 4, 8, 16} and prices[4][0] == 320  # 1 block has more weights than W
    assert prices[4][1] < 1e-6 * max(price for _, price in prices.values())
    assert prices[8][1] > 1e-3 * max(price for _, price in prices.values())
    fixed = study.teacher_params_no_wpe(teacher.config) - 16 * 64
    plan = allocated_plan(teacher, ["c_fc"], fixed + 320, calibration)
    assert plan.monarch == {("c_fc", 0): 4} and not plan.shapes



def test_monarch_options_are_priced_by_the_projections_real_weight_error():
    from compress import MONARCH, allocation_options
    from model import weight_of
    from monarch import monarch_weight, nearest_monarch
    teacher = tiny_gpt(seed=1)
    W = weight_of(teacher.transformer.h[1].attn.c_attn).detach().double()  # 16x48
    monarch = [o for o in allocation_options(teacher, ["c_attn"])["c_attn", 1] if o[2] and o[2][0] == MONARCH]
    assert [nblocks for _, _, (_, nblocks) in monarch] == [2, 4, 8, 16]
    for params, error, (_, nblocks) in monarch:
        in_factor, out_factor = nearest_monarch(W, nblocks)
        assert params == in_factor.numel() + out_factor.numel()
        expected = (W - monarch_weight(in_factor, out_factor)).square().sum() / W.square().sum()
        assert error == pytest.approx(expected.item(), abs=1e-9)


@pytest.mark.parametrize("init", ["vl", "act"])
def test_kron_decompose_allocate_picks_the_monarch_matrix_and_says_how_it_priced(init, tmp_path, capsys):
    import kron_decompose
    from conftest import run_main
    teacher = monarch_teacher(4)
    save_checkpoint(make_checkpoint(teacher, None), tmp_path / "teacher.pt")
    np.random.default_rng(0).integers(0, 64, 4096).astype(np.uint16).tofile(tmp_path / "train.bin")
    act = ["--calibration", tmp_path / "train.bin", "--calibration_tokens", 512, "--act_steps", 2] \
        if init == "act" else []
    target = study.teacher_params_no_wpe(teacher.config) - 16 * 64 + 320
    status, stdout, _ = run_main(kron_decompose.main, ["--allocate", "--target", target, "--matrices", "c_fc",
                                                       "--model", tmp_path / "teacher.pt", "--init", init, *act,
                                                       "--out", tmp_path / "out.pt"], capsys)
    assert status == 0, stdout
    assert "monarch:4" in stdout
    assert ("loss-scaled output error" in stdout) == (init == "act")
    assert load_model(str(tmp_path / "out.pt")).config.plan.monarch == {("c_fc", 0): 4}


def test_a_frontier_row_counts_its_monarch_matrices(tmp_path):
    model = tiny_gpt(kron={"c_fc": (2, 16, 3)}, rank={"c_proj@1": 3}, monarch={"c_attn": 4})
    save_checkpoint(make_checkpoint(model, None), tmp_path / "s.pt")
    size = study.model_size(str(tmp_path / "s.pt"))
    assert size["factored"] == {"rank": 1, "kronecker": 2, "monarch": 2}
    assert study.allocated_text(size) == "allocated: 2 Kronecker, 1 rank-r, 2 Monarch, 3 dense of 8 matrices"
