"""hf_remote_code/: the transformers glue that runs a model which keeps its Kronecker factors, over the repository's
own Kronecker layers (kronecker.py) and plans (kron_shapes.py), assembled in one folder as an export ships them.

Every factored model is checked against transformers' own dense GPT2LMHeadModel whose matrices are the factors
materialised here with torch.kron (not with the module's code): logits, gradients, generation (cache, no cache,
padding), pipeline, and a saved folder loaded by a separate Python that cannot see this repository.
"""
import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT, hf_tokenizer_or_skip, kron_sum, move_off_defaults

# what an export ships, relative to the repository: the glue and the modules it imports
SHIPPED = ("hf_remote_code/configuration_krony.py", "hf_remote_code/modeling_krony.py", "kronecker.py",
           "monarch.py", "kron_shapes.py")
VOCAB = 50257  # GPT-2's, = 29 * 1733
BASE = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=VOCAB)
ALL_BLOCK = {"c_fc": [32, 8, 1],  # B is one row (1 x 16): the outer-product path
             "c_proj": [8, 32, 1],  # B is one column (16 x 1): the matrix-vector path, bias fused
             "c_attn": [4, 12, 2], "attn_proj": [4, 4, 3]}
PLANS = {  # kron dicts in canonical form, which KronyConfig keeps as they are
    "dense": {},
    "mlp": dict(c_fc=[4, 8, 2], c_proj=[8, 4, 1]),
    "attention": dict(c_attn=[8, 12, 1], attn_proj=[4, 4, 3]),
    "wte": dict(wte=[VOCAB, 16, 1]),  # A 50257 x 16, B 1 x 2
    "all": dict(ALL_BLOCK, wte=[29, 8, 2]),  # A 29 x 8, B 1733 x 4, two factors
    "odd_layers": {"c_attn@1,3": [8, 12, 1], "attn_proj@1,3": [4, 4, 3], "c_fc@1,3": [4, 8, 2],
                   "c_proj@1,3": [8, 4, 1]},  # of 4 blocks
    "per_block": {"c_attn@0": [8, 12, 1], "c_fc@0": [4, 8, 1], "c_fc@1": [8, 16, 2]},  # c_fc differs by block
}


@pytest.fixture(scope="module")
def modeling(tmp_path_factory):
    """modeling_krony as an export runs it: the shipped files copied into one folder and imported by transformers
    from there (the glue's relative imports find kronecker.py and kron_shapes.py beside it)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    folder = tmp_path_factory.mktemp("remote_code")
    for path in SHIPPED:
        shutil.copyfile(os.path.join(ROOT, path), folder / os.path.basename(path))
    return sys.modules[get_class_from_dynamic_module("modeling_krony.KronyForCausalLM", str(folder)).__module__]


def krony(modeling, plan, seed=0, **overrides):
    """A random KronyForCausalLM (eval mode) with LayerNorms and biases moved off their init. Its matrices have
    entries of std 0.3 rather than GPT-2's 0.02, so that attention and positions shape its output: greedy
    generation then varies from token to token instead of repeating one token."""
    base = {**BASE, "initializer_range": 0.3, **({"n_layer": 4} if plan == "odd_layers" else {}), **overrides}
    torch.manual_seed(seed)
    return move_off_defaults(modeling.KronyForCausalLM(modeling.KronyConfig(**base, kron=PLANS[plan])).eval())


def factored(model):
    """{dense module name: module} of every module of a KronyForCausalLM that holds Kronecker factors A and B."""
    return {name: m for name, m in model.named_modules() if isinstance(getattr(m, "A", None), torch.nn.Parameter)}


def dense_twin(model):
    """transformers' GPT2LMHeadModel with the factored matrices materialised by torch.kron, all else copied."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    config = GPT2Config(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_positions=c.n_positions,
                        vocab_size=c.vocab_size)
    dense = GPT2LMHeadModel(config).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith((".A", ".B"))}
    for name, m in factored(model).items():
        # Conv1D's weight is (in, out) as W; nn.Embedding's is (vocab, n_embd) as W
        state[f"{name}.weight"] = kron_sum(m.A.detach(), m.B.detach())
    state["lm_head.weight"] = state["transformer.wte.weight"]
    assert set(state) == set(dense.state_dict())
    dense.load_state_dict(state)
    return dense


