"""train.py stopped by SIGUSR1 or SIGTERM: it saves at the next step boundary, exits with its documented status,
and --init_from=resume goes on bit for bit; a second SIGTERM kills it without harm to the last checkpoint; under
torchrun every rank stops at the same iteration; wandb goes on in the same run."""
import os
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
from conftest import ROOT, metrics, random_corpus, run_main, tiny_train_args, train_in_process

import train
from checkpoints import load_checkpoint

STOP_AT = 5  # the stop signal arrives during iteration 4's forward pass, between the evaluations at 4 and 8
PREEMPTED = dict(max_iters=100_000, eval_interval=4, lr_decay_iters=8)  # a long run, stopped early
STRAIGHT = dict(max_iters=8, eval_interval=4, lr_decay_iters=8)


def signal_during_iteration(monkeypatch, signum, iteration):
    """Send this process signum while forward_backward runs for the given iteration (counted from 0)."""
    calls, real = [], train.forward_backward

    def forward_backward(*args):
        calls.append(None)
        if len(calls) == iteration + 1:
            os.kill(os.getpid(), signum)
        return real(*args)
    monkeypatch.setattr(train, "forward_backward", forward_backward)


def losses(out_dir):
    """Every logged number but the timings (and the run's id)."""
    return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "ms_per_iter", "elapsed_s", "run")}
            for r in metrics(out_dir)]


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_a_stopped_run_saves_between_evaluations_and_resumes_bit_for_bit(tmp_path, monkeypatch, capsys, signum):
    data_dir = random_corpus(tmp_path / "random")
    common = dict(dropout=0.1, dim_1=8, dim_2=16, factors=1, init="random")  # RNG and 3-D optimizer states
    train_in_process(tiny_train_args(data_dir, tmp_path / "straight", **common, **STRAIGHT))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    with monkeypatch.context() as patch:
        signal_during_iteration(patch, signum, STOP_AT - 1)
        status, out, err = run_main(train.main, tiny_train_args(data_dir, tmp_path / "stopped", **common,
                                                                **PREEMPTED), capsys)
    assert status == {signal.SIGUSR1: 0, signal.SIGTERM: 143}[signum] == train.STOP_EXIT_STATUS[signum], err
    ckpt_path = tmp_path / "stopped" / "ckpt.pt"
    assert f"stopped by {signum.name} at iteration {STOP_AT}: saved {ckpt_path}; go on with --init_from=resume" in out
    assert load_checkpoint(str(ckpt_path))[1]["iter_num"] == STOP_AT
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the run's handlers are gone with it

    train_in_process(tiny_train_args(data_dir, tmp_path / "stopped", init_from="resume", **common, **STRAIGHT))
    assert losses(tmp_path / "stopped") == losses(tmp_path / "straight")  # exactly: bit for bit
    assert len({r["run"] for r in metrics(tmp_path / "stopped")}) == 1
    straight = load_checkpoint(str(tmp_path / "straight" / "ckpt.pt"))[0].state_dict()
    resumed = load_checkpoint(str(ckpt_path))[0].state_dict()
    assert all(torch.equal(resumed[name], tensor) for name, tensor in straight.items())


SECOND_SIGTERM = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train
real_forward_backward, real_save, calls = train.forward_backward, train.save_checkpoint, []

def forward_backward(*args):
    calls.append(None)
    if len(calls) == {stop_at}:
        os.kill(os.getpid(), signal.SIGTERM)
    return real_forward_backward(*args)

def save_checkpoint(checkpoint, path):
    if checkpoint["iter_num"] == {stop_at}:  # the stop's save, half written when the second SIGTERM comes
        with open(path + ".tmp-partial", "wb") as f:
            f.write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGTERM)
    real_save(checkpoint, path)

train.forward_backward, train.save_checkpoint = forward_backward, save_checkpoint
train.main(sys.argv[1:])
"""


def test_a_second_sigterm_during_the_save_kills_the_run_and_the_last_checkpoint_stays_good(tmp_path):
    data_dir, out_dir = random_corpus(tmp_path / "random"), tmp_path / "out"
    script = SECOND_SIGTERM.format(root=ROOT, stop_at=STOP_AT)
    result = subprocess.run([sys.executable, "-c", script, *tiny_train_args(data_dir, out_dir, **PREEMPTED)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == -signal.SIGTERM, result.stderr  # killed by it, not a clean exit
    assert "stopped by" not in result.stdout and f"saved {out_dir / 'ckpt.pt'} (iteration 4)" in result.stdout
    assert load_checkpoint(str(out_dir / "ckpt.pt"))[1]["iter_num"] == 4  # the evaluation's, intact


def rank_processes(parent_pid):
    """{rank: pid} of the processes torchrun started."""
    ranks = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if ppid == parent_pid and b"RANK" in environ:
            ranks[int(environ[b"RANK"])] = int(pid)
    return ranks


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's processes in /proc")
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_the_same_iteration(tmp_path):
    data_dir, out_dir = random_corpus(tmp_path / "random"), tmp_path / "out"
    args = tiny_train_args(data_dir, out_dir, **{**PREEMPTED, "eval_interval": 1000})
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (os.path.exists(out_dir / "metrics.jsonl") and
                                              max(r["iter"] for r in metrics(out_dir)) >= 2):
            time.sleep(0.1)
        os.kill(rank_processes(process.pid)[1], signal.SIGUSR1)  # rank 0 learns of it from the all-reduce
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    stopped_at = int(out.split("stopped by SIGUSR1 at iteration ")[1].split(":")[0])
    _, checkpoint = load_checkpoint(str(out_dir / "ckpt.pt"))
    assert checkpoint["iter_num"] == stopped_at >= 3 and len(checkpoint["rng"]) == 2  # both ranks' batch streams


def test_wandb_goes_on_in_the_same_run(tmp_path, monkeypatch, capsys):
    inits = []
    fake = types.SimpleNamespace(init=lambda **kwargs: inits.append(kwargs), log=lambda record, step: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    data_dir, out_dir = random_corpus(tmp_path / "random"), tmp_path / "out"
    with monkeypatch.context() as patch:
        signal_during_iteration(patch, signal.SIGUSR1, 2)
        status, _, err = run_main(train.main, tiny_train_args(data_dir, out_dir, wandb_log=True, **PREEMPTED),
                                  capsys)
    assert status == 0, err
    train_in_process(tiny_train_args(data_dir, out_dir, wandb_log=True, init_from="resume", **STRAIGHT))
    run_id = load_checkpoint(str(out_dir / "ckpt.pt"))[1]["run_id"]
    assert [(i["id"], i["resume"]) for i in inits] == [(run_id, "allow")] * 2
