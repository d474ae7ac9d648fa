"""kron_decompose.py as a user meets it: an existing --out is refused (one line, exit 2, before any weights, the file
left as it was) unless --overwrite; the default --out is one per teacher, even for two teachers both called
ckpt.pt; the printed next: command trains the student it wrote; --list --target shows the closest shapes where the
eye lands, and --top N only those; --help is short and shows the defaults."""
import hashlib
import os
import shlex

import numpy as np
import pytest
from conftest import run_main, snapshot, tiny_gpt, tiny_train_args, write_tokens

import checkpoints
import kron_decompose
import train
from checkpoints import load_checkpoint, make_checkpoint, save_checkpoint
from common import write_vocab
from configurator import load_config
from kron_shapes import list_shapes

SHAPE = ["4", "32", "1"]  # tiny_gpt's n_embd 16: c_fc 16x64 as A 4x32 (x) B 4x2


@pytest.fixture
def teacher(tmp_path):
    path = tmp_path / "teacher.pt"
    save_checkpoint(make_checkpoint(tiny_gpt()), str(path))
    return path


def refuse_weights(monkeypatch):
    """Make reading any teacher's weights fail the test: a refusal must come first."""
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: pytest.fail("the teacher's weights were read"))


def test_an_existing_out_is_refused_in_one_line_and_left_as_it_was(tmp_path, teacher, monkeypatch, capsys):
    out = tmp_path / "mine.pt"
    out.write_bytes(b"a file the user made")
    before = snapshot(tmp_path)
    refuse_weights(monkeypatch)
    status, stdout, err = run_main(kron_decompose.main, [*SHAPE, "--model", teacher, "--out", out], capsys)
    assert status == 2 and stdout == "" and len(err.splitlines()) == 1
    assert err == f"kron_decompose.py: error: --out {out} exists: give another --out, or --overwrite to replace it\n"
    assert snapshot(tmp_path) == before


