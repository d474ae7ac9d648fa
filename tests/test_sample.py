"""sample.py, run in this process: greedy samples are the argmax loop's, a seed repeats a sample, a missing model
is one line."""
import pytest
import torch
from conftest import gpt2_tokenizer_or_skip, run_main, tiny_gpt

import sample
from checkpoints import make_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """(path, model) of a one-block Kronecker GPT with GPT-2's vocabulary, saved as a checkpoint."""
    model = tiny_gpt(n_layer=1, n_embd=32, block_size=32, vocab_size=50257, dim_1=8, dim_2=16, factors=2)
    path = str(tmp_path_factory.mktemp("sample") / "tiny.pt")
    save_checkpoint(make_checkpoint(model), path)
    return path, model


def test_greedy_sample_matches_argmax_loop(tiny_checkpoint, capsys):
    enc = gpt2_tokenizer_or_skip()
    path, model = tiny_checkpoint
    status, out, err = run_main(sample.main, [path, "--start=Hello world", "--temperature=0", "--max_new_tokens=6",
                                              "--num_samples=2", "--device=cpu"], capsys)
    assert status == 0, err
    idx = torch.tensor([enc.encode("Hello world")])
    with torch.no_grad():
        for _ in range(6):
            idx = torch.cat([idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = enc.decode(idx[0].tolist())
    assert out == f"{expected}\n---------------\n" * 2


def test_seed_makes_sampling_repeatable(tiny_checkpoint, capsys):
    gpt2_tokenizer_or_skip()
    args = [tiny_checkpoint[0], "--max_new_tokens=8", "--num_samples=2", "--device=cpu", "--temperature=1.5"]
    first, again, other = (run_main(sample.main, [*args, f"--seed={seed}"], capsys) for seed in (1, 1, 2))
    assert first[0] == 0, first[2]
    assert first[1] == again[1] != other[1]


def test_missing_model_is_one_clear_line(tmp_path, capsys):
    gpt2_tokenizer_or_skip()
    status, _, err = run_main(sample.main, [tmp_path / "nope", "--device=cpu"], capsys)
    assert status == 2
    assert err.strip().count("\n") == 0 and "cannot load" in err
