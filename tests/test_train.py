import hashlib
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT, metrics, random_corpus, run_script, tiny_train_args, train_in_process, write_tokens

import train
from checkpoints import load_checkpoint, load_model
from compress import compress
from configurator import ConfigError, load_config
from kron_shapes import Plan
from model import GPT

VOCAB = 64  # tiny_train_args's vocab_size
TORCHRUN = dict(dim_1=8, dim_2=16, factors=1, init="random", eval_interval=4, lr_decay_iters=6,
                gradient_accumulation_steps=4)  # the torchrun run's settings, and its resumption's


def cycle_corpus(tmp_path):
    """0, 1, ..., 31, 0, 1, ...: every next token is determined by the current one, so a model that learns
    anything gets its loss well below the ln(VOCAB) of uniform guessing."""
    return write_tokens(tmp_path / "cycle", np.tile(np.arange(32), 200))


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def subprocess_runs(tmp_path_factory):
    """This module's train.py runs in processes of their own, started together as the module starts so that they
    run on the core the in-process tests (one thread) leave free; each test that checks one waits for it.
    cli_error: a mistyped key; torchrun: 4 iterations with two processes into torchrun_dir/out, on the corpus in
    torchrun_dir/random."""
    folder = tmp_path_factory.mktemp("torchrun")
    torchrun_args = tiny_train_args(random_corpus(folder / "random"), folder / "out", max_iters=4, **TORCHRUN)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # now: tests that set variables in this process come later
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield SimpleNamespace(
            cli_error=pool.submit(run_script, "train.py", "--lerning_rate=1e-3", env=env, timeout=60),
            torchrun=pool.submit(run_script, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "train.py", *torchrun_args, env=env, timeout=120),
            torchrun_dir=folder)


# --- configuration -----------------------------------------------------------------------------------

def test_overrides_are_type_checked_and_ordered(tmp_path):
    config_file = tmp_path / "conf.py"
    config_file.write_text("import math\nbatch_size = 4\nlearning_rate = 1\nwandb_run_name = 'file'\n")
    config = load_config(train.SETTINGS, [str(config_file), "--batch_size=6", "--dim_1=8", "--wandb_run_name=1e3",
                                          "--compile=False"])
    assert config["batch_size"] == 6  # the override comes after the file
    assert config["learning_rate"] == 1.0 and isinstance(config["learning_rate"], float)
    assert config["dim_1"] == 8 and config["dim_2"] is None
    assert config["wandb_run_name"] == "1e3"  # strings are taken verbatim
    assert config["compile"] is False
    for bad, message in [("--lerning_rate=1", "did you mean learning_rate"),
                         ("--batch_size=1.5", "batch_size must be an int"),
                         ("--compile=yes", "compile must be True or False"),
                         ("--dim_1=8.0", "dim_1 must be an int or None"),
                         ("--max_iters", "expected --key=value")]:
        with pytest.raises(ConfigError, match=message):
            load_config(train.SETTINGS, [bad])
    config_file.write_text("n_layers = 4\n")
    with pytest.raises(ConfigError, match=f"unknown config key 'n_layers' in {config_file}.*n_layer"):
        load_config(train.SETTINGS, [str(config_file)])


@pytest.mark.parametrize("name", ["train_gpt2.py", "train_gpt2_95M.py", "train_shakespeare.py",
                                  "finetune_shakespeare.py"])
def test_shipped_configs_are_valid(name):
    config = load_config(train.SETTINGS, [os.path.join(ROOT, "config", name)])
    train.check_config(config)
    if "shakespeare" not in name:  # the paper's recipe, 131,072 tokens per iteration, on 8 GPUs
        assert config["gradient_accumulation_steps"] % 8 == 0
        assert config["gradient_accumulation_steps"] * config["batch_size"] * config["block_size"] == 131072
        assert (config["dim_1"], config["dim_2"], config["factors"]) in [(768, 768, 1), (384, 3072, 1)]


