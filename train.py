"""
Train a GPT-2 or a Kronecker-factored GPT-2 on nanoGPT token files, on one CPU or on many GPUs.

    python train.py config/train_shakespeare.py --device=cpu --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Settings are the defaults below, then config files, then --key=value overrides (see configurator.py).
init_from chooses the starting point:
    scratch          a new GPT from n_layer, n_head, n_embd, ...; Kronecker MLPs when dim_1, dim_2 and
                     factors are set (init must then be random: there is no dense model to decompose)
    resume           out_dir/ckpt.pt, with its optimizer, iteration and random number generator states
    a file           one of our checkpoints: a Kronecker one (kron_decompose.py's output) is used as it is,
                     a dense one is compressed here when dim_1, dim_2 and factors are set
    anything else    a Hugging Face GPT-2 (hub name like gpt2, or a local directory), compressed here
                     when dim_1, dim_2 and factors are set, with `init` (vl, vl_norm, prune, random)
Writes out_dir/ckpt.pt (atomically, at evaluations) and out_dir/metrics.jsonl (one JSON line per log
and evaluation step).
"""

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import ConfigError, load_config
from model import INITS, GPT, GPTConfig, compress, default_device, load_checkpoint, make_checkpoint, save_checkpoint

DEFAULTS = dict(
    # I/O
    out_dir="out",
    eval_interval=2000,
    log_interval=1,
    eval_iters=200,
    eval_only=False,  # evaluate once, then exit
    always_save_checkpoint=True,  # else only when the val loss improves
    init_from="scratch",  # scratch, resume, a checkpoint file, or a GPT-2 hub name or directory
    # wandb logging (optional: pip install wandb)
    wandb_log=False,
    wandb_project="krony",
    wandb_run_name="krony",
    # data
    dataset="owt",
    data_dir="",  # empty: data/<dataset>
    gradient_accumulation_steps=5 * 8,  # micro-batches per iteration, over all processes together
    batch_size=12,  # sequences per micro-batch
    block_size=1024,
    # model
    n_layer=12,
    n_head=12,
    n_embd=768,
    vocab_size=50257,
    dropout=0.0,
    bias=True,
    dim_1=None,  # Kronecker MLPs: A_r of c_fc is dim_1 x dim_2 (see model.py); all three None: dense
    dim_2=None,
    factors=None,
    init="vl",  # how the factors start from a dense model: vl, vl_norm, prune, random
    # AdamW
    learning_rate=6e-4,
    max_iters=600000,
    weight_decay=1e-1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,  # 0: no clipping
    # learning rate: linear warmup, then cosine decay to min_lr at lr_decay_iters
    decay_lr=True,
    warmup_iters=2000,
    lr_decay_iters=600000,
    min_lr=6e-5,
    # system
    backend="auto",  # nccl on GPUs, gloo on CPU
    device="auto",  # cuda, then mps, then cpu; or e.g. cpu, cuda:1
    dtype="auto",  # bfloat16 where supported on cuda, else float16 on cuda, else float32
    compile=True,
    seed=1337,
)
KRON_KEYS = ("dim_1", "dim_2", "factors")
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "vocab_size", "bias", "block_size") + KRON_KEYS


class UsageError(Exception):
    """A mistake in the settings or inputs: one line on stderr, exit status 2."""


class NonFiniteLoss(Exception):
    """The loss diverged: the run stops before the optimizer step, exit status 1."""


def check_config(c):
    """Fail before any work on settings that cannot run."""
    choices = {"init": tuple(INITS), "dtype": ("auto", "float32", "bfloat16", "float16"),
               "backend": ("auto", "nccl", "gloo")}
    for key, allowed in choices.items():
        if c[key] not in allowed:
            raise UsageError(f"{key}={c[key]!r} is not one of {', '.join(allowed)}")
    for key in ("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size",
                "block_size", "n_layer", "n_head", "n_embd", "vocab_size"):
        if c[key] < 1:
            raise UsageError(f"{key}={c[key]} must be at least 1")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "learning_rate", "min_lr", "weight_decay",
                "grad_clip"):
        if c[key] < 0:
            raise UsageError(f"{key}={c[key]} must not be negative")
    for key in ("dropout", "beta1", "beta2"):
        if not 0 <= c[key] < 1:
            raise UsageError(f"{key}={c[key]} must be in [0, 1)")
    if c["device"] != "auto":
        try:
            device = torch.device(c["device"])
        except RuntimeError:
            raise UsageError(f"device={c['device']!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device={c['device']!r} but this PyTorch sees no CUDA GPU")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UsageError(f"device={c['device']!r} but MPS is not available here")
    if c["wandb_log"]:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UsageError("wandb_log=True but wandb is not installed: pip install wandb") from None


