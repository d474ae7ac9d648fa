"""Nothing damaged loads: a checkpoint or an export whose bytes changed after they were written (a flipped bit, a
copy cut short) is refused in one line naming the file, by load_model and by the scripts, where torch.load and
safetensors alone read it without a word. A fresh one loads; an export's model.safetensors is readable by all; and a
folder, a missing path, a text or an empty file given as a model each get one line saying what is wrong."""
import json
import os
import shutil
import struct
import zlib

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from conftest import run_main, tiny_gpt, write_tokens
from safetensors.torch import load_file, save_file

import krony_to_gpt
import perplexity
import sample
from checkpoints import SAFETENSORS_CRC, load_model, load_model_config, make_checkpoint, read_checkpoint, \
    save_checkpoint
from common import UsageError, write_vocab

CHARS = list("abcdefghijklmnopqrst")  # a model of characters exports without GPT-2's tokenizer
KINDS = ("dense", "factored")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Kronecker model of characters, its checkpoint (model.pt), both its exports, and a token file."""
    folder = tmp_path_factory.mktemp("saved")
    model = tiny_gpt(vocab_size=len(CHARS), kron={"c_fc": (8, 16, 1), "c_proj": (16, 8, 1)})
    save_checkpoint(make_checkpoint(model, CHARS), str(folder / "model.pt"))
    umask = os.umask(0o022)  # the usual one, whatever this process was started with
    try:
        for kind in KINDS:
            krony_to_gpt.export(model, str(folder / kind), None, keep_factors=kind == "factored", itos=CHARS)
    finally:
        os.umask(umask)
    write_tokens(folder / "chars", np.arange(200) % len(CHARS))
    write_vocab(CHARS, str(folder / "chars"))
    return model, folder


def flip_a_bit(path, model, out):
    """A copy of path with one bit flipped in the middle of wpe's bytes (float32, as both formats store them)."""
    data = bytearray(path.read_bytes())
    weights = model.transformer.wpe.weight.detach().numpy().tobytes()
    at = data.find(weights)
    assert at > 0 and data.find(weights, at + 1) < 0
    data[at + len(weights) // 2] ^= 0x01
    out.write_bytes(data)
    return out


def cut_short(path, out):
    """A copy of path with its second half missing: a copy or download that stopped."""
    data = path.read_bytes()
    out.write_bytes(data[:len(data) // 2])
    return out


def copy_export(folder, out, damage):
    """A copy of an export folder whose model.safetensors is damage(model.safetensors, its copy)."""
    shutil.copytree(folder, out)
    weights = out / "model.safetensors"
    damage(folder / "model.safetensors", weights)
    return weights


def refusal(source):
    """The one line load_model answers source with."""
    with pytest.raises(UsageError) as refused:
        load_model(str(source))
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    return message


def test_a_fresh_checkpoint_and_both_exports_load_as_saved(saved):
    model, folder = saved
    for source in (folder / "model.pt", folder / "factored"):
        for key, value in load_model(str(source)).state_dict().items():
            assert torch.equal(value, model.state_dict()[key]), (source, key)
    assert torch.equal(load_model(str(folder / "dense")).transformer.wpe.weight, model.transformer.wpe.weight)
    for kind in KINDS:  # the CRC-32 in the header is that of every byte after it
        data = (folder / kind / "model.safetensors").read_bytes()
        size = struct.unpack("<Q", data[:8])[0]
        assert json.loads(data[8:8 + size])["__metadata__"][SAFETENSORS_CRC] == f"{zlib.crc32(data[8 + size:]):08x}"


def test_an_export_without_a_crc_still_loads(saved, tmp_path):
    model, folder = saved
    shutil.copytree(folder / "factored", tmp_path / "old")
    weights = str(tmp_path / "old/model.safetensors")
    save_file(load_file(weights), weights, metadata={"format": "pt"})
    assert torch.equal(load_model(str(tmp_path / "old")).transformer.wpe.weight, model.transformer.wpe.weight)


def test_a_checkpoint_with_a_flipped_bit_or_cut_short_is_refused(saved, tmp_path):
    model, folder = saved
    flipped = flip_a_bit(folder / "model.pt", model, tmp_path / "flipped.pt")
    unchecked = torch.load(flipped, weights_only=True)["model"]["transformer.wpe.weight"]  # torch.load never notices
    assert not torch.equal(unchecked, model.transformer.wpe.weight)
    assert refusal(flipped).startswith(f"cannot load {flipped}: ValueError: {flipped} is damaged: its bytes changed")
    with pytest.raises(ValueError, match=f"{flipped} is damaged"):
        read_checkpoint(str(flipped))
    truncated = cut_short(folder / "model.pt", tmp_path / "truncated.pt")
    assert f"{truncated} is damaged" in refusal(truncated)


@pytest.mark.parametrize("kind", KINDS)
def test_an_export_with_a_flipped_bit_or_cut_short_is_refused(saved, tmp_path, kind):
    model, folder = saved
    flipped = copy_export(folder / kind, tmp_path / "flipped", lambda src, dst: flip_a_bit(src, model, dst))
    unchecked = load_file(flipped)["transformer.wpe.weight"]  # safetensors never notices
    assert not torch.equal(unchecked, model.transformer.wpe.weight)
    assert f"{flipped} is damaged: its tensor bytes changed" in refusal(tmp_path / "flipped")
    truncated = copy_export(folder / kind, tmp_path / "truncated", cut_short)
    assert f"{truncated} is damaged" in refusal(tmp_path / "truncated")


def test_the_scripts_refuse_a_damaged_file_in_one_line_naming_it(saved, tmp_path, capsys):
    model, folder = saved
    flipped = flip_a_bit(folder / "model.pt", model, tmp_path / "flipped.pt")
    export = copy_export(folder / "dense", tmp_path / "dense", lambda src, dst: flip_a_bit(src, model, dst))
    runs = [(sample.main, [flipped, "--start=a", "--device=cpu"], flipped),
            (perplexity.main, [tmp_path / "dense", folder / "chars/val.bin", "--device=cpu"], export)]
    for main, argv, damaged in runs:
        status, _, err = run_main(main, argv, capsys)
        assert status == 2 and len(err.splitlines()) == 1 and f"{damaged} is damaged" in err, err


def test_an_exports_weights_are_readable_by_all_like_its_other_files(saved):
    _, folder = saved
    for kind in KINDS:
        assert os.stat(folder / kind / "model.safetensors").st_mode & 0o777 == 0o644
        assert os.stat(folder / kind / "config.json").st_mode & 0o777 == 0o644


def test_a_folder_given_as_a_checkpoint_says_which_file_was_meant(saved, tmp_path):
    _, folder = saved
    run = tmp_path / "run"
    os.makedirs(run)
    shutil.copyfile(folder / "model.pt", run / "ckpt.pt")
    meant = f"(did you mean {run / 'ckpt.pt'}?)"
    assert refusal(run).endswith(f"{run} is a folder without config.json, not a Hugging Face model {meant}")
    with pytest.raises(UsageError, match=f"without config.json.*{meant}".replace("(", r"\(").replace("?)", r"\?\)")):
        load_model_config(str(run))
    with pytest.raises(ValueError, match=f"{run} is a folder, not a checkpoint file"):
        read_checkpoint(str(run))
    os.makedirs(tmp_path / "empty")
    assert refusal(tmp_path / "empty").endswith("is a folder without config.json, not a Hugging Face model")


def test_a_missing_folder_is_said_not_to_exist_not_to_be_a_bad_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # a hub name is not looked up online
    for source in ("mydir", "mydir/run/", "runs/a/b"):  # a hub name, then paths no hub name can be
        for load in (load_model, load_model_config):
            with pytest.raises(UsageError, match=f"cannot load {source}: FileNotFoundError: no such file or "
                                                 f"directory: {source}") as refused:
                load(source)
            assert "Repo id" not in str(refused.value)


def test_a_text_or_empty_file_is_said_not_to_be_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("my notes")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name, why in (("notes.pt", "it is not the zip archive torch.save writes"), ("empty.pt", "it is empty")):
        path = tmp_path / name
        assert refusal(path) == f"cannot load {path}: ValueError: {path} is not a readable krony checkpoint: {why}"
