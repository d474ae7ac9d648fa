"""GPT.crop_block_size and GPT.with_dropout, the two changes train.py makes to a loaded model; train.py in short
functions."""
import ast
import os

import torch
from conftest import ROOT, tiny_gpt


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



def test_no_function_in_train_py_is_over_80_lines():
    with open(os.path.join(ROOT, "train.py")) as f:
        tree = ast.parse(f.read())
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80]
    assert long == []