def imports(source):
    """The top-level names a Python source imports, relative ones with their dots (".configuration_krony")."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + node.module if node.level else node.module.split(".")[0])
    return names


def assert_logits_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def ids(batch, length, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_config_defaults_construct_and_plans_are_validated(modeling):
    KronyConfig = modeling.KronyConfig
    assert KronyConfig().kron == {} and KronyConfig().model_type == "krony"
    # canonical: lists, a matrix in every block under its bare name, per-block entries under NAME@BLOCKS
    assert KronyConfig(**BASE, kron={"c_fc@1,0": (4, 8, 2)}).kron == {"c_fc": [4, 8, 2]}
    config = KronyConfig(**BASE, kron={"c_fc": (4, 8, 1), "c_fc@1": (4, 8, 2)})
    assert config.kron == {"c_fc@0": [4, 8, 1], "c_fc@1": [4, 8, 2]}
    assert config.plan.shape("c_fc", 0) == (4, 8, 1) and config.plan.shape("c_fc", 1) == (4, 8, 2)
    # an older export's kron_layers confines kron's matrices to those blocks, and is then part of kron
    older = KronyConfig(**BASE, kron={"c_fc": [4, 8, 2]}, kron_layers=[1])
    assert older.kron == {"c_fc@1": [4, 8, 2]} and "kron_layers" not in older.to_dict()
    bad = {
        "c_fc in block 0 is 32x128: A's rows=5 do not divide 32": dict(kron={"c_fc": [5, 8, 1]}),
        "attn_proj in block 0 is 32x32: A's columns=7 do not divide 32": dict(kron={"attn_proj": [4, 7, 1]}),
        "wte is 50257x32: A's rows=2 do not divide 50257": dict(kron={"wte": [2, 8, 1]}),
        "c_attn in block 0: factors=0 must be between 1 and 16": dict(kron={"c_attn": [4, 4, 0]}),
        "'mlp' is not a factorable matrix": dict(kron={"mlp": [4, 4, 1]}),
        "c_proj in block 0: expected (a_rows, a_cols, factors) as three integers": dict(kron={"c_proj": [4, 4]}),
        "c_fc@0,2: block 2 is out of range": dict(kron={"c_fc@0,2": [4, 8, 1]}),
        "c_fc in block 1 is given twice": dict(kron={"c_fc@1": [4, 8, 1], "c_fc@0,1": [4, 8, 2]}),
        "wte@0: wte is once per model": dict(kron={"wte@0": [29, 8, 1]}),
        "kron_layers=[0, 2]: block indices must be between 0 and 1": dict(kron={"c_fc": [4, 8, 1]},
                                                                            kron_layers=[0, 2]),
        "tie_word_embeddings=False": dict(kron={"wte": [29, 8, 1]}, tie_word_embeddings=False),
        "n_inner=64": dict(n_inner=64),
        "n_head=5 must divide n_embd=32": dict(n_head=5),
    }
    for message, kwargs in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            KronyConfig(**{**BASE, **kwargs})


def test_init_is_gpt2s_for_the_materialised_matrices(modeling):
    torch.manual_seed(0)
    plan = {"c_fc@1,2": [8, 16, 2], "c_proj@1,2": [16, 8, 1], "c_attn@1,2": [8, 16, 1], "attn_proj@1,2": [8, 8, 1],
            "wte": [29, 8, 2]}
    config = modeling.KronyConfig(**dict(BASE, n_layer=4, n_embd=64), kron=plan)
    assert config.plan.shape("c_fc", 1) == (8, 16, 2) and config.plan.shape("c_fc", 0) is None
    assert config.plan.shape("wte") == (29, 8, 2)
    model = modeling.KronyForCausalLM(config)
    residual_std = 0.02 / math.sqrt(2 * 4)  # GPT-2's scaled init of c_proj and attn.c_proj
    block = model.transformer.h[1]
    for weight, std in [(block.mlp.c_fc.dense_weight(), 0.02), (block.attn.c_attn.dense_weight(), 0.02),
                        (block.mlp.c_proj.dense_weight(), residual_std),
                        (block.attn.c_proj.dense_weight(), residual_std),
                        (model.transformer.h[0].mlp.c_proj.weight, residual_std),  # dense blocks keep GPT-2's init
                        (model.transformer.wte.dense_weight(), 0.02)]:
        # W's entries are products of few factor entries: its sample std is noisy; 30% tells 0.02 from 0.007
        assert abs(weight.std().item() - std) < 0.3 * std, (weight.shape, weight.std().item(), std)
    assert all(m.bias.abs().max() == 0 for m in factored(model).values() if getattr(m, "bias", None) is not None)


@pytest.mark.parametrize("plan", PLANS)
def test_logits_and_gradients_equal_dense_gpt2_with_materialised_factors(modeling, plan):
    model = krony(modeling, plan)
    dense = dense_twin(model)
    x = ids(2, 16)
    expected_factored = {"dense": 0, "mlp": 4, "attention": 4, "wte": 1, "all": 9, "odd_layers": 8,
                         "per_block": 3}[plan]
    assert len(factored(model)) == expected_factored
    with torch.no_grad():
        assert_logits_close(model(x).logits, dense(x).logits)

    # gradients: the loss through KroneckerLinear/KroneckerEmbedding against autograd through torch.kron
    model.zero_grad()
    model(x, labels=x).loss.backward()
    leaves = {name: (m.A.detach().clone().requires_grad_(), m.B.detach().clone().requires_grad_())
              for name, m in factored(model).items()}
    weights = {f"{name}.weight": kron_sum(A, B) for name, (A, B) in leaves.items()}
    if "transformer.wte.weight" in weights:
        weights["lm_head.weight"] = weights["transformer.wte.weight"]
    dense.zero_grad()
    torch.func.functional_call(dense, weights, (x,), {"labels": x}).loss.backward()
    for name, m in factored(model).items():
        A, B = leaves[name]
        torch.testing.assert_close(m.A.grad, A.grad, rtol=1e-4, atol=1e-4 * A.grad.abs().max().item())
        torch.testing.assert_close(m.B.grad, B.grad, rtol=1e-4, atol=1e-4 * B.grad.abs().max().item())
    dense_params = dict(dense.named_parameters())
    for name, p in model.named_parameters():  # LayerNorms, biases, positions: also equal
        if not name.endswith((".A", ".B")):
            g = dense_params[name].grad
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4 * g.abs().max().item() + 1e-12)


SUBPROCESS = textwrap.dedent("""
    import importlib.util, json, os, sys
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    folder, out = sys.argv[1], sys.argv[2]
    assert not any(importlib.util.find_spec(name) for name in ("hf_remote_code", "model", "kronecker", "kron_shapes"))
    assert not any(os.path.abspath(p) == os.path.abspath(sys.argv[3]) for p in sys.path)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    x = torch.load(os.path.join(out, "ids.pt"))
    with torch.no_grad():
        logits = model(x).logits
    torch.save(logits, os.path.join(out, "logits.pt"))
    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump({"config": type(config).__name__, "model": type(model).__name__, "module": type(model).__module__,
                   "kron": config.kron, "params": sum(p.numel() for p in model.parameters())}, f)
