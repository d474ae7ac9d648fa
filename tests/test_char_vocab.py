"""A character-level testbed end to end: a dataset whose meta.json says its ids are characters trains a model of
its vocabulary that carries them; perplexity.py scores it per character (with bits per character), sample.py
writes characters, kron_decompose.py, train.py and both exports of krony_to_gpt.py keep them, without GPT-2's
tokenizer; and a model is refused data whose ids mean something else to it (one line, exit 2, nothing written)."""
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import run_main, snapshot, tiny_gpt, tiny_train_args, train_in_process, write_tokens
from torch.nn import functional as F

import kron_decompose
import krony_to_gpt
import perplexity
import sample
import train
from checkpoints import load_model, load_vocab, make_checkpoint, save_checkpoint
from common import read_vocab, write_vocab
from model import GPT, GPTConfig

WORDS = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "nobler", "mind"]
BLOCK_SIZE = 16


def corpus_text(n=3000, seed=0):
    """Words in random order with commas and full stops: 20 distinct characters, something a model can learn."""
    rng = np.random.default_rng(seed)
    text = ""
    while len(text) < n:
        text += " ".join(rng.choice(WORDS, size=rng.integers(3, 9))) + rng.choice([", ", ".\n"])
    return text[:n]


def write_char_dataset(data_dir, text, itos):
    """train.bin and val.bin of text's character ids, and the meta.json of itos."""
    stoi = {c: i for i, c in enumerate(itos)}
    write_tokens(data_dir, [stoi[c] for c in text])
    write_vocab(itos, str(data_dir))
    return str(data_dir)


def char_train_args(data_dir, out_dir, **overrides):
    """tiny_train_args without vocab_size: a scratch run takes it from the dataset's meta.json."""
    return [arg for arg in tiny_train_args(data_dir, out_dir, block_size=BLOCK_SIZE, **overrides)
            if not arg.startswith("--vocab_size=")]


