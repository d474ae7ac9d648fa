"""
Train a GPT-2 or a Kronecker-factored GPT-2 on nanoGPT token files, on one CPU or on many GPUs.

    python train.py config/train_shakespeare.py --device=cpu --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Settings are the defaults below, then config files, then --key=value overrides (see configurator.py).
init_from chooses the starting point:
    scratch          a new GPT from n_layer, n_head, n_embd, ...; Kronecker matrices where the plan (kron,
                     kron_layers, or the MLP shorthand dim_1, dim_2, factors) names them, Monarch matrices where
                     monarch does (init must then be random: there is no dense model to decompose)
    resume           out_dir/ckpt.pt, with its optimizer, iteration and random number generator states and the
                     settings the run was started with; settings given now override them, printed in one line
                     (`resume: max_iters 20 -> 30`), but the model's shape, plan and vocabulary and the dataset
                     cannot change mid-run
    a file           one of our checkpoints: a Kronecker one (kron_decompose.py's output) is used as it is,
                     a dense one is compressed here by the plan
    anything else    a Hugging Face GPT-2 (hub name like gpt2, or a local directory), compressed here by the
                     plan with `init` (vl, vl_norm, prune, random, or act: fitted to the dense model's outputs
                     on `calibration`, by default the run's own train.bin)
A fresh run (anything but resume) refuses an out_dir that already holds a ckpt.pt unless overwrite=True.
With a teacher (any model source), the loss mixes in knowledge distillation:
    (1 - distill_alpha) * cross-entropy + distill_alpha * T^2 * KL(teacher || student) at temperature T
    + distill_hidden * mean squared error of the residual streams (after the embedding and each block)
Writes out_dir/ckpt.pt (atomically, at evaluations) and out_dir/metrics.jsonl (one JSON line per log and
evaluation step, each with the run's id).

Preemption: on SIGUSR1 or SIGTERM the run finishes the iteration it is in, saves a complete ckpt.pt (also between
evaluations), prints where, and exits 0 after SIGUSR1 (the early warning of Slurm's --signal=USR1@120, for a job
that requeues itself) or 143 after SIGTERM (128 + 15, as if killed by it). Under torchrun every rank stops at the
same iteration. A second SIGTERM before the save ends kills the run at once; the previous ckpt.pt stays intact.
--init_from=resume then goes on with the same losses, bit for bit, as a run that was never stopped.
"""

import json
import math
import os
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoints import (load_checkpoint, load_model, load_model_config, load_vocab, make_checkpoint, read_checkpoint,
                         save_checkpoint)
from common import (ACT_LR, ACT_STEPS, CALIBRATION_TOKENS, UsageError, check_vocab, one_line, open_tokens,
                    read_calibration, read_vocab, usage_errors, write_text)
from compress import INITS, compress
from configurator import ConfigError, load_config
from devices import autocast_context, resolve_dtype, setup_device
from kron_shapes import PLAN_SETTINGS, Plan
from model import GPT, GPTConfig, IGNORE_INDEX

