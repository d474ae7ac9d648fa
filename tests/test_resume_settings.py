"""train.py --init_from=resume takes the settings the run was started with from its checkpoint: settings given on
the resume override them (printed in one line), those of the model, its plan, vocabulary and dataset are refused.
Also train.py's other answers to what a user types: an empty out_dir, a missing data_dir, the closing summary line,
and notes only about settings the user changed."""
import os
import signal

import pytest
from conftest import metrics, random_corpus, run_main, snapshot, tiny_gpt, tiny_train_args, write_tokens
from test_preemption import losses, signal_during_iteration

import train
from checkpoints import load_checkpoint, make_checkpoint, save_checkpoint

# A non-default learning rate, schedule, batch, plan and distillation: everything a resume must take from the run.
STARTED = dict(learning_rate=3e-3, min_lr=2e-4, warmup_iters=2, lr_decay_iters=8, eval_interval=4, batch_size=4,
               dropout=0.1, dim_1=8, dim_2=16, factors=1, init="random", distill_alpha=0.5, distill_temperature=1.5)


@pytest.fixture
def teacher_path(tmp_path):
    """A dense checkpoint of tiny_train_args's vocabulary and context, to distill from."""
    path = str(tmp_path / "teacher.pt")
    save_checkpoint(make_checkpoint(tiny_gpt(seed=3, move_defaults=False, n_embd=32, block_size=16)), path)
    return path


def test_resume_with_only_max_iters_goes_on_as_the_run_never_stopped(tmp_path, capsys, teacher_path):
    data_dir = random_corpus(tmp_path / "random")
    status, _, err = run_main(train.main, tiny_train_args(data_dir, tmp_path / "straight", teacher=teacher_path,
                                                          **STARTED, max_iters=8), capsys)
    assert status == 0, err
    status, _, err = run_main(train.main, tiny_train_args(data_dir, tmp_path / "resumed", teacher=teacher_path,
                                                          **STARTED, max_iters=4), capsys)
    assert status == 0, err
    status, out, err = run_main(train.main, [f"--out_dir={tmp_path / 'resumed'}", "--init_from=resume",
                                             "--max_iters=8"], capsys)
    assert status == 0, err
    assert [line for line in out.splitlines() if line.startswith("resume:")] == ["resume: max_iters 4 -> 8"]
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert {"kd_loss", "ce_loss"} <= set(straight[1]) and straight[-1]["iter"] == 8
    assert resumed == straight  # exactly: bit for bit


def test_the_slurm_recipe_passing_its_config_again_resumes_and_prints_no_changes(tmp_path, monkeypatch, capsys):
    data_dir, out_dir = random_corpus(tmp_path / "random"), tmp_path / "out"
    config = tmp_path / "config.py"
    settings = train.given_settings(tiny_train_args(data_dir, out_dir, max_iters=8, eval_interval=4))
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
    with monkeypatch.context() as patch:
        signal_during_iteration(patch, signal.SIGUSR1, 4)
        status, _, err = run_main(train.main, [config], capsys)
    assert status == 0 and load_checkpoint(str(out_dir / "ckpt.pt"))[1]["iter_num"] == 5, err
    status, out, err = run_main(train.main, [config, "--init_from=resume"], capsys)
    assert status == 0, err
    assert "resume:" not in out and "note:" not in out
    assert load_checkpoint(str(out_dir / "ckpt.pt"))[1]["iter_num"] == 8


@pytest.mark.parametrize("flag, change", [
    ("--n_layer=3", "n_layer 2 -> 3"),
    ("--vocab_size=80", "vocab_size 64 -> 80"),
    ("--kron={'c_fc': (8, 16, 1)}", "kron None -> {'c_fc': (8, 16, 1)}"),
    ("--dataset=shakespeare", "dataset 'owt' -> 'shakespeare'"),
])
def test_resume_refuses_a_change_of_model_plan_vocabulary_or_dataset(tmp_path, capsys, flag, change):
    data_dir, out_dir = random_corpus(tmp_path / "random"), tmp_path / "out"
    status, _, err = run_main(train.main, tiny_train_args(data_dir, out_dir, max_iters=1, eval_interval=1), capsys)
    assert status == 0, err
    before = snapshot(out_dir)
    status, out, err = run_main(train.main, [f"--out_dir={out_dir}", "--init_from=resume", "--max_iters=2", flag],
                                capsys)
    assert status == 2 and err.count("\n") == 1 and out == ""
    assert err.startswith(f"train.py: error: resume: {change}: the model's shape, plan and vocabulary and the "
                          f"dataset cannot change mid-run"), err
    assert snapshot(out_dir) == before


def test_resume_of_a_checkpoint_train_py_did_not_write_is_one_line(tmp_path, capsys):
    out_dir = tmp_path / "out"
    save_checkpoint(make_checkpoint(tiny_gpt()), str(out_dir / "ckpt.pt"))
    status, _, err = run_main(train.main, [f"--out_dir={out_dir}", "--init_from=resume"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert f"{out_dir / 'ckpt.pt'} holds no run settings (train.py did not write it)" in err


def test_an_empty_out_dir_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where an empty out_dir would have written
    for args in (["--out_dir="], ["--out_dir=", "--init_from=resume"]):
        status, out, err = run_main(train.main, args, capsys)
        assert status == 2 and out == "" and err == "train.py: error: out_dir is empty: name the folder for ckpt.pt " \
            "and metrics.jsonl\n"
    assert os.listdir(tmp_path) == []


def test_a_missing_data_dir_is_named_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "init_model", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    missing = tmp_path / "no_such_data"
    status, _, err = run_main(train.main, tiny_train_args(str(missing), tmp_path / "out"), capsys)
    assert status == 2 and err == f"train.py: error: no such folder: data_dir={missing}\n"


def test_a_run_ends_with_one_summary_line(tmp_path, capsys):
    data_dir, out_dir = random_corpus(tmp_path / "random"), tmp_path / "out"
    status, out, err = run_main(train.main, tiny_train_args(data_dir, out_dir, max_iters=3, eval_interval=2), capsys)
    assert status == 0, err
    best = min(r["val_loss"] for r in metrics(out_dir) if "val_loss" in r)
    last = out.splitlines()[-1]
    assert last.startswith("done: 3 iterations in ") and last.endswith(
        f" s, best val loss {best:.4f}, checkpoint {out_dir / 'ckpt.pt'}"), last
    status, out, err = run_main(train.main, tiny_train_args(data_dir, tmp_path / "scored", eval_only=True), capsys)
    assert status == 0 and out.splitlines()[-1].endswith(", no checkpoint written"), err


def test_notes_only_about_settings_the_user_changed(tmp_path, capsys):
    """A model from init_from has its own shape: settings left at their defaults take it quietly."""
    data_dir = write_tokens(tmp_path / "data", [i % 64 for i in range(400)])
    source = str(tmp_path / "source.pt")
    save_checkpoint(make_checkpoint(tiny_gpt(n_embd=32, block_size=16)), source)
    shape = ("--n_layer=", "--n_head=", "--n_embd=", "--vocab_size=")
    args = [a for a in tiny_train_args(data_dir, tmp_path / "out", init_from=source, max_iters=0, eval_iters=1)
            if not a.startswith(shape)]
    status, out, err = run_main(train.main, [*args, "--n_layer=3"], capsys)
    assert status == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == [f"note: n_layer=3 in the settings; the model from init_from={source} has n_layer=2, which is "
                     f"used"]
