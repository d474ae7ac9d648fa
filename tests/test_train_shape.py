"""GPT.crop_block_size and GPT.with_dropout, the two changes train.py makes to a loaded model; a plan that
does not fit a model source refused in one line; train.py in short functions."""

import pytest
import torch
from conftest import random_corpus, run_main, tiny_gpt, tiny_train_args

import train
from checkpoints import make_checkpoint, save_checkpoint


def test_crop_block_size_keeps_the_first_positions_and_the_outputs_on_short_windows():
    model = tiny_gpt(block_size=8)
    config = model.config
    idx = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    before = model(idx)[0]
    wpe = model.transformer.wpe.weight.detach().clone()
    assert model.crop_block_size(5) is model
    assert model.config.block_size == 5 and config.block_size == 8  # the old config is left as it was
    assert torch.equal(model.transformer.wpe.weight, wpe[:5])
    assert torch.equal(model(idx)[0], before)


def test_with_dropout_rebuilds_only_for_another_dropout_and_keeps_the_weights():
    model = tiny_gpt()
    assert model.with_dropout(0.0) is model
    rebuilt = model.with_dropout(0.25)
    assert rebuilt is not model and rebuilt.config.dropout == 0.25 and model.config.dropout == 0.0
    assert rebuilt.transformer.drop.p == 0.25
    state = model.state_dict()
    assert all(torch.equal(tensor, state[name]) for name, tensor in rebuilt.state_dict().items())



@pytest.mark.parametrize("init", ["vl", "act"])
def test_a_plan_that_does_not_fit_a_source_is_one_line_naming_it(tmp_path, monkeypatch, capsys, init):
    source = str(tmp_path / "teacher.pt")
    save_checkpoint(make_checkpoint(tiny_gpt()), source)  # n_embd 16: A's rows=5 divide none of its matrices
    if init == "act":  # refused from the model's shape alone
        monkeypatch.setattr(train, "load_model", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    args = tiny_train_args(random_corpus(tmp_path / "data"), tmp_path / "out", init_from=source, init=init,
                           kron={"c_attn": (5, 16, 1)})
    status, _, err = run_main(train.main, args, capsys)
    assert (status, err) == (2, f"train.py: error: {source}: c_attn in block 0 is 16x48: A's rows=5 do not divide 16; "
                                f"nearest valid: 4 or 8\n")


def test_a_source_that_cannot_load_is_its_own_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    args = tiny_train_args(random_corpus(tmp_path / "data"), tmp_path / "out", init_from=missing)
    status, _, err = run_main(train.main, args, capsys)
    assert status == 2 and err.startswith(f"train.py: error: cannot load init_from='{missing}': ") and \
        err.count("\n") == 1
