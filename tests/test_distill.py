"""Knowledge distillation in train.py: teacher, distill_alpha, distill_temperature, distill_hidden."""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import ROOT, metrics, random_corpus, run_script, tiny_gpt, tiny_train_args, train_in_process

import train
from checkpoints import load_checkpoint, make_checkpoint, save_checkpoint
from configurator import load_config

TIMINGS = ("tokens_per_sec", "ms_per_iter", "elapsed_s", "run")


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A dense checkpoint with the shape tiny_train_args trains (n_layer 2, n_embd 32, vocab 64, context 16)."""
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pt")
    save_checkpoint(make_checkpoint(tiny_gpt(seed=3, move_defaults=False, n_embd=32, block_size=16)), path)
    return path


@pytest.fixture(scope="module", autouse=True)
def torchrun_run(tmp_path_factory, teacher_path):
    """Distillation under torchrun with two processes, 4 iterations into out_dir, started as the module starts so
    that it runs on the core the in-process tests (one thread) leave free: (out_dir, Future of the
    CompletedProcess)."""
    folder = tmp_path_factory.mktemp("torchrun")
    args = tiny_train_args(random_corpus(folder / "random"), folder / "ddp", teacher=teacher_path, distill_alpha=0.5,
                           distill_hidden=0.5, max_iters=4, eval_interval=4, gradient_accumulation_steps=4)
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield folder / "ddp", pool.submit(run_script, "-m", "torch.distributed.run", "--standalone",
                                          "--nproc_per_node=2", "train.py", *args,
                                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=180)


def test_zero_weights_with_a_teacher_give_bit_identical_metrics(tmp_path, teacher_path):
    data_dir = random_corpus(tmp_path / "random")
    common = dict(max_iters=6, eval_interval=3, dim_1=8, dim_2=16, factors=1, init="random")
    train_in_process(tiny_train_args(data_dir, tmp_path / "plain", **common))
    train_in_process(tiny_train_args(data_dir, tmp_path / "zero", teacher=teacher_path, distill_alpha=0.0,
                                     distill_hidden=0.0, **common))
    assert without_timings(metrics(tmp_path / "zero")) == without_timings(metrics(tmp_path / "plain"))


def test_a_copy_of_the_teacher_has_zero_kd_and_hidden_loss(tmp_path, teacher_path):
    data_dir = random_corpus(tmp_path / "random")
    train_in_process(tiny_train_args(data_dir, tmp_path / "out", init_from=teacher_path, teacher=teacher_path,
                                     distill_alpha=0.5, distill_hidden=1.0, max_iters=2, eval_interval=2, dropout=0.0))
    first = [r for r in metrics(tmp_path / "out") if r["iter"] == 0 and "loss" in r][0]
    assert abs(first["kd_loss"]) < 1e-6 and abs(first["hidden_loss"]) < 1e-6
    assert first["loss"] == pytest.approx(0.5 * first["ce_loss"], rel=1e-6)


def test_kd_term_and_its_gradient_match_the_plain_formula():
    torch.manual_seed(0)
    T, alpha, hidden_weight = 2.0, 0.3, 0.7
    logits = torch.randn(2, 5, 11, dtype=torch.float64, requires_grad=True)
    teacher_logits = torch.randn(2, 5, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (2, 5))
    states = [torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    teacher_states = [torch.randn(2, 5, 4, dtype=torch.float64) for _ in range(3)]
    settings = dict(distill_temperature=T, distill_alpha=alpha, distill_hidden=hidden_weight)
    parts = train.distillation_losses(logits, targets, states, teacher_logits, teacher_states, settings)

    p = torch.softmax(teacher_logits / T, dim=-1)  # written out: sum_v p (log p - log q), mean over positions
    q = torch.softmax(logits / T, dim=-1)
    kd = T * T * (p * (p.log() - q.log())).sum(-1).mean()
    ce = -torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).mean()
    hidden = sum(((s - t) ** 2).mean() for s, t in zip(states, teacher_states)) / 3
    torch.testing.assert_close(parts["kd_loss"], kd.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts["ce_loss"], ce.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts["hidden_loss"], hidden.float(), rtol=1e-6, atol=1e-7)
    reference = (1 - alpha) * ce + alpha * kd + hidden_weight * hidden
    torch.testing.assert_close(parts["loss"].double(), reference, rtol=1e-6, atol=1e-7)

    got = torch.autograd.grad(parts["kd_loss"], logits)[0]
    want = torch.autograd.grad(kd, logits)[0]
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-5, atol=1e-7)
    # and in closed form: d(T^2 KL)/d logits = T (q - p) / positions
    torch.testing.assert_close(want, T * (q - p).detach() / 10, rtol=1e-10, atol=1e-12)


def test_resume_with_distillation_is_exact(tmp_path, teacher_path):
    data_dir = random_corpus(tmp_path / "random")
    common = dict(teacher=teacher_path, distill_alpha=0.5, distill_hidden=0.5, distill_temperature=1.5, dim_1=8,
                  dim_2=16, factors=1, init="random", eval_interval=10, lr_decay_iters=20,
                  gradient_accumulation_steps=2)
    train_in_process(tiny_train_args(data_dir, tmp_path / "straight", max_iters=20, **common))
    train_in_process(tiny_train_args(data_dir, tmp_path / "resumed", max_iters=10, **common))
    train_in_process(tiny_train_args(data_dir, tmp_path / "resumed", max_iters=20, init_from="resume", **common))
    straight, resumed = (without_timings(metrics(tmp_path / name)) for name in ("straight", "resumed"))
    assert [r.keys() for r in resumed] == [r.keys() for r in straight]
    assert {"ce_loss", "kd_loss", "hidden_loss"} <= set(straight[1])
    for a, b in zip(straight, resumed):
        assert all(abs(a[k] - b[k]) <= 1e-6 for k in a), (a, b)
    final = [load_checkpoint(str(tmp_path / name / "ckpt.pt")) for name in ("straight", "resumed")]
    for name, tensor in final[0][0].state_dict().items():
        torch.testing.assert_close(final[1][0].state_dict()[name], tensor, rtol=0, atol=1e-6)
    assert final[1][1]["config"]["teacher"] == teacher_path  # the source, not the teacher's weights
    assert not any("teacher" in key for key in final[1][1]["model"])


def test_distillation_lowers_kd_loss_and_val_loss_stays_cross_entropy(tmp_path, teacher_path):
    """With alpha 1 the student learns the teacher's distribution only: its KD loss falls; evaluation still
    reports plain cross-entropy (an evaluation's val_loss equals the model's loss on the same windows)."""
    data_dir = random_corpus(tmp_path / "random")
    train_in_process(tiny_train_args(data_dir, tmp_path / "kd", teacher=teacher_path, distill_alpha=1.0,
                                     max_iters=20, eval_interval=20))
    records = metrics(tmp_path / "kd")
    steps = [r for r in records if "kd_loss" in r]
    assert steps[-1]["kd_loss"] < 0.5 * steps[0]["kd_loss"]
    assert all(r["loss"] == pytest.approx(r["kd_loss"], rel=1e-6) for r in steps)
    evaluations = [r for r in records if "val_loss" in r]
    assert set(evaluations[-1]) == {"run", "iter", "train_loss", "val_loss", "lr", "elapsed_s"}


@pytest.mark.parametrize("overrides,message", [
    (dict(teacher="{tmp}/missing.pt"), "cannot load teacher="),
    (dict(teacher="{teacher}", vocab_size=65), "has vocab_size=64, the student 65"),
    (dict(teacher="{teacher}", block_size=16, distill_alpha=1.5), "distill_alpha=1.5 must be in [0, 1]"),
    (dict(teacher="{teacher}", distill_temperature=-1.0), "distill_temperature=-1.0 must be positive"),
    (dict(teacher="{teacher}", distill_hidden=-0.5), "distill_hidden=-0.5 must not be negative"),
    (dict(distill_alpha=0.5), "distill_alpha and distill_hidden need a teacher"),
    (dict(teacher="{teacher}", distill_hidden=1.0, n_layer=3), "the teacher has n_layer=2, n_embd=32 and the student"),
    (dict(teacher="{teacher}", block_size=32), "a context of 16 tokens, shorter than the student's block_size=32"),
])
def test_bad_distillation_settings_fail_before_training(tmp_path, teacher_path, capsys, overrides, message):
    data_dir = random_corpus(tmp_path / "random")
    overrides = {k: v.format(tmp=tmp_path, teacher=teacher_path) if isinstance(v, str) else v
                 for k, v in overrides.items()}
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_train_args(data_dir, tmp_path / "out", **overrides))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "out" / "metrics.jsonl")


def test_a_teacher_that_diverges_stops_the_run_keeping_the_checkpoint(tmp_path, teacher_path, capsys):
    data_dir = random_corpus(tmp_path / "random")
    broken = load_checkpoint(teacher_path)[0]
    with torch.no_grad():
        broken.transformer.ln_f.weight.fill_(float("nan"))
    broken_path = str(tmp_path / "broken.pt")
    save_checkpoint(make_checkpoint(broken), broken_path)
    train_in_process(tiny_train_args(data_dir, tmp_path / "out", max_iters=2, eval_interval=2))
    before = open(tmp_path / "out" / "ckpt.pt", "rb").read()
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_train_args(data_dir, tmp_path / "out", init_from="resume", max_iters=4,
                                   teacher=broken_path, distill_alpha=0.5))
    assert exit_info.value.code == 1 and "not finite" in capsys.readouterr().err
    assert open(tmp_path / "out" / "ckpt.pt", "rb").read() == before


def test_distill_config_differs_from_train_gpt2_in_distillation_alone():
    base = load_config(train.SETTINGS, [os.path.join(ROOT, "config", "train_gpt2.py")])
    distill = load_config(train.SETTINGS, [os.path.join(ROOT, "config", "distill_gpt2.py")])
    differing = {k for k in base if base[k] != distill[k]}
    assert differing == {"out_dir", "wandb_run_name", "teacher", "distill_alpha"}
    assert distill["teacher"] == "gpt2" and 0 < distill["distill_alpha"] <= 1
    json.dumps(distill)  # plain values only


def test_distillation_under_torchrun_with_two_processes(torchrun_run):
    """DDP: each process loads the teacher once, unwrapped; the logged parts are averaged over the processes."""
    out_dir, run = torchrun_run
    result = run.result()
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [r for r in metrics(out_dir) if "kd_loss" in r]
    assert [r["iter"] for r in steps] == [0, 1, 2, 3]
    for r in steps:
        assert r["loss"] == pytest.approx(0.5 * r["ce_loss"] + 0.5 * r["kd_loss"] + 0.5 * r["hidden_loss"], rel=1e-5)
    assert load_checkpoint(str(out_dir / "ckpt.pt"))[1]["iter_num"] == 4
