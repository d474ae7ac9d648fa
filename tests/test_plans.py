"""Compression plans beyond the MLP: attention, the tied embedding, chosen blocks (model.py, compress.py,
kron_shapes.py, kron_decompose.py --kron/--layers, train.py kron/kron_layers, the configs)."""
import ast
import os
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, kron_sum, run_main, run_script, tiny_gpt

import kron_decompose
import train
from checkpoints import load_checkpoint, make_checkpoint, save_checkpoint
from compress import compress
from configurator import load_config
from kron_shapes import Plan, count_params
from kronecker import KroneckerEmbedding, KroneckerLinear
from krony_to_gpt import to_hf
from model import GPT, GPTConfig

VOCAB = 58  # 2 x 29: the embedding factors in several ways
# Full rank for n_embd 16: every factor count is the rank limit of its A (x) B
FULL_RANK = {"wte": (29, 4, 8), "c_attn": (4, 8, 24), "attn_proj": (4, 4, 16), "c_fc": (4, 8, 32),
             "c_proj": (8, 4, 32)}
LOSSY = {"wte": (29, 8, 1), "c_attn": (16, 24, 1), "attn_proj": (8, 8, 1), "c_fc": (16, 16, 1),
         "c_proj": (16, 16, 1)}


def tiny_teacher():
    return tiny_gpt(n_layer=4, vocab_size=VOCAB)


def plan_for(kron, kron_layers="all"):
    """The Plan of a kron dict and kron_layers for tiny_teacher's shape."""
    return Plan.from_settings(16, 4, VOCAB, kron=kron, kron_layers=kron_layers)


def shapes_in(blocks, kron):
    """The expected Plan.shapes, written out: wte once, every other matrix of `kron` in each of `blocks`."""
    return {(name, None if name == "wte" else block): shape for name, shape in kron.items()
            for block in ([None] if name == "wte" else blocks)}


@pytest.mark.parametrize("layers", ["all", "odd"])
def test_full_rank_plan_of_every_kind_reproduces_the_teacher_through_export(layers):
    teacher = tiny_teacher()
    student = compress(teacher, plan_for(FULL_RANK, layers), "vl").eval()
    kinds = {type(m).__name__ for m in student.modules()}
    assert {"KroneckerEmbedding", "KroneckerLinear"} <= kinds and not hasattr(student, "lm_head")
    factored_blocks = [i for i, block in enumerate(student.transformer.h)
                       if isinstance(block.attn.c_attn, KroneckerLinear)]
    assert factored_blocks == ([0, 1, 2, 3] if layers == "all" else [1, 3])
    idx = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = teacher(idx)[0]
        torch.testing.assert_close(student(idx)[0], want, rtol=0, atol=1e-4)
        torch.testing.assert_close(to_hf(student)(idx).logits, want, rtol=0, atol=1e-4)


def test_lossy_plan_on_odd_blocks_leaves_even_blocks_bit_identical():
    teacher = tiny_teacher()
    student = compress(teacher, plan_for(LOSSY, "odd"), "vl")
    teacher_state = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        if name.startswith(("transformer.h.0.", "transformer.h.2.")):
            assert torch.equal(tensor, teacher_state[name]), name
    assert isinstance(student.transformer.h[1].mlp.c_fc, KroneckerLinear)
    assert not isinstance(student.transformer.h[2].mlp.c_fc, KroneckerLinear)


@pytest.mark.parametrize("shape", [(29, 4, 1), (29, 8, 2), (58, 8, 1), (2, 16, 1)])
def test_kronecker_embedding_equals_dense_lookup_and_lm_head(shape):
    """Lookup and lm_head of the factors, values and gradients, against nn.functional on sum_r kron(A_r, B_r)."""
    torch.manual_seed(0)
    embedding = KroneckerEmbedding(VOCAB, 16, *shape).double()
    idx = torch.randint(0, VOCAB, (3, 5))
    h = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    grad_rows, grad_logits = torch.randn(3, 5, 16, dtype=torch.float64), torch.randn(3, 5, VOCAB, dtype=torch.float64)
    torch.autograd.backward((embedding(idx), embedding.unembed(h)), (grad_rows, grad_logits))
    got = (embedding.A.grad, embedding.B.grad, h.grad)

    A, B = (t.detach().clone().requires_grad_() for t in (embedding.A, embedding.B))
    h_ref = h.detach().clone().requires_grad_()
    W = kron_sum(A, B)
    rows, logits = F.embedding(idx, W), F.linear(h_ref, W)
    torch.autograd.backward((rows, logits), (grad_rows, grad_logits))
    with torch.no_grad():
        torch.testing.assert_close(embedding(idx), rows)
        torch.testing.assert_close(embedding.unembed(h), logits)
    for g, w in zip(got, (A.grad, B.grad, h_ref.grad)):
        torch.testing.assert_close(g, w)