OPTIONAL_INT, OPTIONAL_DICT = (int, None), (dict, None)
SETTINGS = dict(  # key=(default, type)
    # I/O
    out_dir=("out", str),
    overwrite=(False, bool),  # let a fresh run replace the run already in out_dir
    eval_interval=(2000, int),
    log_interval=(1, int),
    eval_iters=(200, int),
    eval_only=(False, bool),  # evaluate once, then exit
    always_save_checkpoint=(True, bool),  # else only when the val loss improves
    init_from=("scratch", str),  # scratch, resume, a checkpoint file, or a GPT-2 hub name or directory
    # wandb logging (optional: pip install wandb)
    wandb_log=(False, bool),
    wandb_project=("krony", str),
    wandb_run_name=("krony", str),
    # data
    dataset=("owt", str),
    data_dir=("", str),  # empty: data/<dataset>
    gradient_accumulation_steps=(5 * 8, int),  # micro-batches per iteration, over all processes together
    batch_size=(12, int),  # sequences per micro-batch
    block_size=(1024, int),
    # model
    n_layer=(12, int),
    n_head=(12, int),
    n_embd=(768, int),
    vocab_size=(50257, int),
    dropout=(0.0, float),
    bias=(True, bool),
    # the Kronecker plan (kron_shapes.Plan): kron={'c_fc': (768, 768, 1), 'c_fc@3': (768, 768, 2), ...} for any
    # of wte, c_attn, attn_proj, c_fc, c_proj (NAME@BLOCKS: in those blocks only); kron_layers: the blocks of the
    # plain NAME entries, all, odd, even or "0,2,4"; dim_1, dim_2, factors: the MLP shorthand
    dim_1=(None, OPTIONAL_INT),
    dim_2=(None, OPTIONAL_INT),
    factors=(None, OPTIONAL_INT),
    kron=(None, OPTIONAL_DICT),
    kron_layers=("all", (str, tuple, list)),
    # Monarch matrices (monarch.py) of a number of blocks, with the keys of kron: monarch={'c_fc': 4, 'c_proj@3': 8}
    monarch=(None, OPTIONAL_DICT),
    init=("vl", str),  # how the factors start from a dense model: vl, vl_norm, prune, random, act
    # init act: fitted to the teacher's outputs on calibration tokens (compress.fit_to_calibration)
    calibration=("", str),  # a token file; empty: the run's own train.bin
    calibration_tokens=(CALIBRATION_TOKENS, int),
    act_steps=(ACT_STEPS, int),  # Adam steps per factored MLP or attention
    act_lr=(ACT_LR, float),  # cosine to a tenth of it
    act_sweeps=(0, int),  # alternating least-squares sweeps before Adam
    # knowledge distillation
    teacher=("", str),  # a model source (hub name, Hugging Face directory, checkpoint); empty: none
    distill_alpha=(0.0, float),  # weight of the teacher's softened distribution against the tokens
    distill_temperature=(2.0, float),
    distill_hidden=(0.0, float),  # weight of the residual streams' mean squared error
    # AdamW
    learning_rate=(6e-4, float),
    max_iters=(600000, int),
    weight_decay=(1e-1, float),
    beta1=(0.9, float),
    beta2=(0.95, float),
    grad_clip=(1.0, float),  # 0: no clipping
    # learning rate: linear warmup, then cosine decay to min_lr at lr_decay_iters
    decay_lr=(True, bool),
    warmup_iters=(2000, int),
    lr_decay_iters=(600000, int),
    min_lr=(6e-5, float),
    # system
    backend=("auto", str),  # nccl on GPUs, gloo on CPU
    device=("auto", str),  # cuda, then mps, then cpu; or e.g. cpu, cuda:1
    dtype=("auto", str),  # autocast: bfloat16 where supported on cuda, else float16 on cuda, else float32
    compile=(True, bool),
    seed=(1337, int),
)
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "vocab_size", "bias", "block_size")
PLAN_KEYS = tuple(PLAN_SETTINGS)
FIXED_ON_RESUME = MODEL_KEYS + PLAN_KEYS + ("dataset",)  # what the saved weights and optimizer state are of


class NonFiniteLoss(Exception):
    """The loss diverged: the run stops before the optimizer step, exit status 1."""


STOP_EXIT_STATUS = {signal.SIGUSR1: 0, signal.SIGTERM: 128 + signal.SIGTERM}


class Stopped(Exception):
    """A stop signal arrived and the run saved its checkpoint; main exits with STOP_EXIT_STATUS[signum]."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Records SIGUSR1 and SIGTERM for the loop to act on at its next step boundary (a handler that saved would
    interrupt the step's work halfway); a second SIGTERM, once one is recorded, restores the default and kills."""

    def __init__(self, rt):
        self.signum = None
        self.flag = torch.zeros(1, dtype=torch.long, device=rt.device) if rt.ddp else None  # all-reduced per step
        self.previous = {signum: signal.signal(signum, self.handle) for signum in STOP_EXIT_STATUS}

    def handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        self.signum = self.signum or signum

    def agreed(self):
        """The signal to stop on, the same on every rank (all-reduced: whichever rank got one), or None."""
        if self.flag is None:
            return self.signum
        self.flag.fill_(self.signum or 0)
        dist.all_reduce(self.flag, op=dist.ReduceOp.MAX)
        return int(self.flag.item()) or None

    def restore(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def check_config(settings):
    """Fail before any work on settings that cannot run."""
    choices = {"init": tuple(INITS), "dtype": ("auto", "float32", "bfloat16", "float16"),
               "backend": ("auto", "nccl", "gloo")}
    for key, allowed in choices.items():
        if settings[key] not in allowed:
            raise UsageError(f"{key}={settings[key]!r} is not one of {', '.join(allowed)}")
    for key in ("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size",
                "block_size", "n_layer", "n_head", "n_embd", "vocab_size", "calibration_tokens"):
        if settings[key] < 1:
            raise UsageError(f"{key}={settings[key]} must be at least 1")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "learning_rate", "min_lr", "weight_decay",
                "grad_clip", "distill_hidden", "act_steps", "act_sweeps"):
        if settings[key] < 0:
            raise UsageError(f"{key}={settings[key]} must not be negative")
    for key in ("dropout", "beta1", "beta2"):
        if not 0 <= settings[key] < 1:
            raise UsageError(f"{key}={settings[key]} must be in [0, 1)")
    if settings["act_lr"] <= 0:
        raise UsageError(f"act_lr={settings['act_lr']} must be positive")
    if not 0 <= settings["distill_alpha"] <= 1:
        raise UsageError(f"distill_alpha={settings['distill_alpha']} must be in [0, 1]")
    if settings["distill_temperature"] <= 0:
        raise UsageError(f"distill_temperature={settings['distill_temperature']} must be positive")
    if not settings["teacher"] and (settings["distill_alpha"] > 0 or settings["distill_hidden"] > 0):
        raise UsageError("distill_alpha and distill_hidden need a teacher: set teacher= to a model source")
    if settings["init_from"] == "scratch":  # the whole model is known from the settings: check the plan now
        with usage_errors():
            config = GPTConfig.from_settings(**{k: settings[k] for k in MODEL_KEYS + PLAN_KEYS})
            config.plan.check_init(settings["init"])
        if config.plan and settings["init"] != "random":
            raise UsageError(f"init={settings['init']} decomposes a dense model, but init_from=scratch has none: use "
                             f"init=random, or init_from=gpt2 (or a dense checkpoint) to decompose it")
    occupied = os.path.exists(os.path.join(settings["out_dir"], "ckpt.pt"))
    if settings["init_from"] != "resume" and occupied and not settings["overwrite"]:
        raise UsageError(f"{settings['out_dir']} already holds a run (ckpt.pt): continue it with --init_from=resume, "
                         f"choose another out_dir, or replace it with --overwrite=True")
    if settings["wandb_log"]:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UsageError("wandb_log=True but wandb is not installed: pip install wandb") from None