def get_lr(it, c):
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, min_lr after."""
    if not c["decay_lr"]:
        return c["learning_rate"]
    if it < c["warmup_iters"]:
        return c["learning_rate"] * (it + 1) / (c["warmup_iters"] + 1)
    if it >= c["lr_decay_iters"]:
        return c["min_lr"]
    decay_ratio = (it - c["warmup_iters"]) / (c["lr_decay_iters"] - c["warmup_iters"])
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return c["min_lr"] + coeff * (c["learning_rate"] - c["min_lr"])


def check_tokens(data_dir, split, block_size):
    """Fail unless the split's token file exists and holds at least one window."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        prepare = os.path.join(data_dir, "prepare.py")
        raise UsageError(f"{path} not found: run `python {prepare}` first (or set data_dir)")
    data = np.memmap(path, dtype=np.uint16, mode="r")
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


@torch.no_grad()
def estimate_loss(model, c, data_dir, ctx, device, rank, world_size):
    """Mean loss over eval_iters batches per split, the batches shared out over the processes.

    The windows are drawn from a generator seeded afresh at every evaluation: each evaluation scores the
    same windows, so successive losses differ by the model only, not by sampling noise.
    """
    model.eval()
    losses = {}
    for split in ("train", "val"):
        generator = torch.Generator().manual_seed(c["seed"])
        total = torch.zeros((), device=device)
        for k in range(c["eval_iters"]):
            x, y = get_batch(data_dir, split, c["batch_size"], c["block_size"], generator, device)
            if k % world_size == rank:
                with ctx:
                    total += model(x, y)[1].float()
        if world_size > 1:
            dist.all_reduce(total)
        losses[split] = total.item() / c["eval_iters"]
    model.train()
    return losses


def with_dropout(model, dropout):
    """The model with the run's dropout (a loaded model keeps the dropout it was saved with)."""
    if model.config.dropout == dropout:
        return model
    rebuilt = GPT(replace(model.config, dropout=dropout))
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def crop_block_size(model, block_size):
    """Keep the first block_size position embeddings, as nanoGPT does to fine-tune on shorter windows."""
    model.config = replace(model.config, block_size=block_size)
    model.transformer.wpe.weight = torch.nn.Parameter(model.transformer.wpe.weight[:block_size].clone())
    return model


def init_model(c, master):
    """(model, checkpoint): the model init_from names, adapted to the run; checkpoint only when resuming."""
    init_from, kron = c["init_from"], {k: c[k] for k in KRON_KEYS}
    wants_kron = any(v is not None for v in kron.values())
    if init_from == "scratch":
        try:
            config = GPTConfig(**{k: c[k] for k in MODEL_KEYS}, dropout=c["dropout"])
        except ValueError as e:
            raise UsageError(str(e)) from None
        if wants_kron and c["init"] != "random":
            raise UsageError(f"init={c['init']} decomposes a dense model, but init_from=scratch has none: use "
                             f"init=random, or init_from=gpt2 (or a dense checkpoint) to decompose it")
        return GPT(config), None
    checkpoint = None
    try:
        if init_from == "resume":
            path = os.path.join(c["out_dir"], "ckpt.pt")
            if not os.path.isfile(path):
                raise UsageError(f"init_from=resume but {path} does not exist")
            model, checkpoint = load_checkpoint(path)
        elif os.path.isfile(init_from):
            model = load_checkpoint(init_from)[0]
        elif init_from.endswith(".pt"):
            raise UsageError(f"init_from={init_from}: no such checkpoint file")
        else:
            model = GPT.from_pretrained(init_from)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load init_from={init_from!r}: {str(e).strip().splitlines()[0]}") from None
    loaded = {k: getattr(model.config, k) for k in KRON_KEYS}
    if init_from != "resume" and model.config.is_kronecker and wants_kron and loaded != kron:
        raise UsageError(f"{init_from} is a Kronecker model with dim_1, dim_2, factors = "
                         f"{tuple(loaded.values())}, but the settings ask for {tuple(kron.values())}: "
                         f"set them to match, or to None to take the checkpoint's")
    if wants_kron and not model.config.is_kronecker and init_from != "resume":
        if master:
            print(f"compressing {init_from} ({model.get_num_params():,} parameters) with dim_1={c['dim_1']}, "
                  f"dim_2={c['dim_2']}, factors={c['factors']}, init={c['init']}")
        try:
            model = compress(model, c["dim_1"], c["dim_2"], c["factors"], init=c["init"], progress=master)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if c["block_size"] < model.config.block_size:
        model = crop_block_size(model, c["block_size"])
    return with_dropout(model, c["dropout"]), checkpoint