def test_lr_schedule_matches_warmup_and_cosine():
    settings = dict(load_config(train.SETTINGS, []), learning_rate=1.0, min_lr=0.1, warmup_iters=10,
                    lr_decay_iters=110)
    assert train.get_lr(0, settings) == pytest.approx(1 / 11)
    assert train.get_lr(9, settings) == pytest.approx(10 / 11)
    assert train.get_lr(10, settings) == pytest.approx(1.0)
    assert train.get_lr(60, settings) == pytest.approx(0.55)  # halfway down the cosine: (1 + 0.1) / 2
    assert train.get_lr(110, settings) == train.get_lr(10**6, settings) == 0.1
    assert train.get_lr(60, dict(settings, decay_lr=False)) == 1.0


@pytest.mark.parametrize("overrides, message", [
    (dict(dim_1=5, dim_2=16, factors=1, init="random"),
     "dim_1=5 does not divide n_embd=32; nearest valid dim_1: 4 or 8"),
    (dict(dim_1=8), "must be set together"),
    (dict(dim_1=8, dim_2=16, factors=1), "init=vl decomposes a dense model"),
    (dict(init="svd"), "init='svd' is not one of"),
    (dict(dtype="float8"), "dtype='float8' is not one of"),
    (dict(device="tpu"), "is not a torch device"),
    (dict(batch_size=0), "batch_size=0 must be at least 1"),
    (dict(init_from="resume"), "ckpt.pt does not exist"),
    (dict(init_from="nowhere/ckpt.pt"), "cannot load init_from='nowhere/ckpt.pt': .*no such file or directory"),
    (dict(data_dir="", dataset="none"), r"data/none/train.bin not found: run `python data/none/prepare.py`"),
])
def test_bad_settings_fail_fast_with_one_line(tmp_path, capsys, overrides, message):
    data_dir = random_corpus(tmp_path / "random")
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_train_args(data_dir, tmp_path / "out", **overrides))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.py: error: ")
    assert re.search(message, err), err
    assert not os.path.exists(tmp_path / "out" / "ckpt.pt")


def test_accumulation_steps_must_divide_over_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_train_args(random_corpus(tmp_path / "random"), tmp_path / "out", gradient_accumulation_steps=3))
    assert exit_info.value.code == 2
    assert "gradient_accumulation_steps=3 must be a multiple of the number of processes (2)" in capsys.readouterr().err


def test_wandb_is_imported_only_when_asked_for(tmp_path, capsys):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_train_args(random_corpus(tmp_path / "random"), tmp_path / "out", wandb_log=True))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "train.py: error: wandb_log=True but wandb is not installed: pip install wandb\n"


def test_cli_error_is_one_line_without_traceback(subprocess_runs):
    result = subprocess_runs.cli_error.result()
    assert result.returncode == 2
    assert result.stderr == ("train.py: error: unknown config key 'lerning_rate' in --lerning_rate; "
                             "did you mean learning_rate?\n")


# --- training ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kron", [{}, dict(dim_1=8, dim_2=16, factors=2, init="random")], ids=["dense", "kronecker"])
def test_loss_falls_on_a_tiny_corpus(tmp_path, kron):
    out_dir = tmp_path / "out"
    losses = train_in_process(tiny_train_args(cycle_corpus(tmp_path), out_dir, **kron))
    records = metrics(out_dir)
    evals = [r for r in records if "val_loss" in r]
    assert [r["iter"] for r in evals] == [0, 10, 20, 30]
    assert abs(evals[0]["val_loss"] - math.log(VOCAB)) < 0.1  # small random init: close to uniform guessing
    assert losses["val"] == evals[-1]["val_loss"] < 1.0  # ln(64) = 4.16
    steps = [r for r in records if "loss" in r]
    assert [r["iter"] for r in steps] == list(range(30))
    config = load_config(train.SETTINGS, tiny_train_args("", ""))
    assert [r["lr"] for r in steps] == [train.get_lr(i, config) for i in range(30)]
    tokens_per_iter = config["batch_size"] * config["block_size"] * config["gradient_accumulation_steps"]
    assert all(r["tokens_per_sec"] * r["ms_per_iter"] / 1000 == pytest.approx(tokens_per_iter) for r in steps)

    # The checkpoint is a plain checkpoints.py checkpoint: weights_only, with its config, no extra arguments.
    model, ckpt = load_checkpoint(str(out_dir / "ckpt.pt"))
    assert ckpt["iter_num"] == 30 and ckpt["best_val_loss"] == min(r["val_loss"] for r in evals)
    assert ckpt["config"]["learning_rate"] == 1e-2 and ckpt["model_args"]["vocab_size"] == VOCAB
    assert bool(model.config.plan) == bool(kron)
    if kron:
        assert str(model.config.plan) == "c_fc=8x16:2 c_proj=16x8:2"
        assert model.transformer.h[0].mlp.c_fc.A.shape == (2, 8, 16)
    reloaded = load_model(str(out_dir / "ckpt.pt")).eval()
    x = torch.tensor([list(range(16))])
    with torch.no_grad():
        _, loss = reloaded(x[:, :-1], x[:, 1:])
    assert loss.item() < 1.0  # the saved weights are the trained ones


