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
    assert chosen.get_num_params() <= budget
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
