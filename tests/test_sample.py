import subprocess
import sys

import torch
from conftest import ROOT, gpt2_tokenizer_or_skip

from model import GPT, GPTConfig, make_checkpoint, save_checkpoint


def run_sample(*args):
    return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def tiny_checkpoint(path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, dim_1=8, dim_2=16, factors=2)).eval()
    save_checkpoint(make_checkpoint(model), path)
    return model


def test_greedy_sample_matches_argmax_loop(tmp_path):
    enc = gpt2_tokenizer_or_skip()
    path = str(tmp_path / "tiny.pt")
    model = tiny_checkpoint(path)
    result = run_sample(path, "--start=Hello world", "--temperature=0", "--max_new_tokens=6", "--num_samples=2",
                        "--device=cpu")
    assert result.returncode == 0, result.stderr
    idx = torch.tensor([enc.encode("Hello world")])
    with torch.no_grad():
        for _ in range(6):
            idx = torch.cat([idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = enc.decode(idx[0].tolist())
    assert result.stdout == f"{expected}\n---------------\n" * 2


def test_seed_makes_sampling_repeatable(tmp_path):
    gpt2_tokenizer_or_skip()
    path = str(tmp_path / "tiny.pt")
    tiny_checkpoint(path)
    args = (path, "--max_new_tokens=8", "--num_samples=2", "--device=cpu", "--temperature=1.5")
    first, again, other = run_sample(*args, "--seed=1"), run_sample(*args, "--seed=1"), run_sample(*args, "--seed=2")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout != other.stdout


def test_missing_model_is_one_clear_line(tmp_path):
    gpt2_tokenizer_or_skip()
    result = run_sample(str(tmp_path / "nope"), "--device=cpu")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "cannot load" in result.stderr
