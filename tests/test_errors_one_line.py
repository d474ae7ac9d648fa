"""Mistakes in the arguments of bench.py, plot.py, the data/*/prepare.py scripts and perplexity.py, run in this
process: exit status 2, one line on stderr, no traceback, and nothing started or written. perplexity.py puts only
full-protocol scores into an export's model card; the --help of perplexity.py and sample.py shows every default."""
import json
import os
import re

import numpy as np
import pytest
from conftest import gpt2_tokenizer_or_skip, hf_tokenizer_or_skip, load_script, run_main, snapshot, tiny_gpt

import bench
import perplexity
import plot
import sample
from checkpoints import make_checkpoint, save_checkpoint

PREPARE_SCRIPTS = ["data/owt/prepare.py", "data/shakespeare/prepare.py", "data/shakespeare_char/prepare.py"]


def assert_one_line(main, argv, capsys, message):
    """main(argv) exits 2 with exactly one line on stderr that says message; its stdout."""
    status, out, err = run_main(main, argv, capsys)
    assert status == 2 and len(err.splitlines()) == 1 and "Traceback" not in err and message in err, (argv, err)
    return out


@pytest.fixture
def folder(tmp_path):
    """A folder holding a file (to put a folder under), a token file beyond GPT-2's vocabulary and a run's
    metrics.jsonl."""
    (tmp_path / "a_file").write_text("not a folder")
    np.array([1, 2, 60000], dtype=np.uint16).tofile(tmp_path / "big.bin")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"run": 1, "iter": 0, "loss": 4.0, "val_loss": 4.1}\n')
    return tmp_path


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot create anything in: one without write permission, or for root, whom permission
    bits do not stop, /sys (read-only in containers); skipped where there is none."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    read_only = [folder for folder in (str(locked), "/sys") if os.path.isdir(folder) and not can_create_in(folder)]
    if not read_only:
        pytest.skip("no folder here is read-only to this process")
    yield read_only[0]
    locked.chmod(0o700)