CONFIGS = ["train_gpt2.py", "train_gpt2_95M.py", "train_gpt2_67M.py", "train_gpt2_odd_layers.py",
           "train_gpt2_50M.py"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_parameter_counts_match_header_model_and_formula(name):
    path = os.path.join(ROOT, "config", name)
    c = load_config(train.SETTINGS, [path])
    plan = {k: c[k] for k in ("dim_1", "dim_2", "factors", "kron", "kron_layers")}
    with torch.device("meta"):  # GPT-2 small's shapes, no memory
        model = GPT(GPTConfig.from_settings(**{k: c[k] for k in train.MODEL_KEYS}, **plan))
    counted = model.get_num_params(non_embedding=False), model.get_num_params()
    assert count_params(c["n_embd"], n_layer=c["n_layer"], vocab_size=c["vocab_size"], block_size=c["block_size"],
                        **plan) == counted
    with open(path) as f:
        header = f.read()
    if name != "train_gpt2.py" and name != "train_gpt2_95M.py":  # the new configs state their count
        stated = re.search(r"Parameters: ([\d,]+) \(([\d,]+) without", header).groups()
        assert tuple(int(v.replace(",", "")) for v in stated) == counted
    if name == "train_gpt2_67M.py":
        assert counted[0] == 67_893_504
    if name == "train_gpt2_50M.py":
        assert counted[0] < 60_000_000 and ("wte", "c_attn", "attn_proj", "c_fc", "c_proj") == model.config.plan.names


# --- command line and bad plans -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pt")
    save_checkpoint(make_checkpoint(tiny_teacher()), path)
    return path


def test_kron_decompose_plan_reports_each_kind_and_writes_it(tmp_path, teacher_checkpoint):
    out = tmp_path / "plan.pt"
    result = run_script("kron_decompose.py", "--kron", "c_attn=16x24:1", "--kron", "attn_proj=8x8:1",
                        "--kron", "wte=29x8:1", "16", "16", "1", "--layers", "odd", "--model", teacher_checkpoint,
                        "--out", str(out))
    assert result.returncode == 0, result.stderr
    student, ckpt = load_checkpoint(str(out))
    teacher = load_checkpoint(teacher_checkpoint)[0]
    assert student.config.plan.shapes == shapes_in((1, 3), LOSSY)
    assert student.config.plan.blocks == (1, 3)
    errors = ckpt["init"]["errors"]
    assert set(errors) == {"wte"} | {f"h.{i}.{m}" for i in (1, 3) for m in ("c_attn", "attn_proj", "c_fc", "c_proj")}
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()}
    for name in ("wte", "c_attn", "attn_proj", "c_fc", "c_proj"):
        mean = sum(v for k, v in errors.items() if k.split(".")[-1] == name) / (1 if name == "wte" else 2)
        assert rows[name][6] == ("-" if name == "wte" else "1,3")  # the blocks column
        assert float(rows[name][7]) == pytest.approx(mean, abs=1e-4)
    saved = teacher.get_num_params(False) - student.get_num_params(False)
    assert rows["total"][1:] == [f"{student.get_num_params(False):,}", f"{saved:,}"]
    next_kron = re.search(r'^next: python train\.py .* --kron="(.*)"$', result.stdout, re.MULTILINE).group(1)
    assert plan_for(ast.literal_eval(next_kron)) == student.config.plan  # what train.py is told is the plan


@pytest.mark.parametrize("args,message", [
    (["--kron", "c_attention=16x16:1"], "'c_attention' is not one of wte, c_attn, attn_proj, c_fc, c_proj"),
    (["--kron", "c_attn=5x16:1"], "c_attn in block 0 is 16x48: A's rows=5 do not divide 16"),
    (["--kron", "attn_proj=4x4:17"], "attn_proj in block 0: factors=17 must be between 1 and 16"),
    (["16", "16", "1", "--layers", "0,9"], "kron_layers='0,9': block indices must be between 0 and 3"),
    (["--kron", "c_attn=4x8:1", "--init", "prune"], "init=prune needs B to be a single row or column, but c_attn's"),
    (["--kron", "c_attn=16x48"], "is not NAME=ROWSxCOLS:FACTORS"),
])
def test_kron_decompose_refuses_bad_plans_before_any_work(tmp_path, teacher_checkpoint, capsys, args, message):
    status, _, err = run_main(kron_decompose.main, [*args, "--model", teacher_checkpoint, "--out", tmp_path / "x.pt"],
                              capsys)
    assert status == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_list_any_matrix():
    result = run_script("kron_decompose.py", "--list", "--matrix", "wte", "--factors", "1,2")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if re.match(r"\s*\d+ +\d", line)]
    by_shape = {(int(r[0]), int(r[1]), int(r[2])): r for r in rows}
    # A 50257x384 (B 1x2) halves the embedding: 124,439,808 - 50257 * 768 + (50257 * 384 + 2)
    assert by_shape[50257, 384, 1][6] == f"{124_439_808 - 50257 * 768 + 50257 * 384 + 2:,}"
    assert all(50257 % r[0] == 0 and 768 % r[1] == 0 for r in by_shape)


def test_train_compresses_with_a_plan_from_the_command_line(tmp_path, teacher_checkpoint):
    import numpy as np
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "val"):
        np.random.default_rng(0).integers(0, VOCAB, 2000).astype(np.uint16).tofile(data_dir / f"{split}.bin")
    args = [f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", f"--init_from={teacher_checkpoint}",
            "--kron={'wte': (29, 8, 1), 'attn_proj': (8, 8, 1)}", "--kron_layers=1,3", "--max_iters=2",
            "--eval_interval=2", "--eval_iters=1", "--batch_size=2", "--block_size=8",
            "--gradient_accumulation_steps=1", "--device=cpu", "--compile=False", "--learning_rate=0"]
    train.train(load_config(train.SETTINGS, args))
    model, ckpt = load_checkpoint(str(tmp_path / "out" / "ckpt.pt"))
    kron = {"wte": (29, 8, 1), "attn_proj": (8, 8, 1)}
    assert model.config.plan.shapes == shapes_in((1, 3), kron) and model.config.plan.blocks == (1, 3)
    expected = compress(load_checkpoint(teacher_checkpoint)[0], plan_for(kron, "1,3"), "vl")
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)

    bad = args[:3] + ["--kron={'c_attn': (5, 16, 1)}"] + args[4:]
    bad[1] = f"--out_dir={tmp_path / 'bad'}"
    with pytest.raises(train.UsageError, match="c_attn in block 1 is 16x48: A's rows=5 do not divide 16"):
        train.train(load_config(train.SETTINGS, bad))
    assert not (tmp_path / "bad").exists()