def open_checkpoint(path):
    """(model in eval mode, checkpoint dict) read with torch and model.py alone, not checkpoints.py."""
    checkpoint = torch.load(path, weights_only=True)
    model = GPT(GPTConfig.from_args(checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """(folder, itos, text): folder/data is a character dataset, folder/run/ckpt.pt a model trained on it from
    scratch."""
    folder = tmp_path_factory.mktemp("char")
    text = corpus_text()
    itos = sorted(set(text))
    write_char_dataset(folder / "data", text, itos)
    train_in_process(char_train_args(str(folder / "data"), folder / "run", max_iters=40, lr_decay_iters=40))
    return folder, itos, text


def test_a_scratch_char_model_carries_its_characters_and_is_scored_per_character(char_run, capsys):
    folder, itos, text = char_run
    assert len(itos) == 20
    model, checkpoint = open_checkpoint(folder / "run/ckpt.pt")
    assert checkpoint["itos"] == itos and checkpoint["model_args"]["vocab_size"] == len(itos)

    out = folder / "scores.json"
    status, stdout, err = run_main(perplexity.main, [folder / "run/ckpt.pt", folder / "data/val.bin",
                                                     "--device=cpu", "--out", out], capsys)
    assert status == 0, err
    result = json.loads(out.read_text())["datasets"][str(folder / "data/val.bin")]
    ids = torch.tensor([itos.index(c) for c in text])
    losses = []  # the paper's protocol: disjoint windows, labels = inputs shifted, mean of the window means
    with torch.no_grad():
        for begin in range(0, len(ids), BLOCK_SIZE):
            window = ids[begin:begin + BLOCK_SIZE]
            if len(window) > 1:
                losses.append(F.cross_entropy(model(window[None])[0][0, :-1], window[1:]))
    expected = math.exp(torch.stack(losses).mean().item())
    assert expected < len(itos) / 2  # it learned something: a uniform guess scores 20
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert result["unit"] == "character" and result["tokens"] == len(text)
    assert result["bits_per_character"] == pytest.approx(math.log2(result["perplexity"]), rel=1e-12)
    header, row = stdout.splitlines()
    assert "bits/char" in header.split() and f"{result['bits_per_character']:.4f}" in row.split()


def test_sample_prints_the_greedy_characters(char_run, capsys, monkeypatch):
    folder, itos, _ = char_run
    monkeypatch.setattr(sample, "gpt2_encoding", lambda: pytest.fail("sample.py loaded GPT-2's tokenizer"))
    status, out, err = run_main(sample.main, [folder / "run/ckpt.pt", "--start=to be", "--temperature=0",
                                              "--max_new_tokens=10", "--num_samples=2", "--device=cpu"], capsys)
    assert status == 0, err
    model, _ = open_checkpoint(folder / "run/ckpt.pt")
    idx = torch.tensor([[itos.index(c) for c in "to be"]])
    with torch.no_grad():
        for _ in range(10):
            idx = torch.cat([idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = "".join(itos[i] for i in idx[0].tolist())
    assert out == f"{expected}\n---------------\n" * 2


def test_a_char_student_trains_and_both_exports_keep_the_characters(char_run, tmp_path, capsys):
    folder, itos, _ = char_run
    student = tmp_path / "student.pt"
    status, _, err = run_main(kron_decompose.main, ["8", "32", "1", "--model", folder / "run/ckpt.pt",
                                                    "--out", student], capsys)
    assert status == 0, err
    assert torch.load(student, weights_only=True)["itos"] == itos
    train_in_process(char_train_args(str(folder / "data"), tmp_path / "run", init_from=str(student), dim_1=8,
                                     dim_2=32, factors=1, max_iters=4, eval_interval=4, lr_decay_iters=4))
    trained = tmp_path / "run/ckpt.pt"
    model, checkpoint = open_checkpoint(trained)
    assert checkpoint["itos"] == itos and model.config.plan

    greedy = ["--start=the ", "--temperature=0", "--max_new_tokens=8", "--num_samples=1", "--device=cpu"]
    scored = [folder / "data/val.bin", "--max_tokens=400", "--device=cpu"]
    status, reference_sample, err = run_main(sample.main, [trained, *greedy], capsys)
    assert status == 0 and reference_sample.startswith("the "), err
    status, _, err = run_main(perplexity.main, [trained, *scored, "--out", tmp_path / "ckpt.json"], capsys)
    assert status == 0, err
    idx = torch.randint(0, len(itos), (2, BLOCK_SIZE), generator=torch.Generator().manual_seed(0))
    for kind, flags in (("dense", []), ("factored", ["--keep_factors"])):
        export = tmp_path / kind
        status, out, err = run_main(krony_to_gpt.main, [trained, export, *flags, "--tokenizer",
                                                        tmp_path / "no_tokenizer"], capsys)  # never loaded
        assert status == 0, err
        assert "meta.json, no GPT-2 tokenizer (its ids are the 20 characters of meta.json)" in out
        files = os.listdir(export)
        gpt2_files = [f for f in files if f.startswith(("vocab", "merges", "special_tokens"))]
        assert "meta.json" in files and not gpt2_files, files
        assert json.loads((export / "tokenizer.json").read_text())["model"]["vocab"] == {c: i for i, c in
                                                                                          enumerate(itos)}
        assert read_vocab(str(export)) == load_vocab(str(export)) == itos
        config = json.loads((export / "config.json").read_text())
        assert config["vocab_size"] == 20 and config["eos_token_id"] is None  # GPT-2's 50256 is no character
        with torch.no_grad():
            torch.testing.assert_close(load_model(str(export))(idx)[0], model(idx)[0], rtol=0, atol=1e-5)
        assert run_main(sample.main, [export, *greedy], capsys)[1] == reference_sample
        status, _, err = run_main(perplexity.main, [export, *scored, "--out", tmp_path / f"{kind}.json"], capsys)
        assert status == 0, err
        scores = [json.loads((tmp_path / name).read_text())["datasets"][str(scored[0])]["perplexity"]
                  for name in ("ckpt.json", f"{kind}.json")]
        assert scores[1] == pytest.approx(scores[0], rel=1e-5)


def test_ids_that_mean_something_else_are_refused_with_one_line(char_run, tmp_path, capsys):
    folder, itos, text = char_run
    char_model, data = folder / "run/ckpt.pt", str(folder / "data")
    other_chars = write_char_dataset(tmp_path / "other_chars", text.upper(), [c.upper() for c in itos])
    gpt2_tokens = write_tokens(tmp_path / "gpt2_tokens", np.arange(400) % len(itos))  # no meta.json
    beyond_gpt2 = write_tokens(tmp_path / "beyond_gpt2", [1, 2, 60000] * 100)
    gpt2_model, small_model = tmp_path / "gpt2_vocab.pt", tmp_path / "small_vocab.pt"
    save_checkpoint(make_checkpoint(tiny_gpt(n_embd=32, block_size=BLOCK_SIZE, vocab_size=50257)), str(gpt2_model))
    save_checkpoint(make_checkpoint(tiny_gpt(block_size=BLOCK_SIZE, vocab_size=len(itos))), str(small_model))
    out = ["--device=cpu", "--out", tmp_path / "out.json"]
    runs = [
        (train.main, char_train_args(other_chars, tmp_path / "a", init_from=char_model),
         "trained on other characters than the 20"),
        (train.main, char_train_args(data, tmp_path / "b", init_from=gpt2_model),
         "has a vocabulary of 50,257 tokens, but"),
        (train.main, char_train_args(beyond_gpt2, tmp_path / "c"),
         "holds token id 60000, beyond the model's vocabulary of 50,257"),
        (perplexity.main, [char_model, f"{gpt2_tokens}/val.bin", *out], "holds GPT-2 tokens"),
        (perplexity.main, [char_model, "wiki2", *out], "wiki2 holds GPT-2 tokens"),  # before any download
        (perplexity.main, [char_model, f"{other_chars}/val.bin", *out], "trained on other characters than the 20"),
        (perplexity.main, [gpt2_model, f"{data}/val.bin", *out], "has a vocabulary of 50,257 tokens, but"),
        (sample.main, [char_model, "--start=to BE", "--device=cpu"],
         "the character 'B' is not in the model's vocabulary of 20"),
        (sample.main, [small_model, "--device=cpu"], "carries no characters"),
    ]
    before = snapshot(tmp_path), snapshot(folder)
    for main, argv, message in runs:
        status, _, err = run_main(main, argv, capsys)
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and message in lines[0], (main.__module__, argv, err)
    assert (snapshot(tmp_path), snapshot(folder)) == before
