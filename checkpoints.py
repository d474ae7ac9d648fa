"""
Opening and saving models: one way to open any model source, one checkpoint format.

A model source is one of our checkpoints (a .pt file from kron_decompose.py or train.py), a Hugging Face folder
(a GPT-2, or krony_to_gpt.py's export, dense or with its Kronecker factors kept) or a hub name such as gpt2.
`load_model` opens any of them as our GPT, with every weight the source has and nothing else: a weight the source
lacks, or one the model has no place for, is an error (never a random init), and so is an unreadable file; each
failure is one line (common.UsageError). `load_model_config` reads only the shape and the plan, before any weights.

A checkpoint is a dict with at least "model" (state dict) and "model_args" (GPTConfig.to_args()), and "itos" (the
characters its ids stand for) for a model of a character-level dataset; train.py adds "optimizer", "iter_num",
"best_val_loss", "config" and RNG states, kron_decompose.py "init". Saved atomically,
loaded with weights_only=True, which never runs pickled code.
"""

import json
import os
import pickle

import torch

from common import UsageError, one_line, read_vocab
from kron_shapes import Plan
from model import GPT, GPTConfig, HF_CONV1D_WEIGHTS


def save_checkpoint(checkpoint, path):
    """torch.save to a temporary file renamed into place, so a crash never leaves a truncated file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(checkpoint, tmp_path)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def make_checkpoint(model, itos=None, **extra):
    """The minimal checkpoint of a model, plus the characters its ids stand for (itos, for a model of a
    character-level dataset; None for GPT-2's tokens) and any extra entries (iteration, optimizer, ...)."""
    for wrapper_attr in ("module", "_orig_mod"):  # DDP(torch.compile(model)) unwraps in this order
        model = getattr(model, wrapper_attr, model)
    return {"model": model.state_dict(), "model_args": model.config.to_args(),
            **({"itos": list(itos)} if itos is not None else {}), **extra}


def clean_state_dict(state_dict):
    """Strip the prefixes DDP ("module.") and torch.compile ("_orig_mod.") add to parameter names."""
    cleaned = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        cleaned[k] = v
    return cleaned


def load_weights(model, weights, where):
    """Load `weights` into model, refusing a missing weight, a weight the model has no place for, or a wrong shape,
    naming the first of them."""
    expected = model.state_dict()
    wrong = [f"it lacks {key} {tuple(like.shape)}" for key, like in expected.items() if key not in weights]
    wrong += [f"it holds {key}, which the model has no place for" for key in weights if key not in expected]
    wrong += [f"{key} is {tuple(weights[key].shape)}, the model's {tuple(like.shape)}"
              for key, like in expected.items() if key in weights and weights[key].shape != like.shape]
    if wrong:
        raise ValueError(f"{where} does not fit its model: {wrong[0]}"
                         + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
    model.load_state_dict(weights)
    return model


def read_checkpoint(path, map_location="cpu", mmap=False):
    """The checkpoint dict of one of our files, checked to be one."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        raise ValueError(f"{path} is not a readable krony checkpoint: not a torch file of tensors and plain values "
                         f"(it is loaded with weights_only=True, which never runs pickled code)") from None
    except Exception as e:
        raise ValueError(f"{path} is not a readable krony checkpoint ({one_line(e)})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "model_args" not in checkpoint:
        raise ValueError(f"{path} is not a krony checkpoint (expected a dict with 'model' and 'model_args')")
    return checkpoint


def load_checkpoint(path, map_location="cpu"):
    """(model, checkpoint) from one of our checkpoints."""
    checkpoint = read_checkpoint(path, map_location)
    model = GPT(GPTConfig.from_args(checkpoint["model_args"]))
    return load_weights(model, clean_state_dict(checkpoint["model"]), path), checkpoint


def read_hf_config(path):
    """The GPTConfig of a Hugging Face folder's config.json: GPT-2's, or krony's, whose plan it holds."""
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                       n_head=hf["n_head"], n_embd=hf["n_embd"])
    return config.with_plan(Plan.from_hf(hf)) if hf.get("model_type") == "krony" else config


def is_krony_dir(source):
    """A folder written by krony_to_gpt.py --keep_factors: config.json with model_type krony."""
    path = os.path.join(source, "config.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("model_type") == "krony"


def load_factored_hf(path, map_location="cpu"):
    """Our GPT from a krony Hugging Face folder, read as data (config.json's plan, model.safetensors' tensors),
    without running the folder's code."""
    from safetensors.torch import load_file
    model = GPT(read_hf_config(path))
    stored = load_file(os.path.join(path, "model.safetensors"))
    weights = {key: value.t() if key.endswith(HF_CONV1D_WEIGHTS) else value for key, value in stored.items()}
    if "lm_head.weight" in model.state_dict() and "transformer.wte.weight" in weights:
        weights.setdefault("lm_head.weight", weights["transformer.wte.weight"])  # tied to wte: saved once
    return load_weights(model, weights, os.path.join(path, "model.safetensors")).to(map_location)


def check_source_path(source):
    """A source that looks like a path must exist: fail fast instead of asking the hub for it."""
    looks_like_path = source.startswith(("/", "./", "../", "~")) or source.endswith((".pt", ".pth"))
    if looks_like_path and not os.path.exists(source):
        raise FileNotFoundError(f"no such file or directory: {source}")


def load_vocab(source, what=None):
    """The characters a model's ids stand for: a checkpoint's "itos", or the meta.json of an exported folder;
    None for a model of GPT-2's tokens (or of a hub name)."""
    try:
        if os.path.isdir(source):
            return read_vocab(source)
        if os.path.isfile(source):
            return read_checkpoint(source, mmap=True).get("itos")
        return None
    except Exception as e:  # any failure to read the user's source is theirs to fix: one line
        raise UsageError(f"cannot load {what or source}: {one_line(e)}") from None


def load_model_config(source, what=None):
    """The GPTConfig of a model source without its weights: a checkpoint's model_args (memory-mapped, so nothing
    is read but them), or a Hugging Face model's config.json. UsageError, one line, if it cannot be read."""
    try:
        if os.path.isdir(source) and os.path.isfile(os.path.join(source, "config.json")):
            return read_hf_config(source)
        if os.path.isfile(source):
            return GPTConfig.from_args(read_checkpoint(source, mmap=True)["model_args"])
        check_source_path(source)
        from transformers import AutoConfig
        hf = AutoConfig.from_pretrained(source)
        return GPTConfig(block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer,
                         n_head=hf.n_head, n_embd=hf.n_embd)
    except Exception as e:  # any failure to read the user's source is theirs to fix: one line
        raise UsageError(f"cannot load {what or source}: {one_line(e)}") from None


def load_model(source, map_location="cpu", what=None):
    """Our GPT from any model source (see the top), on map_location; `what` names the source in errors (default:
    the source itself). A dense export of a Kronecker model loads as the dense GPT it is. UsageError, one line,
    if it cannot be opened."""
    try:
        if os.path.isfile(source):
            return load_checkpoint(source, map_location)[0]
        if os.path.isdir(source) and is_krony_dir(source):
            return load_factored_hf(source, map_location)
        check_source_path(source)
        return GPT.from_pretrained(source).to(map_location)
    except Exception as e:  # any failure to open the user's source is theirs to fix: one line
        raise UsageError(f"cannot load {what or source}: {one_line(e)}") from None
