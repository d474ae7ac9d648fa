"""One way to open a model: every script opens checkpoints and Hugging Face folders (dense, or factored by
krony_to_gpt.py --keep_factors) through checkpoints.load_model, which keeps what the source holds, refuses what
it lacks or what does not fit, and answers an unreadable file with one line."""
import json
import os
import shutil

import pytest
import torch
from conftest import (hf_tokenizer_or_skip, metrics, random_corpus, run_main, tiny_gpt, tiny_train_args,
                      train_in_process)
from safetensors.torch import load_file, save_file

import kron_decompose
import krony_to_gpt
import perplexity
import sample
import train
from checkpoints import load_checkpoint, load_model, make_checkpoint, save_checkpoint
from common import UsageError
from kron_shapes import Plan

VOCAB = 50257  # the exports carry GPT-2's tokenizer
PER_BLOCK = {"c_fc": (8, 16, 1), "c_fc@1": (8, 16, 2), "c_proj": (16, 8, 1), "attn_proj@0": (4, 4, 1)}


def corpus(data_dir):
    return random_corpus(data_dir, vocab_size=VOCAB, n=3000)


def train_args(data_dir, out_dir, **overrides):
    """A two-step run of the exported model's shape."""
    settings = dict(n_embd=16, vocab_size=VOCAB, batch_size=4, gradient_accumulation_steps=1, max_iters=2,
                    eval_interval=2, eval_iters=2, learning_rate=1e-3, warmup_iters=0, lr_decay_iters=2, min_lr=1e-4)
    return tiny_train_args(data_dir, out_dir, **{**settings, **overrides})


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A per-block plan through the pipeline: kron_decompose.py of a dense teacher, train.py for 2 steps, then
    the trained model, its checkpoint (model.pt) and both of its exports (dense and factored)."""
    tokenizer = hf_tokenizer_or_skip()
    folder = tmp_path_factory.mktemp("exports")
    save_checkpoint(make_checkpoint(tiny_gpt(n_embd=16, block_size=16, vocab_size=VOCAB)), folder / "teacher.pt")
    kron = [f"--kron={key}={r}x{c}:{f}" for key, (r, c, f) in PER_BLOCK.items()]
    kron_decompose.main([*kron, "--model", str(folder / "teacher.pt"), "--out", str(folder / "init.pt")])
    train_in_process(train_args(corpus(folder / "data"), folder / "run", init_from=str(folder / "init.pt")))
    model, _ = load_checkpoint(str(folder / "run/ckpt.pt"))
    assert model.config.plan == Plan.from_settings(16, 2, VOCAB, kron=PER_BLOCK)
    shutil.copyfile(folder / "run/ckpt.pt", folder / "model.pt")
    for kind in ("dense", "factored"):
        krony_to_gpt.export(model, str(folder / kind), tokenizer, keep_factors=kind == "factored")
    return model, folder


def test_a_factored_export_opens_with_its_factors_and_plan_bit_for_bit(exports):
    model, folder = exports
    opened = load_model(str(folder / "factored"))
    assert opened.config.plan == model.config.plan
    assert opened.transformer.h[1].mlp.c_fc.A.shape[0] == 2 and opened.transformer.h[0].mlp.c_fc.A.shape[0] == 1
    expected = model.state_dict()
    assert set(opened.state_dict()) == set(expected)
    for key, value in opened.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_per_block_plan_scores_the_same_as_checkpoint_and_both_exports(exports, tmp_path):
    model, folder = exports
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(idx)[0]
        for source in ("model.pt", "dense", "factored"):
            torch.testing.assert_close(load_model(str(folder / source))(idx)[0], reference, rtol=0, atol=2e-5)
    corpus(tmp_path / "data")
    scores = {}
    for source in ("model.pt", "dense", "factored"):
        out = tmp_path / f"{source}.json"
        perplexity.main([str(folder / source), str(tmp_path / "data/val.bin"), "--max_tokens=200", "--device=cpu",
                         "--out", str(out)])
        scores[source] = next(iter(json.loads(out.read_text())["datasets"].values()))["perplexity"]
    assert max(scores.values()) - min(scores.values()) < 1e-4 * scores["model.pt"], scores


def test_train_from_a_factored_export_starts_from_its_factors(exports, tmp_path):
    """The old train.py opened this folder as a dense GPT-2: every MLP re-initialised at random, loss ~10.3."""
    model, folder = exports
    data_dir = corpus(tmp_path / "data")
    for source in ("model.pt", "factored"):
        train_in_process(train_args(data_dir, tmp_path / source, init_from=str(folder / source), learning_rate=0.0,
                                    decay_lr=False))
    ckpt_model, checkpoint = load_checkpoint(str(tmp_path / "factored/ckpt.pt"))
    assert ckpt_model.config.plan == model.config.plan
    for key, value in ckpt_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key  # learning rate 0: the factors as exported
    from_export, from_checkpoint = metrics(tmp_path / "factored"), metrics(tmp_path / "model.pt")
    assert [r["loss"] for r in from_export if "loss" in r] == [r["loss"] for r in from_checkpoint if "loss" in r]
    assert from_export[0]["val_loss"] == from_checkpoint[0]["val_loss"]


def rewrite_safetensors(src, dst, edit):
    shutil.copytree(src, dst)
    weights = load_file(os.path.join(dst, "model.safetensors"))
    edit(weights)
    save_file(weights, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return str(dst)


@pytest.mark.parametrize("kind", ["dense", "factored"])
def test_a_folder_missing_a_weight_or_holding_an_extra_one_is_refused(exports, tmp_path, kind):
    _, folder = exports
    missing = rewrite_safetensors(folder / kind, tmp_path / "missing",
                                  lambda w: w.pop(next(k for k in w if k.endswith("h.1.mlp.c_proj.bias"))))
    extra = rewrite_safetensors(folder / kind, tmp_path / "extra",
                                lambda w: w.update({"transformer.h.0.mlp.c_fc.C": torch.zeros(3)}))
    for source, fragment in ((missing, "h.1.mlp.c_proj.bias"), (extra, "transformer.h.0.mlp.c_fc.C")):
        with pytest.raises(UsageError, match=f"cannot load {source}: .*{fragment}"):
            load_model(source)
    data_dir = corpus(tmp_path / "data")
    with pytest.raises(UsageError, match="cannot load init_from="):
        train_in_process(train_args(data_dir, tmp_path / "run", init_from=missing))
    assert not os.path.exists(tmp_path / "run")


def test_an_unreadable_weights_file_is_one_line_and_exit_2_in_every_script(exports, tmp_path, capsys):
    _, folder = exports
    data_dir = corpus(tmp_path / "data")
    broken = {}
    for kind in ("dense", "factored"):
        broken[kind] = tmp_path / f"truncated_{kind}"
        shutil.copytree(folder / kind, broken[kind])
        path = broken[kind] / "model.safetensors"
        path.write_bytes(path.read_bytes()[:1000])
    truncated_pt = tmp_path / "truncated.pt"
    truncated_pt.write_bytes((folder / "model.pt").read_bytes()[:5000])
    runs = []
    for source in (broken["dense"], broken["factored"], truncated_pt):
        runs += [(perplexity.main, [source, tmp_path / "data/val.bin", "--device=cpu"]),
                 (sample.main, [source, "--device=cpu", "--max_new_tokens=2"]),
                 (train.main, train_args(data_dir, tmp_path / "run", init_from=source)),
                 (kron_decompose.main, ["4", "16", "1", "--model", source, "--out", tmp_path / "x.pt"])]
    runs.append((krony_to_gpt.main, [truncated_pt, tmp_path / "hf"]))
    for main, argv in runs:
        status, _, err = run_main(main, argv, capsys)
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and "error: cannot load" in lines[0], (main.__module__, argv, err)
    assert not any(os.path.exists(tmp_path / name) for name in ("run", "x.pt", "hf"))


def test_a_dense_gpt2_folder_that_lacks_a_weight_is_refused_not_filled_at_random(hf_gpt2_dir, tmp_path):
    damaged = rewrite_safetensors(hf_gpt2_dir, tmp_path / "gpt2", lambda w: w.pop("transformer.h.0.mlp.c_fc.weight"))
    with pytest.raises(UsageError, match="transformer.h.0.mlp.c_fc.weight is missing"):
        load_model(damaged)


def test_checkpoints_written_before_plans_were_per_block_still_load(tmp_path):
    model = tiny_gpt(dim_1=4, dim_2=32, factors=2, kron_layers="odd")
    checkpoint = make_checkpoint(model)
    args = dict(checkpoint["model_args"], kron=None)
    checkpoint["model_args"] = {**args, "dim_1": 4, "dim_2": 32, "factors": 2, "kron_layers": "odd"}
    save_checkpoint(checkpoint, tmp_path / "old.pt")
    opened = load_model(str(tmp_path / "old.pt"))
    assert opened.config.plan == Plan.from_settings(16, 2, 64, kron={"c_fc@1": (4, 32, 2), "c_proj@1": (32, 4, 2)})
    for key, value in opened.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