def get_lr(it, settings):
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, min_lr after."""
    if not settings["decay_lr"]:
        return settings["learning_rate"]
    if it < settings["warmup_iters"]:
        return settings["learning_rate"] * (it + 1) / (settings["warmup_iters"] + 1)
    if it >= settings["lr_decay_iters"]:
        return settings["min_lr"]
    decay_ratio = (it - settings["warmup_iters"]) / (settings["lr_decay_iters"] - settings["warmup_iters"])
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return settings["min_lr"] + coeff * (settings["learning_rate"] - settings["min_lr"])


def data_dir_of(settings):
    """data_dir, or data/<dataset> when it is empty; a data_dir that is not a folder is refused."""
    if settings["data_dir"] and not os.path.isdir(settings["data_dir"]):
        raise UsageError(f"no such folder: data_dir={settings['data_dir']}")
    return settings["data_dir"] or os.path.join("data", settings["dataset"])


def check_tokens(data_dir, split, block_size, vocab_size=None):
    """Fail unless the split's token file is sound (common.open_tokens) and holds at least one window."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        prepare = os.path.join(data_dir, "prepare.py")
        raise UsageError(f"{path} not found: run `python {prepare}` first (or set data_dir)")
    data = open_tokens(path, vocab_size)
    if len(data) <= block_size:
        raise UsageError(f"{path} holds {len(data)} tokens, too few for one window of block_size={block_size}")