def can_create_in(folder):
    probe = os.path.join(folder, f"probe{os.getpid()}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    os.rmdir(probe)
    return True


BENCH_CASES = [
    (["--device=nonsense"], "is not a torch device"),
    (["--iters=0"], "--iters must be at least 1, got 0"),
    (["--iters=five"], "argument --iters: invalid int value: 'five'"),
    (["--warmup=-1"], "--warmup must be at least 0"),
    (["--suite=gpu", "--seq_len=0"], "--seq_len must be at least 1"),  # not silently the suite's default
    (["--eval_tokens=1", "--eval=wiki2"], "--eval_tokens must be at least 2"),
    (["--dtype=float32,int8"], "--dtype int8: expected float32, bfloat16 or float16"),
    (["--models=GPT-2 124M,Krony 80M"], "--models Krony 80M: expected some of GPT-2 124M,Krony 81M"),
    (["--layer_models=81M,80M"], "--layer_models 80M: expected some of 81M,95M,<60M"),
    (["--compile", "--compile_backend=nope"], "--compile_backend nope is not a torch.compile backend"),
    (["--decode", "--prompt_len=1000"], "--prompt_len 1000 and 64 new tokens do not fit GPT-2's context of 1024"),
    (["--decode", "--n_layer=1"], "--n_layer must be at least 2"),
    (["--act", "--calibration_tokens=100"], "--calibration_tokens must be at least GPT-2's context of 1024"),
    (["--decode_profile"], "--decode_profile profiles the decode section: add --decode"),
    (["--out={d}/missing/results"], "no such folder {d}/missing"),
    (["--eval=wiki3"], "unknown dataset 'wiki3'"),
    (["--eval=all"], "--eval all: give one dataset"),
    (["--eval={d}/missing.bin"], "no such file: {d}/missing.bin"),
    (["--eval={d}/big.bin"], "holds token id 60000, beyond GPT-2's vocabulary"),
    (["--data_dir={d}"], "--data_dir is where --eval reads its dataset: add --eval"),
    (["--eval=wiki2", "--data_dir={d}/missing"], "--data_dir {d}/missing is not a directory"),
    (["--eval=wiki2", "--data_dir={d}"], "--data_dir must hold wikitext-2-v1.test.jsonl"),
]


@pytest.mark.parametrize("argv,message", BENCH_CASES, ids=[" ".join(argv) for argv, _ in BENCH_CASES])
def test_bench_checks_every_argument_before_any_benchmark(argv, message, folder, capsys, monkeypatch):
    for section in ("bench_layers", "bench_models", "bench_eval", "bench_export", "bench_act", "bench_decode"):
        monkeypatch.setattr(bench, section, lambda *args, section=section: pytest.fail(f"{section} started"))
    out = assert_one_line(bench.main, ["--device=cpu", *(a.format(d=folder) for a in argv)], capsys,
                          message.format(d=folder))
    assert out == ""  # not even the header a run starts with


def test_plot_into_a_missing_folder(folder, capsys):
    assert_one_line(plot.main, [folder / "run", "-o", folder / "missing" / "losses.png"], capsys,
                    f"no such folder {folder / 'missing'}")
    assert not (folder / "missing").exists()


@pytest.mark.parametrize("script", PREPARE_SCRIPTS)
def test_prepare_refuses_an_out_dir_under_a_file(script, folder, capsys):
    prepare = load_script(script.replace("/", "_")[:-3], script)
    before = snapshot(folder)
    # the check comes before any download, hub look-up or tokenizing: no network or input is needed to reach it
    assert_one_line(prepare.main, ["--out_dir", folder / "a_file" / "out"], capsys,
                    f"{folder / 'a_file'} is a file, not a folder")
    assert snapshot(folder) == before


@pytest.mark.parametrize("script", PREPARE_SCRIPTS)
def test_prepare_refuses_an_out_dir_in_a_read_only_place(script, read_only_dir, capsys):
    prepare = load_script(script.replace("/", "_")[:-3], script)
    assert_one_line(prepare.main, ["--out_dir", os.path.join(read_only_dir, "tokens")], capsys,
                    f"cannot write in {read_only_dir}")


def test_shakespeare_refuses_a_download_dir_under_a_file(folder, capsys):
    prepare = load_script("data_shakespeare_prepare", "data/shakespeare/prepare.py")
    assert_one_line(prepare.main, ["--out_dir", folder / "out", "--download_dir", folder / "a_file" / "downloads"],
                    capsys, f"--download_dir {folder / 'a_file' / 'downloads'}: {folder / 'a_file'} is a file")


def test_perplexity_refuses_a_missing_data_dir(folder, capsys):
    checkpoint = folder / "tiny.pt"
    save_checkpoint(make_checkpoint(tiny_gpt()), str(checkpoint))
    assert_one_line(perplexity.main, [checkpoint, "wiki2", "--data_dir", folder / "missing"], capsys,
                    f"--data_dir {folder / 'missing'} is not a directory")


# --- the model card takes full-protocol scores only --------------------------------------------------

def test_model_card_keeps_full_protocol_scores_only(tmp_path, capsys):
    import krony_to_gpt
    from model_card import split_card
    gpt2_tokenizer_or_skip()
    hf_tokenizer_or_skip()
    save_checkpoint(make_checkpoint(tiny_gpt(vocab_size=50257, block_size=16)), str(tmp_path / "tiny.pt"))
    export = tmp_path / "export"
    krony_to_gpt.main([str(tmp_path / "tiny.pt"), str(export)])
    data_dir = tmp_path / "eval"  # a few rows under wiki2's file name: about 100 tokens
    data_dir.mkdir()
    rows = [" = Robert Boulter = ", " Robert Boulter is an English film , television and theatre actor . " * 3,
            " He had a guest @-@ starring role on the television series The Bill in 2000 . " * 2]
    (data_dir / "wikitext-2-v1.test.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    card = export / "README.md"

    def score(*flags):
        status, out, err = run_main(perplexity.main, [export, "wiki2", "--data_dir", data_dir, "--device", "cpu",
                                                      "--out", tmp_path / "r.json", *flags], capsys)
        assert status == 0 and out.startswith("dataset"), err
        return json.loads((tmp_path / "r.json").read_text())["datasets"]["wiki2"]["perplexity"], err

    def card_perplexity():
        results = split_card(card.read_text())[0]["model-index"][0]["results"]
        return [metric["value"] for result in results for metric in result["metrics"]]

    exported = card.read_text()
    partial_flags = [["--max_tokens", 40], ["--stride", 8], ["--dtype", "bfloat16"]]
    for flags in partial_flags:  # never scored: the card stays as the export wrote it
        _, err = score(*flags)
        said = [line for line in err.splitlines() if "unchanged" in line]
        assert said == [f"left {card} unchanged: its model-index takes only full-protocol scores, and this run used "
                        f"{flags[0]} {flags[1]}"], err
        assert card.read_text() == exported
    full, err = score()
    assert f"added wiki2 to {card}'s model-index" in err
    assert card_perplexity() == [pytest.approx(full, abs=1e-4)]
    assert "paper's protocol" in card.read_text() and "unchanged" not in err
    scored = card.read_text()
    for flags in partial_flags:  # a partial score never replaces the full one
        partial, _ = score(*flags)
        assert partial != pytest.approx(full, abs=1e-4)  # a different number, kept out of the card
        assert card.read_text() == scored


# --- --help --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("main,defaults", [
    (perplexity.main, ["(default: all)", "(default: float32", "(default: the paper's disjoint windows)"]),
    (sample.main, ["(default: 3)", "(default: 200)", "(default: 0.8)", "(default: 1337)", "(default: float32)"])])
def test_help_is_short_and_shows_every_default(main, defaults, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    status, out, _ = run_main(main, ["--help"], capsys)
    assert status == 0 and len(out.splitlines()) <= 45, out
    options = out.split("options:\n")[1].split("\n\n")[0]
    entries = re.split(r"\n(?=  -)", options)  # one per option, its wrapped lines joined
    assert len(entries) > 5 and all("(default: " in entry for entry in entries if not entry.startswith("  -h")), out
    for default in defaults:
        assert default in " ".join(out.split()), default
