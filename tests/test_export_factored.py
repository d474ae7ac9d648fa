"""krony_to_gpt.py --keep_factors: a Hugging Face directory that keeps the Kronecker factors and ships the code that
runs them (hf_remote_code/'s glue with the repository's kronecker.py and kron_shapes.py), loaded by transformers with
trust_remote_code and by load_model, perplexity.py and sample.py as data."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, gpt2_tokenizer_or_skip, hf_tokenizer_or_skip, run_main, tiny_gpt

import krony_to_gpt
import perplexity
import sample
from checkpoints import load_model, make_checkpoint, save_checkpoint
from common import UsageError

# what an export ships, relative to the repository: the glue and the modules it imports
SHIPPED = ("hf_remote_code/configuration_krony.py", "hf_remote_code/modeling_krony.py", "kronecker.py",
           "monarch.py", "kron_shapes.py")
# Small GPT-2s (vocab 50257, n_embd 32, 4 blocks) with the layouts of the paper's and the peers' models.
PLANS = {
    "81M-like": dict(dim_1=32, dim_2=32, factors=1),  # c_fc's B 1x4, c_proj's 4x1
    "95M-like": dict(dim_1=16, dim_2=128, factors=1),  # B 2x1
    "attention": dict(kron={"c_attn": (16, 48, 2), "attn_proj": (8, 8, 1)}),
    "embedding": dict(kron={"wte": (50257, 16, 1)}),
    "odd layers, every kind": dict(dim_1=16, dim_2=64, factors=2, kron_layers="odd",
                                   kron={"c_attn": (32, 48, 1), "attn_proj": (16, 16, 1), "wte": (1733, 8, 2)}),
    "per block": dict(kron={"c_fc": (8, 16, 1), "c_fc@1": (8, 16, 2), "c_proj": (16, 8, 1)}),  # block 1: 2 factors
}


def random_model(plan, seed=0):
    """A random model whose greedy generation is a varied sequence far from ties (block matrices scaled 10x: at
    GPT-2's init the tied embedding dominates and the last token repeats), so it is robust to round-off."""
    model = tiny_gpt(seed, move_defaults=False, n_layer=4, n_head=2, n_embd=32, block_size=64, vocab_size=50257,
                     **plan)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("transformer.h.") and p.dim() >= 2:
                p.mul_(10 if p.dim() == 2 else 10 ** 0.5)  # a factor: W = A (x) B scales by 10
            elif name.startswith("transformer.wte"):
                p.mul_(2)
            else:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(layout, keep_factors=True) -> (our model, its checkpoint, krony_to_gpt.py's folder), each written
    once for this module: tests read them and copy them before changing anything."""
    models, folders = {}, {}

    def export(layout, keep_factors=True):
        hf_tokenizer_or_skip()
        if layout not in models:
            checkpoint = tmp_path_factory.mktemp("export") / "ckpt.pt"
            models[layout] = random_model(PLANS[layout]), checkpoint
            save_checkpoint(make_checkpoint(models[layout][0]), str(checkpoint))
        model, checkpoint = models[layout]
        if (layout, keep_factors) not in folders:
            out = checkpoint.parent / ("factored" if keep_factors else "dense")
            krony_to_gpt.main([str(checkpoint), str(out)] + (["--keep_factors"] if keep_factors else []))
            folders[layout, keep_factors] = out
        return model, checkpoint, folders[layout, keep_factors]
    return export


@pytest.mark.parametrize("layout", PLANS)
def test_factored_export_equals_dense_export_and_ours(exported, layout):
    from transformers import AutoConfig, AutoModelForCausalLM
    model, _, factored_dir = exported(layout)
    dense_dir = exported(layout, keep_factors=False)[2]
    for path in SHIPPED:  # the code it runs is the repository's, byte for byte
        with open(os.path.join(ROOT, path), "rb") as f:
            assert (factored_dir / os.path.basename(path)).read_bytes() == f.read(), path
    factored = AutoModelForCausalLM.from_pretrained(factored_dir, trust_remote_code=True, dtype=torch.float32).eval()
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32).eval()
    assert type(factored).__name__ == "KronyForCausalLM" and type(dense).__name__ == "GPT2LMHeadModel"
    assert AutoConfig.from_pretrained(factored_dir, trust_remote_code=True).model_type == "krony"
    assert factored.config.activation_function == "gelu_pytorch_tanh"  # model.py's GELU kernel, not gelu_new's 7 ops
    assert factored.num_parameters() == model.get_num_params(non_embedding=False) < dense.num_parameters()
    mlps = {type(block.mlp).__name__ for block in factored.transformer.h}  # the 81M pair runs as model.py's fused MLP
    assert mlps == ({"KroneckerMLP"} if layout == "81M-like" else {"GPT2MLP"})
    reloaded = load_model(str(factored_dir)).eval()
    assert reloaded.config.plan == model.config.plan  # block by block
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(idx)[0]
        for logits in (factored(idx).logits, dense(idx).logits, reloaded(idx)[0]):
            torch.testing.assert_close(logits, ours, rtol=1e-5, atol=1e-4)
    with open(factored_dir / "model.safetensors", "rb") as f:  # 8 bytes of header length, the header, the data
        header_bytes = 8 + int.from_bytes(f.read(8), "little")
    data_bytes = os.path.getsize(factored_dir / "model.safetensors") - header_bytes
    assert data_bytes == 4 * model.get_num_params(non_embedding=False)  # float32 factors, nothing materialized
    with open(factored_dir / "config.json") as f:
        config = json.load(f)
    assert config["auto_map"] == {"AutoConfig": "configuration_krony.KronyConfig",
                                  "AutoModelForCausalLM": "modeling_krony.KronyForCausalLM"}
    assert config["kron"] == model.config.plan.to_kron()


def test_only_a_tanh_gelu_runs_the_fused_mlp(exported):
    from transformers import AutoConfig, AutoModelForCausalLM
    factored_dir = exported("81M-like")[2]
    for activation, mlp in [("gelu_new", "KroneckerMLP"), ("gelu", "GPT2MLP"), ("relu", "GPT2MLP")]:
        config = AutoConfig.from_pretrained(factored_dir, trust_remote_code=True, activation_function=activation)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
        assert {type(block.mlp).__name__ for block in model.transformer.h} == {mlp}, activation


def test_generate_with_cache_equals_our_greedy_generation(exported):
    from transformers import AutoModelForCausalLM
    model, _, factored_dir = exported("odd layers, every kind")
    factored = AutoModelForCausalLM.from_pretrained(factored_dir, trust_remote_code=True, dtype=torch.float32).eval()
    prompt = torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(2))
    want = model.generate(prompt, 24, temperature=0)
    got = factored.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, min_new_tokens=24,
                            do_sample=False, pad_token_id=50256)
    assert got.tolist() == want.tolist()
    assert len(set(want[0, 8:].tolist())) > 3  # a real sequence, not one token repeated


def test_exported_folder_loads_without_this_repository(exported, tmp_path):
    """Moved elsewhere and loaded by a Python that cannot import the repository's modules: the folder's own
    kronecker.py and kron_shapes.py are what its glue runs."""
    model, _, factored_dir = exported("odd layers, every kind")
    moved = tmp_path / "elsewhere" / "krony_model"
    shutil.copytree(factored_dir, moved)
    idx = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(3))
    code = ("import importlib.util, sys, torch; from transformers import AutoModelForCausalLM\n"
            "assert not any(p and __import__('os').path.exists(p + '/model.py') for p in sys.path)\n"
            "assert not any(importlib.util.find_spec(name) for name in\n"
            "               ('model', 'kronecker', 'kron_shapes', 'checkpoints', 'common', 'hf_remote_code'))\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(moved)!r}, trust_remote_code=True, dtype=torch.float32)\n"
            f"torch.save(m(torch.tensor({idx.tolist()})).logits, {str(tmp_path / 'logits.pt')!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path / "elsewhere", env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(idx)[0], rtol=1e-5, atol=1e-4)


def test_perplexity_and_sample_read_the_factored_folder(exported, tmp_path, capsys):
    import numpy as np
    gpt2_tokenizer_or_skip()
    _, checkpoint, factored_dir = exported("embedding")
    tokens = np.random.default_rng(0).integers(0, 50257, 300).astype(np.uint16)
    tokens.tofile(tmp_path / "tokens.bin")
    scores, samples = {}, {}
    for source in (str(factored_dir), str(checkpoint)):
        out = tmp_path / f"scores{len(scores)}.json"
        status, _, err = run_main(perplexity.main, [source, tmp_path / "tokens.bin", "--device=cpu", "--out", out],
                                  capsys)
        assert status == 0, err[-2000:]
        scores[source] = json.loads(out.read_text())["datasets"][str(tmp_path / "tokens.bin")]["perplexity"]
        status, samples[source], err = run_main(sample.main, [source, "--start=Hello", "--temperature=0",
                                                              "--max_new_tokens=5", "--num_samples=1",
                                                              "--device=cpu"], capsys)
        assert status == 0, err[-2000:]
    assert len(set(round(v, 4) for v in scores.values())) == 1, scores
    assert len(set(samples.values())) == 1, samples


def test_loader_refuses_a_folder_whose_config_and_weights_disagree(exported, tmp_path):
    factored_dir = tmp_path / "factored"
    shutil.copytree(exported("attention")[2], factored_dir)
    config_path = factored_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["kron"]["attn_proj"] = [16, 16, 1]
    config_path.write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"attn.c_proj.A is \(1, 8, 8\), the model's \(1, 16, 16\)"):
        load_model(str(factored_dir))
    del config["kron"]["attn_proj"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"it lacks transformer.h.0.attn.c_proj.weight \(32, 32\)"):
        load_model(str(factored_dir))


def test_bad_exports_exit_2_with_one_line_and_nothing_written(tmp_path, capsys):
    model = random_model(PLANS["81M-like"])
    save_checkpoint(make_checkpoint(model), str(tmp_path / "ckpt.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    cases = {
        "is not a krony checkpoint": (tmp_path / "other.pt", tmp_path / "a"),
        "already exists; pass --overwrite": (tmp_path / "ckpt.pt", tmp_path / "taken"),
        "notes.txt is not a writable directory": (tmp_path / "ckpt.pt", tmp_path / "notes.txt" / "sub" / "out"),
    }
    for message, (checkpoint, out) in cases.items():
        status, _, err = run_main(krony_to_gpt.main, [checkpoint, out, "--keep_factors"], capsys)
        assert status == 2 and message in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "notes.txt", "other.pt", "taken"]
    assert os.listdir(tmp_path / "taken") == ["keep.txt"]