def get_batch(data_dir, split, batch_size, block_size, generator, device):
    """batch_size random windows of block_size tokens (inputs) and the same shifted by one (targets)."""
    # A new memmap per batch, as nanoGPT: a long-lived one keeps every page it touched in memory.
    data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.from_numpy(np.stack([data[i:i + block_size] for i in ix]).astype(np.int64))
    y = torch.from_numpy(np.stack([data[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64))
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def plan_of(settings, config):
    """The Plan the settings ask of a model of config's shape, or None when they name no matrix (kron_layers alone
    factors nothing)."""
    plan_settings = {key: settings[key] for key in PLAN_KEYS if settings[key] != PLAN_SETTINGS[key]}
    if not set(plan_settings) - {"kron_layers"}:
        return None
    return Plan.from_settings(config.n_embd, config.n_layer, config.vocab_size, **plan_settings)


def resume_path(settings):
    """out_dir/ckpt.pt, the checkpoint init_from=resume goes on from."""
    path = os.path.join(settings["out_dir"], "ckpt.pt")
    if not os.path.isfile(path):
        raise UsageError(f"init_from=resume but {path} does not exist")
    return path


def init_model(settings, master, calibration_path, device="cpu"):
    """(model, checkpoint): the model init_from names, with the run's context and dropout; checkpoint only when
    resuming. init act reads its calibration tokens from calibration_path, before any weights, and fits on
    `device`."""
    init_from, checkpoint = settings["init_from"], None
    if init_from == "scratch":
        model = GPT(GPTConfig.from_settings(**{k: settings[k] for k in MODEL_KEYS + PLAN_KEYS + ("dropout",)}))
    elif init_from == "resume":
        path = resume_path(settings)
        try:
            model, checkpoint = load_checkpoint(path)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load init_from=resume: {one_line(e)}") from None
    else:
        with usage_errors(init_from):  # a plan that does not fit the model, or an init that cannot start from it
            calibration = act_calibration(settings, calibration_path) if settings["init"] == "act" else None
            model = compress_as_planned(load_model(init_from, what=f"init_from={init_from!r}"), settings, master,
                                        calibration, device)
    if settings["block_size"] < model.config.block_size:
        model = model.crop_block_size(settings["block_size"])
    return model.with_dropout(settings["dropout"]), checkpoint


def act_calibration(settings, calibration_path):
    """init act's calibration tokens, read (or refused) from the model's shape alone, before any weights are; None
    when the model is not compressed here."""
    shape = load_model_config(settings["init_from"], what=f"init_from={settings['init_from']!r}")
    if shape.plan or plan_of(settings, shape) is None:
        return None
    return torch.from_numpy(read_calibration(calibration_path, settings["calibration_tokens"],
                                             min(shape.block_size, settings["block_size"]), shape.vocab_size))


def compress_as_planned(model, settings, master, calibration, device):
    """A dense model compressed by the plan the settings ask for, if any; a Kronecker model as it is (the settings
    may only repeat its plan). ValueError for a plan that does not fit the model."""
    plan = plan_of(settings, model.config)
    if plan is not None and model.config.plan and plan != model.config.plan:
        raise UsageError(f"{settings['init_from']} is a Kronecker model with the plan {model.config.plan}, but the "
                         f"settings ask for {plan}: set them to match, or unset them to take the model's")
    if plan is None or model.config.plan:
        return model
    if master:
        print(f"compressing {settings['init_from']} ({model.get_num_params():,} parameters) with {plan}, "
              f"init={settings['init']}")
    return compress(model, plan, settings["init"], progress=master, calibration=calibration,
                    act_steps=settings["act_steps"], act_lr=settings["act_lr"], act_sweeps=settings["act_sweeps"],
                    act_device=device)


def check_model_vocab(settings, model, checkpoint, itos, data_dir):
    """Refuse a model whose ids mean something else than the dataset's (common.check_vocab); a checkpoint of a
    character-level dataset carries its characters, itos."""
    if settings["init_from"] == "scratch":
        return
    source = "init_from=resume" if checkpoint is not None else f"init_from={settings['init_from']}"
    model_itos = checkpoint.get("itos") if checkpoint is not None else \
        load_vocab(settings["init_from"], what=f"init_from={settings['init_from']!r}")
    check_vocab(source, model.config.vocab_size, model_itos, data_dir, itos)


def adopted_shape(settings, model, master):
    """The model's shape and plan wherever they differ from the settings (with a note), as nanoGPT adopts them;
    the plan in its one stored form (kron, and monarch)."""
    adopted = {}
    for key in MODEL_KEYS:
        value = getattr(model.config, key)
        if settings[key] != value:
            if master and settings[key] != SETTINGS[key][0]:  # a setting left at its default takes the model's
                print(f"note: {key}={settings[key]} in the settings; the model from init_from="
                      f"{settings['init_from']} has {key}={value}, which is used")
            adopted[key] = value
    try:
        asked = plan_of(settings, model.config) or Plan(model.config.n_embd, model.config.n_layer,
                                                        model.config.vocab_size)
    except ValueError:  # a resumed run whose settings no longer fit its model: the model's plan is used
        asked = None
    if asked != model.config.plan:
        if master and asked:
            print(f"note: the plan {asked} in the settings; the model from init_from={settings['init_from']} has "
                  f"the plan {model.config.plan}, which is used")
        adopted.update({**PLAN_SETTINGS, "kron": model.config.plan.to_kron() or None,
                        "monarch": model.config.plan.to_monarch() or None})
    return adopted


def load_teacher(settings, model, device):
    """The distillation teacher on the run's device, in eval mode and without gradients, checked against the
    student: the same vocabulary, a context at least the student's (cropped to it), the same depth and width
    when hidden states are matched."""
    teacher = load_model(settings["teacher"], what=f"teacher={settings['teacher']!r}")
    t, s = teacher.config, model.config
    if t.vocab_size != s.vocab_size:
        raise UsageError(f"teacher {settings['teacher']} has vocab_size={t.vocab_size}, the student {s.vocab_size}")
    if t.block_size < s.block_size:
        raise UsageError(f"teacher {settings['teacher']} has a context of {t.block_size} tokens, shorter than the "
                         f"student's block_size={s.block_size}")
    if settings["distill_hidden"] > 0 and (t.n_layer, t.n_embd) != (s.n_layer, s.n_embd):
        raise UsageError(f"distill_hidden matches hidden states layer by layer, but the teacher has n_layer="
                         f"{t.n_layer}, n_embd={t.n_embd} and the student n_layer={s.n_layer}, n_embd={s.n_embd}")
    if t.block_size > s.block_size:
        teacher = teacher.crop_block_size(s.block_size)
    return teacher.to(device).eval().requires_grad_(False)


def distillation_losses(logits, targets, states, teacher_logits, teacher_states, settings):
    """{"loss", "ce_loss", "kd_loss", "hidden_loss"}: the loss train.py optimises and its parts (module doc)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
    T = settings["distill_temperature"]
    student_log_probs = F.log_softmax(logits.float() / T, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / T, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none").sum(-1).mean()
    kd = T * T * kl
    hidden = logits.new_zeros((), dtype=torch.float32)  # a student of another width or depth has no states to match
    if settings["distill_hidden"] > 0:
        hidden = sum(F.mse_loss(s.float(), t.float()) for s, t in zip(states, teacher_states)) / len(states)
    loss = (1 - settings["distill_alpha"]) * ce + settings["distill_alpha"] * kd + settings["distill_hidden"] * hidden
    return {"loss": loss, "ce_loss": ce, "kd_loss": kd, "hidden_loss": hidden}


def rng_state(batch_generator, device):
    """Every random number generator the run draws from, as tensors and plain Python values."""
    return {"batch": batch_generator.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "python": random.getstate()}


def set_rng_state(state, batch_generator, device):
    batch_generator.set_state(state["batch"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate(state["python"])


def seed_everything(seed):
    """Seed torch and Python; return the generator that draws the training batches."""
    torch.manual_seed(seed)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


def append_metrics(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path, iter_num):
    """Drop the lines a crashed run logged after the checkpoint it is resumed from."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    # The checkpoint at iter_num was written right after that iteration's evaluation line.
    keep = [r for r in records if r["iter"] < iter_num or (r["iter"] == iter_num and "val_loss" in r)]
    if len(keep) < len(records):
        write_text("".join(json.dumps(r) + "\n" for r in keep), path)


# ----------------------------------------------------------------------------------------------------
# The run: set-up, then the loop of evaluate-and-save and forward-backward steps.

@dataclass
class Runtime:
    """Where and how this process computes."""
    ddp: bool
    rank: int
    world_size: int
    master: bool
    device: torch.device
    dtype: str
    grad_accum: int  # micro-batches per iteration in this process

    @property
    def autocast(self):
        return autocast_context(self.device, self.dtype)


def setup_runtime(settings):
    """The process's rank, device and precision, from torchrun's environment and the settings."""
    ddp = "RANK" in os.environ  # set by torchrun
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if settings["gradient_accumulation_steps"] % world_size:
        raise UsageError(f"gradient_accumulation_steps={settings['gradient_accumulation_steps']} must be a multiple "
                         f"of the number of processes ({world_size})")
    device_name = settings["device"]
    if ddp and (device_name == "auto" and torch.cuda.is_available() or device_name.startswith("cuda")):
        device_name = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # one GPU per process
    with usage_errors():
        device = setup_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if ddp:
        backend = settings["backend"] if settings["backend"] != "auto" else "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Runtime(ddp, rank, world_size, rank == 0, device, resolve_dtype(settings["dtype"], device),
                   settings["gradient_accumulation_steps"] // world_size)


@dataclass
class State:
    """What a checkpoint restores besides the weights."""
    iter_num: int = 0
    best_val_loss: float = float("inf")
    elapsed_before: float = 0.0
    run_id: str = ""


def restore(checkpoint, optimizer, scaler, batch_generator, rt):
    """The State of a resumed run; the optimizer, scaler and random number generators set as they were saved."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint["scaler"] and scaler.is_enabled():  # empty when saved by a run without float16
        scaler.load_state_dict(checkpoint["scaler"])
    states = checkpoint["rng"]
    if rt.rank < len(states):  # ranks the checkpoint has no state for keep their fresh seed + rank streams
        set_rng_state(states[rt.rank], batch_generator, rt.device)
    if rt.master and len(states) != rt.world_size:
        print(f"note: resuming {rt.world_size} processes from a checkpoint of {len(states)}: batches differ "
              f"from those of an uninterrupted run")
    return State(checkpoint["iter_num"], checkpoint["best_val_loss"], checkpoint["elapsed_s"],
                 checkpoint.get("run_id", ""))


@dataclass
class Run:
    """One training run, built once by start_run: what the loop reads, and the state it changes."""
    settings: dict  # final: the model's own shape and plan adopted; what the checkpoint and wandb record
    rt: Runtime
    data_dir: str
    itos: list | None  # the dataset's characters (its meta.json), None for GPT-2 tokens
    raw_model: GPT
    model: torch.nn.Module  # raw_model, compiled and wrapped in DDP as the settings and torchrun ask
    teacher: GPT | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batch_generator: torch.Generator
    state: State
    resumed: bool
    started: float = 0.0  # time.time() when the loop began: the set-up does not count in elapsed_s

    @property
    def ckpt_path(self):
        return os.path.join(self.settings["out_dir"], "ckpt.pt")

    @property
    def metrics_path(self):
        return os.path.join(self.settings["out_dir"], "metrics.jsonl")

    @property
    def tokens_per_iter(self):
        return self.rt.grad_accum * self.rt.world_size * self.settings["batch_size"] * self.settings["block_size"]

    def elapsed(self):
        """Seconds of training so far, those of the runs it resumes included."""
        return self.state.elapsed_before + time.time() - self.started


def start_run(given):
    """The Run the settings ask for, checked before any slow work, its model built, loaded or compressed, its
    optimizer and random number generators seeded or restored, and out_dir ready. Its settings are the asked ones
    with the model's shape and plan adopted, fixed from then on."""
    data_dir = data_dir_of(given)
    itos = read_vocab(data_dir)  # the characters the ids stand for, where the dataset has a meta.json
    new_vocab = itos is not None and given["init_from"] == "scratch"  # as nanoGPT's meta_vocab_size
    asked = {**given, "vocab_size": len(itos)} if new_vocab else given
    check_config(asked)
    for split in ("train", "val"):
        check_tokens(data_dir, split, asked["block_size"])
    rt = setup_runtime(asked)

    torch.manual_seed(asked["seed"])  # the same initial model whatever the number of processes
    raw_model, checkpoint = init_model(asked, rt.master,
                                       asked["calibration"] or os.path.join(data_dir, "train.bin"), rt.device)
    check_model_vocab(asked, raw_model, checkpoint, itos, data_dir)
    settings = {**asked, **adopted_shape(asked, raw_model, rt.master)}
    for split in ("train", "val"):
        check_tokens(data_dir, split, raw_model.config.block_size, raw_model.config.vocab_size)
    teacher = load_teacher(settings, raw_model, rt.device) if settings["teacher"] else None
    raw_model.to(rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == "float16")
    optimizer = raw_model.configure_optimizers(settings["weight_decay"], settings["learning_rate"],
                                               (settings["beta1"], settings["beta2"]), rt.device.type)
    batch_generator = seed_everything(settings["seed"] + rt.rank)
    if checkpoint is not None:
        state = restore(checkpoint, optimizer, scaler, batch_generator, rt)
    else:
        state = State(run_id=uuid.uuid4().hex[:12])
    model = torch.compile(raw_model) if settings["compile"] else raw_model
    if rt.ddp:
        model = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    run = Run(settings, rt, data_dir, itos, raw_model=raw_model, model=model, teacher=teacher, optimizer=optimizer,
              scaler=scaler, batch_generator=batch_generator, state=state, resumed=checkpoint is not None)
    if rt.master:
        open_outputs(run)
    return run


def open_outputs(run):
    """out_dir ready for the run (a resumed run's metrics cut back to its checkpoint, a fresh run's files removed:
    check_config refused an unintended replacement), the run described, and wandb started when asked."""
    os.makedirs(run.settings["out_dir"], exist_ok=True)
    if run.resumed:
        truncate_metrics(run.metrics_path, run.state.iter_num)
    else:
        for path in (run.metrics_path, run.ckpt_path):
            if os.path.exists(path):
                os.remove(path)
    report_run(run)
    if run.settings["wandb_log"]:
        import wandb
        wandb.init(project=run.settings["wandb_project"], name=run.settings["wandb_run_name"], config=run.settings,
                   id=run.state.run_id, resume="allow")  # a resumed run goes on in the same wandb run


def log(run, record):
    """A line of metrics.jsonl, and a step of the wandb run when there is one (rank 0 only)."""
    record = {"run": run.state.run_id, **record}
    append_metrics(run.metrics_path, record)
    if run.settings["wandb_log"]:
        import wandb
        wandb.log(record, step=record["iter"])


@torch.no_grad()
def estimate_loss(run):
    """Mean loss over eval_iters batches per split, the batches shared out over the processes.

    The windows are drawn from a generator seeded afresh at every evaluation: each evaluation scores the
    same windows, so successive losses differ by the model only, not by sampling noise. Plain cross-entropy,
    with or without distillation, so that runs compare.
    """
    settings, rt = run.settings, run.rt
    model = run.model.module if rt.ddp else run.model
    model.eval()
    losses = {}
    for split in ("train", "val"):
        generator = torch.Generator().manual_seed(settings["seed"])
        total = torch.zeros((), device=rt.device)
        for k in range(settings["eval_iters"]):
            x, y = get_batch(run.data_dir, split, settings["batch_size"], settings["block_size"], generator,
                             rt.device)
            if k % rt.world_size == rt.rank:
                with rt.autocast:
                    total += model(x, y)[1].float()
        if rt.world_size > 1:
            dist.all_reduce(total)
        losses[split] = total.item() / settings["eval_iters"]
    model.train()
    return losses


def evaluate_and_save(run, lr):
    """The losses of estimate_loss, printed and logged; the checkpoint saved when the val loss improved or
    always_save_checkpoint (not at iteration 0, whose weights are the start's, nor in eval_only)."""
    state = run.state
    losses = estimate_loss(run)
    if not all(math.isfinite(v) for v in losses.values()):
        raise NonFiniteLoss(f"iteration {state.iter_num}: train loss {losses['train']}, val loss {losses['val']}")
    if run.rt.master:
        print(f"iter {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        log(run, {"iter": state.iter_num, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr,
                  "elapsed_s": run.elapsed()})
    if losses["val"] < state.best_val_loss or run.settings["always_save_checkpoint"]:
        state.best_val_loss = min(state.best_val_loss, losses["val"])
        if state.iter_num > 0 and not run.settings["eval_only"]:
            save_run(run)
            if run.rt.master:
                print(f"saved {run.ckpt_path} (iteration {state.iter_num})")
    return losses


def forward_backward(run):
    """One iteration's micro-batches through the model and back: {"loss"[, "ce_loss", "kd_loss", "hidden_loss"]}
    averaged over them and over the processes, as floats (one device sync)."""
    settings, rt, model, teacher = run.settings, run.rt, run.model, run.teacher
    distill = teacher is not None and (settings["distill_alpha"] > 0 or settings["distill_hidden"] > 0)
    sums = None
    for micro_step in range(rt.grad_accum):
        if rt.ddp:  # all-reduce the gradients on the last micro-step only
            model.require_backward_grad_sync = micro_step == rt.grad_accum - 1
        x, y = get_batch(run.data_dir, "train", settings["batch_size"], settings["block_size"], run.batch_generator,
                         rt.device)
        with rt.autocast:
            if distill:
                logits, _, states = model(x, return_hidden=True)
                with torch.no_grad():
                    teacher_logits, _, teacher_states = teacher(x, return_hidden=True)
                parts = distillation_losses(logits, y, states, teacher_logits, teacher_states, settings)
            else:
                parts = {"loss": model(x, y)[1]}
        run.scaler.scale(parts["loss"] / rt.grad_accum).backward()
        parts = torch.stack([v.detach().float() for v in parts.values()]) / rt.grad_accum
        sums = parts if sums is None else sums + parts
    if rt.ddp:
        dist.all_reduce(sums)
        sums /= rt.world_size
    names = ("loss", "ce_loss", "kd_loss", "hidden_loss") if distill else ("loss",)
    return dict(zip(names, sums.tolist()))


def optimizer_step(run):
    """Clip the gradients (of the unscaled loss) and step: the iteration's update."""
    if run.settings["grad_clip"] > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.settings["grad_clip"])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def log_step(run, parts, lr, train_time, iters):
    """An iteration's losses printed and logged, with the speed of the iters iterations since the last log, which
    took train_time seconds."""
    tokens_per_sec = run.tokens_per_iter * iters / train_time
    ms_per_iter = 1000 * train_time / iters
    elapsed = run.elapsed()
    extra = "".join(f", {k} {v:.4f}" for k, v in parts.items() if k != "loss")
    print(f"iter {run.state.iter_num}: loss {parts['loss']:.4f}{extra}, lr {lr:.3e}, {tokens_per_sec:,.0f} "
          f"tokens/s, {ms_per_iter:.0f} ms/iter, {elapsed:.0f} s")
    log(run, {"iter": run.state.iter_num, **parts, "lr": lr, "tokens_per_sec": tokens_per_sec,
              "ms_per_iter": ms_per_iter, "elapsed_s": elapsed})