def test_bfloat16_autocast_on_the_cpu_trains_like_float32_and_saves_float32_weights(tmp_path):
    data_dir = cycle_corpus(tmp_path)
    kron = dict(dim_1=32, dim_2=32, factors=1, init="random")
    runs = {dtype: train_in_process(tiny_train_args(data_dir, tmp_path / dtype, dtype=dtype, **kron))
            for dtype in ("float32", "bfloat16")}
    assert runs["bfloat16"]["val"] < 1.0 and runs["float32"]["val"] < 1.0  # both learn the cycle (ln(64) = 4.16)
    assert runs["bfloat16"]["val"] == pytest.approx(runs["float32"]["val"], abs=0.05)  # 0.815 vs 0.816 here
    bf16_steps = [r["loss"] for r in metrics(tmp_path / "bfloat16") if "loss" in r]
    fp32_steps = [r["loss"] for r in metrics(tmp_path / "float32") if "loss" in r]
    assert bf16_steps[0] == pytest.approx(fp32_steps[0], abs=2e-2) and bf16_steps != fp32_steps  # autocast ran
    model, ckpt = load_checkpoint(str(tmp_path / "bfloat16" / "ckpt.pt"))
    assert ckpt["config"]["dtype"] == "bfloat16" and model.transformer.h[0].mlp.fused  # the 81M layout's fused MLP
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_resume_is_exact(tmp_path):
    data_dir = random_corpus(tmp_path / "random")
    # dropout exercises the torch RNG state, Kronecker factors the optimizer state of 3-D parameters
    common = dict(dropout=0.1, dim_1=8, dim_2=16, factors=1, init="random", eval_interval=3, lr_decay_iters=6)
    train_in_process(tiny_train_args(data_dir, tmp_path / "straight", max_iters=6, **common))
    train_in_process(tiny_train_args(data_dir, tmp_path / "resumed", max_iters=3, **common))
    # a crash after iteration 3 leaves lines that the resumed run must replace, not duplicate
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iter": 3, "loss": 123.0}) + "\n" + json.dumps({"iter": 4, "loss": 456.0}) + "\n")
    train_in_process(tiny_train_args(data_dir, tmp_path / "resumed", max_iters=6, init_from="resume", **common))

    def losses(out_dir):  # every logged number but the timings
        return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "ms_per_iter", "elapsed_s", "run")}
                for r in metrics(out_dir)]
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert len({r["run"] for r in metrics(tmp_path / "resumed")}) == 1  # a resumed run keeps its id
    assert [(r["iter"], r.keys()) for r in resumed] == [(r["iter"], r.keys()) for r in straight]
    for a, b in zip(straight, resumed):
        assert all(abs(a[k] - b[k]) <= 1e-6 for k in a), (a, b)
    final_straight = load_checkpoint(str(tmp_path / "straight" / "ckpt.pt"))[0].state_dict()
    final_resumed = load_checkpoint(str(tmp_path / "resumed" / "ckpt.pt"))[0].state_dict()
    for name, tensor in final_straight.items():
        torch.testing.assert_close(final_resumed[name], tensor, rtol=0, atol=1e-6)


