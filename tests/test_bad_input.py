"""Ordinary mistakes, as a new user makes them, against every script run as a subprocess: each answers with
exit status 2 (1 for a diverged run) and exactly one line on stderr that names the problem, no traceback, and
creates or changes no file. Validation comes before any heavy work, so the whole table runs in seconds."""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import run_script, snapshot, tiny_gpt, train_in_process, write_tokens

from checkpoints import make_checkpoint, save_checkpoint
from common import write_vocab

# (script, arguments, exit status, what the one line must say); {d} is the shared folder of inputs
CASES = [
    ("kron_decompose.py", "768 768 0 --model gpt2", 2, "shapes and factor counts must be positive"),
    ("kron_decompose.py", "--kron c_attention=1x1:1 --model {d}/teacher.pt", 2, "'c_attention' is not one of"),
    ("kron_decompose.py", "--kron c_attn=5x16:1 --model {d}/teacher.pt --out {d}/x.pt", 2, "A's rows=5 do not divide"),
    ("kron_decompose.py", "16 16 1 --layers 0,9 --model {d}/teacher.pt", 2, "block indices must be between 0 and 1"),
    ("kron_decompose.py", "--kron c_attn=4x8:1 --init prune --model {d}/teacher.pt", 2, "init=prune needs B"),
    ("kron_decompose.py", "--list --target big", 2, "--target 'big' is not a size"),
    ("kron_decompose.py", "8 8 1 --model {d}/no_such.pt", 2, "cannot load --model"),
    ("train.py", "--lerning_rate=1", 2, "unknown config key 'lerning_rate'"),
    ("train.py", "{tiny} --out_dir={d}/run", 2, "already holds a run (ckpt.pt): continue it with --init_from=resume"),
    ("train.py", "{tiny} --out_dir={d}/new --data_dir={d}/odd", 2, "train.bin is 7 bytes"),
    ("train.py", "{tiny} --out_dir={d}/new --data_dir={d}/big", 2, "holds token id 60000, beyond the model's"),
    ("train.py", "{tiny} --out_dir={d}/new --teacher={d}/teacher.pt --distill_alpha=2", 2, "must be in [0, 1]"),
    ("train.py", "{tiny} --out_dir={d}/new --kron={{'c_attn':(5,16,1)}} --init=random", 2, "A's rows=5 do not divide"),
    ("train.py", "{tiny} --out_dir={d}/new --init_from=resume", 2, "init_from=resume but"),
    ("train.py", "{tiny} --out_dir={d}/new --device=cuda", 2, "sees no CUDA GPU"),
    ("train.py", "{tiny} --out_dir={d}/new --init_from={d}/chars.pt", 2, "reads the 20 characters it was trained on"),
    ("train.py", "{tiny} --out_dir={d}/run --init_from=resume --max_iters=4 --learning_rate=1e30 --log_interval=9", 1,
     "the loss is not finite at iteration"),
    ("perplexity.py", "/no/such/model wiki2", 2, "cannot load '/no/such/model'"),
    ("perplexity.py", "{d}/teacher.pt wiki3", 2, "unknown dataset 'wiki3'"),
    ("perplexity.py", "{d}/teacher.pt {d}/odd/train.bin", 2, "train.bin is 7 bytes"),
    ("perplexity.py", "{d}/teacher.pt {d}/big/train.bin", 2, "holds token id 60000, beyond the model's"),
    ("perplexity.py", "{d}/teacher.pt {d}/data/val.bin --stride 0", 2, "--stride must be at least 1"),
    ("perplexity.py", "{d}/teacher.pt {d}/data/val.bin --out {d}/no_dir/out.json", 2, "no such directory"),
    ("perplexity.py", "{d}/teacher.pt {d}/chars/val.bin", 2, "has a vocabulary of 64 tokens, but"),
    ("sample.py", "/no/such/model", 2, "cannot load '/no/such/model'"),
    ("sample.py", "{d}/teacher.pt --temperature=-1", 2, "temperature and top_k must be >= 0"),
    ("sample.py", "{d}/teacher.pt --start=FILE:{d}/no_such.txt", 2, "cannot read the prompt file"),
    ("sample.py", "{d}/teacher.pt", 2, "carries no characters: its ids are not GPT-2 tokens"),
    ("sample.py", "{d}/chars.pt --start=Z", 2, "the character 'Z' is not in the model's vocabulary of 20"),
    ("krony_to_gpt.py", "{d}/no_such.pt {d}/hf", 2, "no such checkpoint"),
    ("krony_to_gpt.py", "{d}/teacher.pt {d}/run", 2, "already exists; pass --overwrite"),
    ("krony_to_gpt.py", "{d}/teacher.pt {d}/notes.txt/hf", 2, "notes.txt is not a writable directory"),
    ("krony_to_gpt.py", "{d}/notes.txt {d}/hf", 2, "is not a readable krony checkpoint"),
    ("data/owt/prepare.py", "--data_files {d}/no_such.jsonl --out_dir {d}/owt", 2, "no such file"),
    ("data/owt/prepare.py", "--val_fraction 2 --out_dir {d}/owt", 2, "--val_fraction must be between 0 and 1"),
    ("data/shakespeare/prepare.py", "--val_fraction 0 --out_dir {d}/sh", 2, "--val_fraction must be between 0 and 1"),
    ("study.py", "config/study_smoke.py --out_dir={d}/study --seedz=[1]", 2, "unknown config key 'seedz'"),
    ("plot.py", "{d}/no_such_run -o {d}/losses.png", 2, "metrics.jsonl not found"),
    ("quickstart.py", "--teacher={d}/no_such.pt --out_dir={d}/quickstart", 2, "cannot load --teacher"),
]
TINY = ("--data_dir={d}/data --device=cpu --compile=False --n_layer=2 --n_head=2 --n_embd=16 --vocab_size=64 "
        "--block_size=8 --batch_size=2 --gradient_accumulation_steps=1 --max_iters=2 --eval_interval=2 "
        "--eval_iters=1 --log_interval=1")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small teacher, token files good and bad, a model and a dataset of 20 characters, and a finished training
    run to collide with."""
    d = tmp_path_factory.mktemp("inputs")
    save_checkpoint(make_checkpoint(tiny_gpt(move_defaults=False)), str(d / "teacher.pt"))  # TINY's shape
    chars = list("abcdefghijklmnopqrst")
    save_checkpoint(make_checkpoint(tiny_gpt(vocab_size=len(chars)), chars), str(d / "chars.pt"))
    write_tokens(d / "chars", np.arange(400) % len(chars))
    write_vocab(chars, str(d / "chars"))
    write_tokens(d / "data", np.arange(400) % 64)
    write_tokens(d / "big", [1, 2, 60000] * 100)
    os.makedirs(d / "odd")
    for split in ("train", "val"):
        (d / "odd" / f"{split}.bin").write_bytes(b"\x01\x00" * 3 + b"\x02")
    (d / "notes.txt").write_text("not a checkpoint")
    train_in_process([*TINY.format(d=d).split(), f"--out_dir={d}/run"])
    return d


def test_every_script_answers_a_mistake_with_one_line_and_no_file(inputs):
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)  # a hub name must not even be looked up where the arguments are wrong
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    before = snapshot(inputs)

    def run(case):
        script, args, _, _ = case
        return run_script(script, *args.format(d=inputs, tiny=TINY.format(d=inputs)).split(), env=env)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, CASES))
    assert len(CASES) >= 25
    for (script, args, status, message), result in zip(CASES, results):
        where = f"{script} {args}: {result.stderr!r}"
        assert result.returncode == status, where
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, where
        assert message in result.stderr and result.stderr.startswith(script), where
    assert snapshot(inputs) == before