def save_run(run):
    """Everything resume needs, gathered from every rank (their random number generators) and written by rank 0,
    atomically: a failed write leaves the previous checkpoint in place."""
    elapsed = run.elapsed()
    states = [rng_state(run.batch_generator, run.rt.device)]
    if run.rt.ddp:
        states = [None] * run.rt.world_size
        dist.all_gather_object(states, rng_state(run.batch_generator, run.rt.device))
    if not run.rt.master:
        return
    state = run.state
    ckpt = make_checkpoint(run.raw_model, run.itos, optimizer=run.optimizer.state_dict(),
                           scaler=run.scaler.state_dict(), iter_num=state.iter_num, best_val_loss=state.best_val_loss,
                           config=run.settings, rng=states, elapsed_s=elapsed, run_id=state.run_id)
    try:
        save_checkpoint(ckpt, run.ckpt_path)
    except OSError as e:  # disk full, quota: the previous checkpoint is still in place
        raise UsageError(f"cannot write {run.ckpt_path} ({one_line(e)}); the previous checkpoint is intact: free "
                         f"some space and resume with --init_from=resume") from None


def train(given):
    """Run the training loop the settings describe; returns the last evaluation's losses."""
    run = start_run(given)
    settings, state, rt = run.settings, run.state, run.rt
    if state.iter_num >= settings["max_iters"] and not settings["eval_only"]:
        if rt.master:
            print(f"nothing to do: iteration {state.iter_num} is already max_iters={settings['max_iters']}")
        return {}
    last_eval_iter = state.iter_num if run.resumed else -1  # the checkpoint was written at an evaluation
    losses = {}
    run.started = time.time()
    train_time, logged_iters = 0.0, 0
    stop_signals = StopSignals(rt)
    try:
        while True:
            lr = get_lr(state.iter_num, settings)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            due = state.iter_num % settings["eval_interval"] == 0 or state.iter_num == settings["max_iters"]
            if settings["eval_only"] or (due and state.iter_num != last_eval_iter):
                losses = evaluate_and_save(run, lr)
                last_eval_iter = state.iter_num
            if settings["eval_only"] or state.iter_num >= settings["max_iters"]:
                break
            signum = stop_signals.agreed()
            if signum is not None:
                save_run(run)
                if rt.master:
                    print(f"stopped by {signal.Signals(signum).name} at iteration {state.iter_num}: saved "
                          f"{run.ckpt_path}; go on with --init_from=resume", flush=True)
                raise Stopped(signum)

            step_start = time.time()
            parts = forward_backward(run)
            # One device sync per iteration, so that a diverged loss stops the run before it reaches the weights.
            if not all(math.isfinite(v) for v in parts.values()):
                raise NonFiniteLoss(f"iteration {state.iter_num}: training loss {parts['loss']}")
            optimizer_step(run)
            train_time += time.time() - step_start
            logged_iters += 1
            if state.iter_num % settings["log_interval"] == 0 and rt.master:
                log_step(run, parts, lr, train_time, logged_iters)
                train_time, logged_iters = 0.0, 0
            state.iter_num += 1
    finally:
        stop_signals.restore()
    if rt.ddp:
        dist.barrier()  # every rank leaves the loop before any tears its process group down
    if rt.master:
        print(summary(run))
    return losses