def test_eval_only_rescores_the_checkpoint_on_the_same_windows(tmp_path):
    data_dir, out_dir = random_corpus(tmp_path / "random"), tmp_path / "out"
    train_in_process(tiny_train_args(data_dir, out_dir, max_iters=4, eval_interval=2))
    before = file_hash(out_dir / "ckpt.pt")
    losses = train_in_process(tiny_train_args(data_dir, out_dir, init_from="resume", eval_only=True))
    last_eval = [r for r in metrics(out_dir) if "val_loss" in r][-2]  # the training run's, before eval_only's
    assert last_eval["iter"] == 4
    assert losses == {"train": last_eval["train_loss"], "val": last_eval["val_loss"]}
    assert file_hash(out_dir / "ckpt.pt") == before


@pytest.mark.parametrize("eval_interval", [1, 100], ids=["caught-at-eval", "caught-in-training"])
def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path, capsys, eval_interval):
    data_dir, out_dir = random_corpus(tmp_path / "random"), tmp_path / "out"
    train_in_process(tiny_train_args(data_dir, out_dir, max_iters=2, eval_interval=2))
    ckpt_path = out_dir / "ckpt.pt"
    before = file_hash(ckpt_path)
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_train_args(data_dir, out_dir, init_from="resume", max_iters=8, learning_rate=1e30,
                                   decay_lr=False, grad_clip=0.0, eval_interval=eval_interval))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "the loss is not finite at iteration 3" in err and err.count("\n") == 1
    assert file_hash(ckpt_path) == before
    assert sorted(os.listdir(out_dir)) == ["ckpt.pt", "metrics.jsonl"]


def test_init_from_checkpoints_compresses_dense_and_keeps_kronecker(tmp_path, capsys):
    data_dir = random_corpus(tmp_path / "random")
    train_in_process(tiny_train_args(data_dir, tmp_path / "dense", max_iters=2, eval_interval=2))
    dense_path = str(tmp_path / "dense" / "ckpt.pt")
    # learning_rate 0 leaves the weights as they start, so they can be compared with compress() itself
    frozen = dict(max_iters=1, eval_interval=1, learning_rate=0.0, decay_lr=False, n_layer=3, n_embd=48)
    train_in_process(tiny_train_args(data_dir, tmp_path / "kron", init_from=dense_path, dim_1=16, dim_2=32,
                                     factors=2, init="vl", **frozen))
    assert "note: n_layer=3 in the settings; the model from init_from=" in capsys.readouterr().out
    plan = Plan.from_settings(n_embd=32, n_layer=2, vocab_size=VOCAB, dim_1=16, dim_2=32, factors=2)
    expected = compress(load_checkpoint(dense_path)[0], plan, "vl").state_dict()
    kron_model, kron_ckpt = load_checkpoint(str(tmp_path / "kron" / "ckpt.pt"))
    assert kron_ckpt["config"]["n_layer"] == 2 and kron_ckpt["config"]["dim_1"] == 16
    for name, tensor in expected.items():
        torch.testing.assert_close(kron_model.state_dict()[name], tensor, rtol=0, atol=0)

    # a Kronecker checkpoint is used as it is: its plan is taken (and recorded) when unset, a different one is an
    # error
    kron_path = str(tmp_path / "kron" / "ckpt.pt")
    train_in_process(tiny_train_args(data_dir, tmp_path / "again", init_from=kron_path, **frozen))
    again_model, again_ckpt = load_checkpoint(str(tmp_path / "again" / "ckpt.pt"))
    assert str(again_model.config.plan) == "c_fc=16x32:2 c_proj=32x16:2"
    assert again_ckpt["config"]["kron"] == {"c_fc": [16, 32, 2], "c_proj": [32, 16, 2]}
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_train_args(data_dir, tmp_path / "bad", init_from=kron_path, dim_1=8, dim_2=32, factors=2))
    assert exit_info.value.code == 2
    assert "is a Kronecker model with the plan c_fc=16x32:2 c_proj=32x16:2, but the settings ask for " \
        "c_fc=8x32:2 c_proj=32x8:2" in capsys.readouterr().err


