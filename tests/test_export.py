"""krony_to_gpt.py's default export: a plain GPT2LMHeadModel (every Kronecker factor multiplied out) with GPT-2's
tokenizer, whose logits are ours."""
import json
import os

import pytest
import torch
from conftest import hf_tokenizer_or_skip, run_main, run_script, tiny_gpt

import krony_to_gpt
from checkpoints import make_checkpoint, save_checkpoint

TINY = dict(n_layer=2, n_head=4, n_embd=64, block_size=48)
KINDS = {
    "kronecker": dict(dim_1=8, dim_2=16, factors=2),
    "kronecker_no_bias": dict(dim_1=4, dim_2=64, factors=3, bias=False),
    "dense": dict(),
}


def random_checkpoint(path, kind="kronecker", prefix="", seed=0):
    """A random model with every LayerNorm weight and bias moved off its init, so a dropped tensor shows up."""
    model = tiny_gpt(seed, vocab_size=50257, **TINY, **KINDS[kind])
    checkpoint = make_checkpoint(model, iter_num=0)
    checkpoint["model"] = {prefix + k: v for k, v in checkpoint["model"].items()}
    save_checkpoint(checkpoint, path)
    return model


@pytest.mark.parametrize("kind,prefix", [("kronecker", "module._orig_mod."), ("kronecker_no_bias", ""),
                                         ("dense", "_orig_mod.")])
def test_export_logits_equal_ours(tmp_path, capsys, kind, prefix):
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel
    hf_tokenizer_or_skip()
    model = random_checkpoint(tmp_path / "ckpt.pt", kind, prefix)
    out = tmp_path / "hf"
    assert run_main(krony_to_gpt.main, [tmp_path / "ckpt.pt", out], capsys)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "hf"]  # no temporary directory left behind
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf) is GPT2LMHeadModel
    with open(out / "config.json") as f:
        config = json.load(f)
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"]) == (2, 4, 64, 48)
    idx = torch.randint(0, 50257, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], rtol=0, atol=1e-4)


def test_exported_directory_works_with_pipeline_and_tokenizer(tmp_path, capsys):
    from transformers import AutoTokenizer, pipeline
    hf_tokenizer_or_skip()
    model = random_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "hf"
    assert run_main(krony_to_gpt.main, [tmp_path / "ckpt.pt", out], capsys)[0] == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.model_max_length == 48
    generator = pipeline("text-generation", model=str(out), device="cpu")
    text = generator("Hello world", max_new_tokens=5, do_sample=False, return_full_text=True)[0]["generated_text"]
    expected = model.generate(torch.tensor([[15496, 995]]), 5, temperature=0)[0].tolist()
    assert text == tokenizer.decode(expected)


def test_cli_writes_directory_and_refuses_to_overwrite(tmp_path, capsys):
    hf_tokenizer_or_skip()
    random_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "hf"
    run = run_script("krony_to_gpt.py", tmp_path / "ckpt.pt", out)
    assert run.returncode == 0, run.stderr
    assert "Kronecker c_fc=8x16:2 c_proj=16x8:2" in run.stdout and "wrote" in run.stdout
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
    before = os.path.getmtime(out / "model.safetensors")
    assert run_main(krony_to_gpt.main, [tmp_path / "ckpt.pt", out], capsys)[0] == 2
    assert os.path.getmtime(out / "model.safetensors") == before
    assert run_main(krony_to_gpt.main, [tmp_path / "ckpt.pt", out, "--overwrite"], capsys)[0] == 0


def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys):
    random_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    cases = {
        "no such checkpoint": (tmp_path / "missing.pt", tmp_path / "a"),
        "is not a readable krony checkpoint": (tmp_path / "notes.txt", tmp_path / "b"),
        "is not a krony checkpoint": (tmp_path / "other.pt", tmp_path / "c"),
        "cannot load the tokenizer": (tmp_path / "ckpt.pt", tmp_path / "d", "--tokenizer", tmp_path / "no_tokenizer"),
    }
    for message, args in cases.items():
        status, _, err = run_main(krony_to_gpt.main, args, capsys)
        assert status == 2 and message in err and err.strip().count("\n") == 0, err
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "notes.txt", "other.pt"]  # nothing half written