def summary(run):
    """The run's last line: where it ended, how well, where its checkpoint is, how long it took."""
    saved = f"checkpoint {run.ckpt_path}" if os.path.exists(run.ckpt_path) else "no checkpoint written"
    return (f"done: {run.state.iter_num} iterations in {run.elapsed():.0f} s, best val loss "
            f"{run.state.best_val_loss:.4f}, {saved}")


def report_run(run):
    """The run described before it starts: the model's size and kind, the batch, the device and data, the
    teacher, where checkpoints and metrics go."""
    model, settings, rt = run.raw_model, run.settings, run.rt
    parts = model.get_num_params_by_part()
    plan = model.config.plan
    kind = f"Kronecker {plan}" if plan else "dense"
    print(f"model: {model.get_num_params(non_embedding=False):,} parameters "
          f"({model.get_num_params():,} without position embeddings; embedding {parts['embedding']:,}, attention "
          f"{parts['attention']:,}, MLPs {parts['mlp']:,}; {kind})")
    print(f"tokens per iteration: {run.tokens_per_iter:,} = {rt.grad_accum} accumulation steps x {rt.world_size} "
          f"processes x {settings['batch_size']} sequences x {settings['block_size']} tokens")
    vocab = f" ({model.config.vocab_size} characters, its meta.json)" if run.itos is not None else ""
    print(f"device: {rt.device}, {rt.dtype}, compile={settings['compile']}; data: {run.data_dir}{vocab}")
    if run.teacher is not None:
        print(f"teacher: {settings['teacher']} ({run.teacher.get_num_params():,} parameters), distill_alpha="
              f"{settings['distill_alpha']}, distill_temperature={settings['distill_temperature']}, distill_hidden="
              f"{settings['distill_hidden']}")
    when = "every evaluation" if settings["always_save_checkpoint"] else "when the val loss improves"
    print(f"checkpoints: {run.ckpt_path} ({when}, every {settings['eval_interval']} iterations); metrics: "
          f"{run.metrics_path}")