def adopt_model_shape(c, model, master):
    """The run's settings take the model's shape wherever they differ (with a note), as nanoGPT does."""
    for key in MODEL_KEYS:
        value = getattr(model.config, key)
        if c[key] != value:
            if master:
                print(f"note: {key}={c[key]} in the settings; the model from init_from={c['init_from']} has "
                      f"{key}={value}, which is used")
            c[key] = value


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
        with open(f"{path}.tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
        os.replace(f"{path}.tmp", path)


def train(c):
    """Run the training loop the settings `c` describe; returns the last evaluation's losses."""
    check_config(c)
    data_dir = c["data_dir"] or os.path.join("data", c["dataset"])
    for split in ("train", "val"):
        check_tokens(data_dir, split, c["block_size"])

    ddp = "RANK" in os.environ  # set by torchrun
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    master = rank == 0
    if c["gradient_accumulation_steps"] % world_size:
        raise UsageError(f"gradient_accumulation_steps={c['gradient_accumulation_steps']} must be a multiple "
                         f"of the number of processes ({world_size})")
    grad_accum = c["gradient_accumulation_steps"] // world_size
    device_name = c["device"]
    if device_name == "auto":
        device_name = default_device()
    if ddp and device_name.startswith("cuda"):  # one GPU per process
        device_name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = c["dtype"]
    if dtype == "auto":
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device.type == "cuda" else "float32"
    if ddp:
        backend = c["backend"] if c["backend"] != "auto" else "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)

    torch.manual_seed(c["seed"])  # the same initial model whatever the number of processes
    model, checkpoint = init_model(c, master)
    adopt_model_shape(c, model, master)
    model.to(device)
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device.type, dtype=getattr(torch, dtype))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
    optimizer = model.configure_optimizers(c["weight_decay"], c["learning_rate"], (c["beta1"], c["beta2"]),
                                           device.type)

    iter_num, best_val_loss, elapsed_before = 0, float("inf"), 0.0
    batch_generator = seed_everything(c["seed"] + rank)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint["scaler"] and scaler.is_enabled():  # empty when saved by a run without float16
            scaler.load_state_dict(checkpoint["scaler"])
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
        elapsed_before = checkpoint["elapsed_s"]
        states = checkpoint["rng"]
        if rank < len(states):  # ranks the checkpoint has no state for keep their fresh seed + rank streams
            set_rng_state(states[rank], batch_generator, device)
        if master and len(states) != world_size:
            print(f"note: resuming {world_size} processes from a checkpoint of {len(states)}: batches differ "
                  f"from those of an uninterrupted run")
    raw_model = model
    if c["compile"]:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    tokens_per_iter = grad_accum * world_size * c["batch_size"] * c["block_size"]
    ckpt_path = os.path.join(c["out_dir"], "ckpt.pt")
    metrics_path = os.path.join(c["out_dir"], "metrics.jsonl")
    if master:
        os.makedirs(c["out_dir"], exist_ok=True)
        if checkpoint is not None:
            truncate_metrics(metrics_path, iter_num)
        kind = (f"Kronecker MLPs dim_1={c['dim_1']} dim_2={c['dim_2']} factors={c['factors']}"
                if raw_model.config.is_kronecker else "dense MLPs")
        print(f"model: {raw_model.get_num_params(non_embedding=False):,} parameters "
              f"({raw_model.get_num_params():,} without position embeddings), "
              f"{raw_model.get_num_mlp_params():,} in the MLPs ({kind})")
        print(f"tokens per iteration: {tokens_per_iter:,} = {grad_accum} accumulation steps x {world_size} "
              f"processes x {c['batch_size']} sequences x {c['block_size']} tokens")
        print(f"device: {device}, {dtype}, compile={c['compile']}; data: {data_dir}")
        when = "every evaluation" if c["always_save_checkpoint"] else "when the val loss improves"
        print(f"checkpoints: {ckpt_path} ({when}, every {c['eval_interval']} iterations); "
              f"metrics: {metrics_path}")
        if c["wandb_log"]:
            import wandb
            wandb.init(project=c["wandb_project"], name=c["wandb_run_name"], config=c)
    if iter_num >= c["max_iters"] and not c["eval_only"]:
        if master:
            print(f"nothing to do: iteration {iter_num} is already max_iters={c['max_iters']}")
        return {}

    last_eval_iter = iter_num if checkpoint is not None else -1  # the checkpoint was written at an evaluation
    losses = {}
    run_start = time.time()
    train_time, logged_iters = 0.0, 0
    while True:
        lr = get_lr(iter_num, c)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if c["eval_only"] or (iter_num != last_eval_iter and (iter_num % c["eval_interval"] == 0
                                                               or iter_num == c["max_iters"])):
            losses = estimate_loss(model.module if ddp else model, c, data_dir, ctx, device, rank, world_size)
            last_eval_iter = iter_num
            if not all(math.isfinite(v) for v in losses.values()):
                raise NonFiniteLoss(f"iteration {iter_num}: train loss {losses['train']}, val loss "
                                    f"{losses['val']}")
            elapsed = elapsed_before + time.time() - run_start
            if master:
                print(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                record = {"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr,
                          "elapsed_s": elapsed}
                append_metrics(metrics_path, record)
                if c["wandb_log"]:
                    wandb.log(record, step=iter_num)
            if losses["val"] < best_val_loss or c["always_save_checkpoint"]:
                best_val_loss = min(best_val_loss, losses["val"])
                if iter_num > 0 and not c["eval_only"]:
                    states = [rng_state(batch_generator, device)]
                    if ddp:
                        states = [None] * world_size
                        dist.all_gather_object(states, rng_state(batch_generator, device))
                    if master:
                        save_checkpoint(make_checkpoint(raw_model, optimizer=optimizer.state_dict(),
                                                        scaler=scaler.state_dict(), iter_num=iter_num,
                                                        best_val_loss=best_val_loss, config=dict(c), rng=states,
                                                        elapsed_s=elapsed), ckpt_path)
                        print(f"saved {ckpt_path} (iteration {iter_num})")
        if c["eval_only"] or iter_num >= c["max_iters"]:
            break

        step_start = time.time()
        loss_sum = torch.zeros((), device=device)
        for micro_step in range(grad_accum):
            if ddp:  # all-reduce the gradients on the last micro-step only
                model.require_backward_grad_sync = micro_step == grad_accum - 1
            x, y = get_batch(data_dir, "train", c["batch_size"], c["block_size"], batch_generator, device)
            with ctx:
                loss = model(x, y)[1] / grad_accum
            loss_sum += loss.detach()
            scaler.scale(loss).backward()
        if ddp:
            dist.all_reduce(loss_sum)
            loss_sum /= world_size
        # One device sync per iteration, so that a diverged loss stops the run before it reaches the weights.
        lossf = loss_sum.item()
        if not math.isfinite(lossf):
            raise NonFiniteLoss(f"iteration {iter_num}: training loss {lossf}")
        if c["grad_clip"] > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        train_time += time.time() - step_start
        logged_iters += 1

        if iter_num % c["log_interval"] == 0 and master:
            tokens_per_sec = tokens_per_iter * logged_iters / train_time
            ms_per_iter = 1000 * train_time / logged_iters
            elapsed = elapsed_before + time.time() - run_start
            print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.3e}, {tokens_per_sec:,.0f} tokens/s, "
                  f"{ms_per_iter:.0f} ms/iter, {elapsed:.0f} s")
            record = {"iter": iter_num, "loss": lossf, "lr": lr, "tokens_per_sec": tokens_per_sec,
                      "ms_per_iter": ms_per_iter, "elapsed_s": elapsed}
            append_metrics(metrics_path, record)
            if c["wandb_log"]:
                wandb.log(record, step=iter_num)
            train_time, logged_iters = 0.0, 0
        iter_num += 1
    return losses


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        print("settings and their defaults:\n" + "\n".join(f"    --{k}={v}" for k, v in DEFAULTS.items()))
        return
    master = os.environ.get("RANK", "0") == "0"
    try:
        train(load_config(DEFAULTS, argv))
    except (ConfigError, UsageError) as e:
        if master:
            print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
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