def test_init_from_hugging_face_directory(tmp_path, hf_gpt2_dir):
    data_dir = random_corpus(tmp_path / "random", vocab_size=50257, n=2000)
    out_dir = tmp_path / "out"
    train_in_process(tiny_train_args(data_dir, out_dir, init_from=hf_gpt2_dir, vocab_size=50257, dim_1=32,
                                     dim_2=256, factors=1, init="prune", max_iters=1, eval_interval=1,
                                     learning_rate=0.0, decay_lr=False, batch_size=2, gradient_accumulation_steps=1,
                                     eval_iters=1))
    model, ckpt = load_checkpoint(str(out_dir / "ckpt.pt"))
    assert model.config.block_size == 16  # the 128 positions of the directory, cropped to the run's block_size
    teacher = GPT.from_pretrained(hf_gpt2_dir)
    plan = Plan.from_settings(n_embd=64, n_layer=2, vocab_size=50257, dim_1=32, dim_2=256, factors=1)
    expected = compress(teacher, plan, "prune").state_dict()
    expected["transformer.wpe.weight"] = expected["transformer.wpe.weight"][:16]
    for name, tensor in expected.items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)


def test_torchrun_two_processes_then_resume_in_one(subprocess_runs):
    result = subprocess_runs.torchrun.result()
    data_dir, out_dir = str(subprocess_runs.torchrun_dir / "random"), subprocess_runs.torchrun_dir / "out"
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("saved ") == 1  # only rank 0 writes
    assert "tokens per iteration: 512 = 2 accumulation steps x 2 processes x 8 sequences x 16 tokens" in result.stdout
    assert sorted(os.listdir(out_dir)) == ["ckpt.pt", "metrics.jsonl"]
    model, ckpt = load_checkpoint(str(out_dir / "ckpt.pt"))
    assert ckpt["iter_num"] == 4 and len(ckpt["rng"]) == 2 and str(model.config.plan) == "c_fc=8x16:1 c_proj=16x8:1"
    # the two ranks drew different batches
    assert not torch.equal(ckpt["rng"][0]["batch"], ckpt["rng"][1]["batch"])
    train_in_process(tiny_train_args(data_dir, out_dir, max_iters=6, init_from="resume", **TORCHRUN))
    assert [r["iter"] for r in metrics(out_dir) if "val_loss" in r] == [0, 4, 6]
    assert load_checkpoint(str(out_dir / "ckpt.pt"))[1]["iter_num"] == 6


# --- nothing lost ------------------------------------------------------------------------------------------

def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    """Disk full in the middle of torch.save: the run stops with one line, ckpt.pt is the last good one."""
    data_dir, out_dir = random_corpus(tmp_path / "random"), tmp_path / "out"
    train_in_process(tiny_train_args(data_dir, out_dir, max_iters=4, eval_interval=2))
    good = file_hash(out_dir / "ckpt.pt")
    real_save = torch.save

    def disk_full(obj, path):
        real_save(obj, path)
        with open(path, "r+b") as f:
            f.truncate(100)  # half written
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_train_args(data_dir, out_dir, init_from="resume", max_iters=8, eval_interval=2))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "No space left on device" in err and err.count("\n") == 1, err
    assert file_hash(out_dir / "ckpt.pt") == good and sorted(os.listdir(out_dir)) == ["ckpt.pt", "metrics.jsonl"]
    monkeypatch.undo()
    train_in_process(tiny_train_args(data_dir, out_dir, init_from="resume", max_iters=8, eval_interval=2))
    assert load_checkpoint(str(out_dir / "ckpt.pt"))[1]["iter_num"] == 8


def test_sigkill_during_training_leaves_a_checkpoint_to_resume_from(tmp_path):
    data_dir, out_dir = random_corpus(tmp_path / "random"), tmp_path / "out"
    args = tiny_train_args(data_dir, out_dir, max_iters=100000, eval_interval=1, eval_iters=1, log_interval=1000)
    process = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out_dir / "ckpt.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # many checkpoint writes later, most likely in the middle of one
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    saved_iter = load_checkpoint(str(out_dir / "ckpt.pt"))[1]["iter_num"]
    assert saved_iter >= 1
    train_in_process(tiny_train_args(data_dir, out_dir, init_from="resume", max_iters=saved_iter + 2,
                                     eval_interval=1, eval_iters=1))
    assert load_checkpoint(str(out_dir / "ckpt.pt"))[1]["iter_num"] == saved_iter + 2
    assert [r["iter"] for r in metrics(out_dir) if "val_loss" in r] == list(range(saved_iter + 3))