def given_settings(argv):
    """The settings argv sets itself (config files, then --key=value), without the defaults."""
    unset = object()
    given = load_config({key: (unset, kind) for key, (_, kind) in SETTINGS.items()}, argv)
    return {key: value for key, value in given.items() if value is not unset}


def settings_from(argv, master):
    """The run's settings: the defaults, then argv; a resumed run's are those it was started with, then argv."""
    given = given_settings(argv)
    settings = {**{key: default for key, (default, _) in SETTINGS.items()}, **given}
    if not settings["out_dir"]:
        raise UsageError("out_dir is empty: name the folder for ckpt.pt and metrics.jsonl")
    return resumed(settings, given, master) if settings["init_from"] == "resume" else settings


def resumed(settings, given, master):
    """The settings the run was started with (its checkpoint's), overridden by those given now, which are printed
    in one line; the model's shape, plan and vocabulary and the dataset cannot change mid-run."""
    saved = saved_settings(resume_path(settings))
    changes = {key: f"{key} {saved[key]!r} -> {value!r}" for key, value in given.items()
               if key in saved and value != saved[key] and key not in ("init_from", "out_dir", "overwrite")}
    fixed = [change for key, change in changes.items() if key in FIXED_ON_RESUME]
    if fixed:
        raise UsageError(f"resume: {', '.join(fixed)}: the model's shape, plan and vocabulary and the dataset cannot "
                         f"change mid-run; leave them out, or start a new run in another out_dir")
    if changes and master:
        print(f"resume: {', '.join(changes.values())}")
    return {**settings, **saved, **given, "out_dir": settings["out_dir"]}  # out_dir: where the run is now


def saved_settings(path):
    """The settings a run's checkpoint was saved with (memory-mapped: its weights are not read)."""
    try:
        saved = read_checkpoint(path, mmap=True).get("config")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load init_from=resume: {one_line(e)}") from None
    if saved is None:
        raise UsageError(f"{path} holds no run settings (train.py did not write it): start a new run from it with "
                         f"--init_from={path}")
    return {key: value for key, value in saved.items() if key in SETTINGS}  # a setting since removed is ignored


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        print("settings and their defaults:\n" + "\n".join(f"    --{k}={v}" for k, (v, _) in SETTINGS.items()))
        return
    master = os.environ.get("RANK", "0") == "0"
    try:
        train(settings_from(argv, master))
    except (ConfigError, UsageError) as e:
        if master:
            print(f"train.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        sys.exit(STOP_EXIT_STATUS[e.signum])
    except NonFiniteLoss as e:
        if master:
            print(f"train.py: the loss is not finite at {e}; stopping. The last checkpoint written, if any, is "
                  f"intact. Try a lower learning_rate, grad_clip, or dtype=bfloat16.", file=sys.stderr)
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