def test_the_default_out_is_refused_the_second_time(tmp_path, teacher, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default --out is relative: checks/...
    status, stdout, err = run_main(kron_decompose.main, [*SHAPE, "--model", teacher], capsys)
    assert status == 0, err
    written = stdout.split("wrote ")[1].split("\n")[0]
    before = snapshot(tmp_path)
    refuse_weights(monkeypatch)
    status, _, err = run_main(kron_decompose.main, [*SHAPE, "--model", teacher], capsys)
    assert status == 2 and len(err.splitlines()) == 1 and f"--out {written} exists" in err
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_the_out(tmp_path, teacher, capsys):
    out = tmp_path / "mine.pt"
    out.write_bytes(b"a file the user made")
    status, _, err = run_main(kron_decompose.main, [*SHAPE, "--model", teacher, "--out", out, "--overwrite"], capsys)
    assert status == 0, err
    student, ckpt = load_checkpoint(str(out))
    assert ckpt["init"]["kron"]["c_fc"] == [4, 32, 1] and student.config.plan
    assert sorted(os.listdir(tmp_path)) == ["mine.pt", "teacher.pt"]  # no temporary file left behind


def test_two_teachers_called_ckpt_pt_get_their_own_default_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    written = {}
    for run in ("out-a", "out-b"):  # train.py names every run's checkpoint ckpt.pt
        teacher = tmp_path / run / "ckpt.pt"
        save_checkpoint(make_checkpoint(tiny_gpt()), str(teacher))  # the same weights: only the path differs
        status, stdout, err = run_main(kron_decompose.main, [*SHAPE, "--model", f"{run}/ckpt.pt"], capsys)
        assert status == 0, err
        digest = hashlib.sha256(str(teacher.resolve()).encode()).hexdigest()[:6]
        written[run] = os.path.join("checks", f"krony_{run}-ckpt-{digest}_4_32_1_vl.pt")
        assert f"wrote {written[run]}\n" in stdout
    for run, path in written.items():
        assert load_checkpoint(path)[1]["init"]["teacher"] == f"{run}/ckpt.pt"
    assert kron_decompose.teacher_name("gpt2") == "gpt2"  # a hub name is already unique


def test_the_next_command_fine_tunes_a_char_student_on_the_teachers_data(tmp_path, monkeypatch, capsys):
    itos = list("abcdefghij .,\n")
    data_dir = write_tokens(tmp_path / "data", np.random.default_rng(0).integers(0, len(itos), 3000))
    write_vocab(itos, data_dir)
    run = load_config(train.SETTINGS, tiny_train_args(data_dir, tmp_path / "teacher", n_embd=16, block_size=8,
                                                      vocab_size=len(itos), max_iters=400, learning_rate=1e-2))
    teacher = tiny_gpt(vocab_size=len(itos))
    save_checkpoint(make_checkpoint(teacher, itos, config=run), str(tmp_path / "teacher" / "ckpt.pt"))
    monkeypatch.chdir(tmp_path)
    status, stdout, err = run_main(kron_decompose.main, [*SHAPE, "--model", "teacher/ckpt.pt"], capsys)
    assert status == 0, err
    command = shlex.split(stdout.split("next: ")[1].split("\n")[0])
    assert command[:2] == ["python", "train.py"]
    settings = dict(arg[2:].split("=", 1) for arg in command[2:])
    out = stdout.split("wrote ")[1].split("\n")[0]
    # the teacher's data and batches; a twentieth of its 400 iterations at 0.3 of its learning rate
    assert settings == {"init_from": out, "out_dir": out[:-len(".pt")], "data_dir": data_dir, "block_size": "8",
                        "batch_size": "8", "gradient_accumulation_steps": "2", "max_iters": "20",
                        "lr_decay_iters": "20", "warmup_iters": "1", "learning_rate": "0.003", "min_lr": "0.0003",
                        "eval_interval": "10", "eval_iters": "4", "compile": "False"}

    status, _, err = run_main(train.main, command[2:] + ["--max_iters=3"], capsys)
    assert status == 0, err
    student, ckpt = load_checkpoint(os.path.join(settings["out_dir"], "ckpt.pt"))
    assert ckpt["iter_num"] == 3 and ckpt["itos"] == itos and student.config.plan.shape("c_fc", 0) == (4, 32, 1)


def test_a_char_teacher_without_its_run_gets_char_settings_and_names_the_missing_data():
    command = kron_decompose.next_command("checks/s.pt", "--dim_1=4", None, list("abc"))
    assert command.startswith("python train.py --init_from=checks/s.pt --out_dir=checks/s --data_dir=DIR ")
    assert "--max_iters=300 " in command and "--learning_rate=0.0003 " in command  # not GPT-2's 600,000
    assert command.endswith("(DIR: a dataset of the teacher's 3 characters, with their meta.json)")


def shape_of(row):
    """A listing row's first three columns, as printed."""
    return str(row["dim_1"]), str(row["dim_2"]), str(row["factors"])


def closest_rows(rows, target):
    """The shapes of every row, nearest to target parameters without wpe first (the test's own sort)."""
    return [shape_of(r) for r in sorted(rows, key=lambda r: abs(r["params_no_wpe"] - target))]


def test_list_target_repeats_the_closest_shapes_at_the_end(capsys):
    status, out, err = run_main(kron_decompose.main, ["--list", "--factors", "1,2", "--target", "95M"], capsys)
    assert status == 0, err
    lines = out.splitlines()
    rows = list_shapes(768, (1, 2))
    nearest = min(abs(r["params_no_wpe"] - 95e6) for r in rows)
    tied = {shape_of(r) for r in rows if abs(r["params_no_wpe"] - 95e6) == nearest}
    assert ("384", "3072", "1") in tied  # the paper's 95M shape, with the shapes of the same count
    assert lines[-1] == f"{len(rows)} valid shapes; {len(tied)} marked as closest to 95,000,000 parameters without wpe"
    assert {tuple(line.split()[:3]) for line in lines[-1 - len(tied):-1]} == tied
    assert lines[-2 - len(tied)] == lines[2]  # the column names, again
    assert lines[-3 - len(tied)] == "closest to 95,000,000 parameters without wpe (--top N: the N closest alone):"


def test_list_top_prints_only_the_n_closest_closest_first(capsys):
    status, out, err = run_main(kron_decompose.main, ["--list", "--factors", "1,2,4", "--target", "70M",
                                                      "--top", "4"], capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 + 4 + 1  # two lines on dense and FLOPs, the column names, 4 rows, a summary
    shown = [tuple(line.split()[:3]) for line in lines[3:7]]
    assert shown == closest_rows(list_shapes(768, (1, 2, 4)), 70e6)[:4]
    assert lines[3].endswith("<- 70M") and lines[-1].startswith("the 4 of ")


@pytest.mark.parametrize("argv", [["--list", "--top", "3"], ["--list", "--target", "81M", "--top", "0"],
                                  ["--top", "3", "--target", "81M"]])
def test_top_needs_list_and_target(argv, capsys):
    status, out, err = run_main(kron_decompose.main, argv, capsys)
    assert status == 2 and out == "" and len(err.splitlines()) == 1 and "--top N" in err, err


def test_help_is_short_and_shows_every_default(capsys):
    status, out, _ = run_main(kron_decompose.main, ["--help"], capsys)
    assert status == 0 and len(out.splitlines()) < 90
    for action in kron_decompose.build_parser()._actions:
        if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
            assert "(default %(default)s" in action.help, action.dest
            assert f"(default {action.default}" in out.replace("\n" + " " * 24, " "), action.dest