""")


def test_saved_folder_is_self_contained_and_loads_in_a_python_without_the_repo(modeling, tmp_path):
    model = krony(modeling, "all")
    model.save_pretrained(tmp_path / "saved")
    folder = tmp_path / "elsewhere" / "krony-model"
    shutil.copytree(tmp_path / "saved", folder)
    assert sorted(os.listdir(folder)) == ["config.json", "configuration_krony.py", "generation_config.json",
                                          "kron_shapes.py", "kronecker.py", "model.safetensors", "modeling_krony.py",
                                          "monarch.py"]
    shipped = {os.path.basename(path): path for path in SHIPPED}
    for name, path in shipped.items():  # verbatim copies of the repo's files
        source = (folder / name).read_bytes()
        with open(os.path.join(ROOT, path), "rb") as original:
            assert source == original.read(), name
        # torch, transformers, the standard library and each other (kronecker.py's fallback for the repository
        # imports kron_shapes as a top-level module, which in the folder is never reached)
        allowed = {"torch", "transformers", "kron_shapes"} | {f".{n[:-3]}" for n in shipped} | \
            set(sys.stdlib_module_names)
        assert imports(source.decode()) <= allowed, (name, imports(source.decode()) - allowed)
        assert b"sys.path" not in source, f"{name} changes the import path"
    with open(folder / "config.json") as f:
        config = json.load(f)
    assert config["model_type"] == "krony" and config["architectures"] == ["KronyForCausalLM"]
    assert config["auto_map"] == {"AutoConfig": "configuration_krony.KronyConfig",
                                  "AutoModelForCausalLM": "modeling_krony.KronyForCausalLM"}
    assert config["kron"] == PLANS["all"] and "kron_layers" not in config

    x = ids(2, 12)
    torch.save(x, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    # -I: isolated mode, neither PYTHONPATH, nor the user's site-packages, nor the script's directory
    result = subprocess.run([sys.executable, "-I", "-c", SUBPROCESS, str(folder), str(tmp_path), ROOT],
                            cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "info.json") as f:
        info = json.load(f)
    assert (info["config"], info["model"]) == ("KronyConfig", "KronyForCausalLM")
    assert info["module"].startswith("transformers_modules.")  # the folder's code, not this repo's
    assert info["kron"] == config["kron"]
    assert info["params"] == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(x).logits, rtol=0, atol=0)


def test_state_dict_keys_and_weight_tying(modeling, tmp_path):
    from safetensors import safe_open
    model = krony(modeling, "all")
    keys = set(model.state_dict())
    for k in ("transformer.h.1.mlp.c_fc.A", "transformer.h.1.mlp.c_fc.B", "transformer.h.1.mlp.c_fc.bias",
              "transformer.h.0.attn.c_proj.A", "transformer.h.0.attn.c_attn.B", "transformer.wte.A",
              "transformer.wte.B"):
        assert k in keys
    assert not any(k.startswith("lm_head") or k.endswith(".weight") and (".mlp." in k or ".attn." in k)
                   for k in keys)
    assert list(model.lm_head.parameters()) == [] and model.get_output_embeddings() is None
    assert model.get_input_embeddings() is model.transformer.wte
    with pytest.raises(NotImplementedError, match="factored"):
        model.resize_token_embeddings(VOCAB + 1)

    # a plan with a dense wte keeps GPT-2's tie: no lm_head.weight saved, the same tensor after loading
    mlp = krony(modeling, "mlp")
    mlp.save_pretrained(tmp_path / "mlp")
    with safe_open(tmp_path / "mlp" / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    assert "lm_head.weight" not in saved and "transformer.wte.weight" in saved
    loaded = modeling.KronyForCausalLM.from_pretrained(tmp_path / "mlp").eval()
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    x = ids(1, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, mlp(x).logits, rtol=0, atol=0)


def test_safetensors_holds_each_factor_once(modeling, tmp_path):
    from safetensors import safe_open
    model = krony(modeling, "wte")
    n_params = sum(p.numel() for p in model.parameters())
    assert max(p.numel() for p in model.parameters()) < VOCAB * model.config.n_embd  # no vocab x n_embd tensor
    model.save_pretrained(tmp_path / "wte")
    size = os.path.getsize(tmp_path / "wte" / "model.safetensors")
    assert abs(size - 4 * n_params) <= 0.01 * 4 * n_params, (size, 4 * n_params)
    with safe_open(tmp_path / "wte" / "model.safetensors", "pt") as f:
        assert sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) == n_params
        assert {"transformer.wte.A", "transformer.wte.B"} <= set(f.keys()) and "lm_head.weight" not in f.keys()


def test_generate_equals_dense_gpt2_and_a_cache_free_loop(modeling):
    model = krony(modeling, "all")
    dense = dense_twin(model)
    prompt = ids(1, 6)
    settings = dict(max_new_tokens=20, do_sample=False, pad_token_id=50256)
    with torch.no_grad():
        cached = model.generate(prompt, **settings)
        no_cache = model.generate(prompt, use_cache=False, **settings)
        seq = prompt
        for _ in range(20):  # greedy, by hand, no cache
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(cached, dense.generate(prompt, **settings))
    assert cached.shape == (1, 26) and len(set(cached[0, 6:].tolist())) > 5  # not one token repeated
    assert torch.equal(cached, seq) and torch.equal(no_cache, seq)

    # a batch of two prompts, the shorter left-padded, with an attention mask
    long, short = ids(1, 8, seed=2)[0], ids(1, 5, seed=3)[0]
    batch = torch.full((2, 8), 50256)
    batch[0], batch[1, 3:] = long, short
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        out = model.generate(batch, attention_mask=mask, **settings)
        assert torch.equal(out, dense.generate(batch, attention_mask=mask, **settings))
        # right padding: logits at the real positions as the dense model's
        right = torch.full((2, 8), 50256)
        right[0], right[1, :5] = long, short
        right_mask = torch.ones(2, 8, dtype=torch.long)
        right_mask[1, 5:] = 0
        assert_logits_close(model(right, attention_mask=right_mask).logits[right_mask.bool()],
                            dense(right, attention_mask=right_mask).logits[right_mask.bool()])


def test_text_generation_pipeline_matches_dense(modeling):
    from transformers import pipeline
    tokenizer = hf_tokenizer_or_skip()
    model = krony(modeling, "all")
    dense = dense_twin(model)
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    prompts = ["The Kronecker product", "Hello"]
    got = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")(prompts, **settings)
    want = pipeline("text-generation", model=dense, tokenizer=tokenizer, device="cpu")(prompts, **settings)
    assert got == want
    assert got[0][0]["generated_text"].startswith("The Kronecker product")


def test_weights_that_do_not_match_the_plan_are_refused(modeling, tmp_path):
    model = krony(modeling, "all")
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    with open(path) as f:
        original = json.load(f)

    def load_with(**changes):
        with open(path, "w") as f:
            json.dump({**original, **changes}, f)
        return modeling.KronyForCausalLM.from_pretrained(tmp_path / "m")

    # factor shapes differ from the plan (default ignore_mismatched_sizes=False): named, both shapes given
    with pytest.raises(ValueError) as err:
        load_with(kron={**original["kron"], "c_fc": [16, 8, 1]})
    message = str(err.value)
    assert "transformer.h.0.mlp.c_fc.A: shape (1, 32, 8) in the checkpoint, (1, 16, 8) from the config" in message
    assert "transformer.h.1.mlp.c_fc.B: shape (1, 1, 16) in the checkpoint, (1, 2, 16) from the config" in message
    with pytest.raises(ValueError, match=r"transformer\.wte\.A: shape \(2, 29, 8\) in the checkpoint, "
                                         r"\(2, 1733, 8\) from the config"):
        load_with(kron={**original["kron"], "wte": [1733, 8, 2]})
    # a block the plan says is dense holds factors (and the reverse): named, never silently re-initialised
    with pytest.raises(ValueError) as err:
        load_with(kron={**{f"{name}@0": shape for name, shape in ALL_BLOCK.items()}, "wte": original["kron"]["wte"]})
    assert "transformer.h.1.mlp.c_fc.weight: expected by the config, absent from the checkpoint" in str(err.value)
    assert "transformer.h.1.mlp.c_fc.A: in the checkpoint, not part of the config's model" in str(err.value)
    # an impossible plan is refused by the config itself
    with pytest.raises(ValueError, match="c_fc in block 0 is 32x128: A's rows=5 do not divide 32"):
        load_with(kron={**original["kron"], "c_fc": [5, 8, 1]})
    x = ids(1, 8)
    with torch.no_grad():  # and the untouched folder still loads, to the same model
        torch.testing.assert_close(load_with().eval()(x).logits, model(x).logits, rtol=0, atol=0)


def test_the_kronecker_code_exists_once():
    """The Kronecker layers are kronecker.py's alone: the glue imports them rather than carrying copies that drift.
    The repository is what git tracks or would track (an export written into an ignored out/ folder holds copies)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    sources = []
    for path in listed.stdout.split():
        if os.path.isfile(os.path.join(ROOT, path)):  # not deleted from the working tree
            with open(os.path.join(ROOT, path)) as f:
                sources.append(f.read())
    for definition in ("class KroneckerLinear", "class KroneckerEmbedding", "class OuterProduct", "class MatVec",
                       "def kronecker_matmul", "def kronecker_sum", "def kron_flops"):
        found = sum(len(re.findall(rf"^\s*{definition}\b", source, flags=re.MULTILINE)) for source in sources)
        assert found == 1, f"{definition} is defined {found} times"
