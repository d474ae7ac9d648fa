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

Nothing damaged loads: bytes changed after writing (a bad disk, a partial copy) are refused in one line naming
the file. A checkpoint is torch's zip, whose records each carry the CRC-32 of their bytes (any checkpoint, however
old); torch.load never checks them, read_checkpoint does. An export's model.safetensors carries the CRC-32 of its
tensor bytes in its header's __metadata__ (seal_safetensors, which transformers ignores); load_model checks it, and
reads an export written without one as before.
"""

import json
import os
import pickle
import shutil
import struct
import zipfile
import zlib

import torch

from common import UsageError, atomic_path, first_of, one_line, read_vocab
from model import GPT, GPTConfig, HF_CONV1D_WEIGHTS


def save_checkpoint(checkpoint, path):
    """torch.save to a temporary file renamed into place, so a crash never leaves a truncated file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp_path:
        torch.save(checkpoint, tmp_path)


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
        raise ValueError(f"{where} does not fit its model: {first_of(wrong)}")
    model.load_state_dict(weights)
    return model


def did_you_mean(folder):
    """' (did you mean FOLDER/ckpt.pt?)' where folder holds train.py's checkpoint, else ''."""
    path = os.path.join(folder, "ckpt.pt")
    return f" (did you mean {path}?)" if os.path.isfile(path) else ""


def check_zip(path, tensors=True):
    """Refuse a file that is not torch's zip, or whose records do not match their CRC-32s: changed after torch.save
    wrote them. tensors=False checks every record but the tensors' storage, all that a memory-mapped read of
    model_args or itos reads."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a checkpoint file{did_you_mean(path)}")
    with open(path, "rb") as f:
        start = f.read(4)
    if start != b"PK\x03\x04":  # the signature of a zip's first record
        raise ValueError(f"{path} is not a readable krony checkpoint: "
                         + ("it is empty" if not start else "it is not the zip archive torch.save writes"))
    try:
        with zipfile.ZipFile(path) as archive:
            for record in archive.infolist():
                if record.external_attr & 0x10:  # MS-DOS's folder flag: torch would read no bytes, and check none
                    raise zipfile.BadZipFile(f"its record {record.filename} is marked a folder")
                if tensors or os.path.basename(os.path.dirname(record.filename)) != "data":
                    with archive.open(record) as f:
                        while f.read(2 ** 20):  # zipfile compares the CRC-32 at the record's end
                            pass
    except Exception as e:  # a zip directory cut off or changed, a record whose bytes or CRC-32 changed, ...
        raise ValueError(f"{path} is damaged: its bytes changed after torch.save wrote them, or it is cut short "
                         f"({one_line(e)})") from None


def read_checkpoint(path, map_location="cpu", mmap=False):
    """The checkpoint dict of one of our files, checked to be one and to hold the bytes torch.save wrote (memory-mapped,
    only those read now: all but the tensors)."""
    check_zip(path, tensors=not mmap)
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


def read_hf_config(path: str) -> GPTConfig:
    """The GPTConfig of a Hugging Face folder's config.json: GPT-2's, or krony's, whose plan it holds."""
    with open(os.path.join(path, "config.json")) as f:
        return GPTConfig.from_hf(json.load(f))


def is_krony_dir(source):
    """A folder written by krony_to_gpt.py --keep_factors: config.json with model_type krony."""
    path = os.path.join(source, "config.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("model_type") == "krony"


SAFETENSORS_CRC = "krony_crc32"  # the key in model.safetensors' __metadata__ of the CRC-32 of its tensor bytes


def crc32_to_end(f):
    """The CRC-32 of an open file's bytes from where it stands to its end, as 8 hex digits."""
    crc = 0
    while chunk := f.read(2 ** 20):
        crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def read_safetensors_header(f, path):
    """The JSON header of an open safetensors file (8 bytes of its length, then the JSON), leaving f at the first
    tensor byte."""
    start = f.read(8)
    size = struct.unpack("<Q", start)[0] if len(start) == 8 else None
    if size is None or size > os.path.getsize(path) - 8:
        raise ValueError(f"{path} is damaged: it is cut short, or not a safetensors file")
    try:
        header = json.loads(f.read(size))
    except ValueError:  # not UTF-8, not JSON
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is damaged: its header is not the JSON object of a safetensors file")
    return header


def seal_safetensors(path):
    """Write the CRC-32 of a safetensors file's tensor bytes into its header's __metadata__, for check_safetensors.
    The file is rewritten beside itself and renamed into place; opened as any new file (not by tempfile, whose
    files are private), it is readable by all, like the files beside it, under the usual umask."""
    with open(path, "rb") as src:
        header = read_safetensors_header(src, path)
        tensors_start = src.tell()
        header["__metadata__"] = {**header.get("__metadata__", {}), SAFETENSORS_CRC: crc32_to_end(src)}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # as safetensors writes it: the tensors start 8-byte aligned
        with atomic_path(path) as tmp_path, open(tmp_path, "wb") as dst:
            dst.write(struct.pack("<Q", len(text)) + text)
            src.seek(tensors_start)
            shutil.copyfileobj(src, dst)


def check_safetensors(path):
    """Refuse a safetensors file whose tensor bytes do not match the CRC-32 seal_safetensors wrote into its header.
    One without a CRC-32 (exported before they were written, or not by us) is read as it is: safetensors checks
    that its header fits its size."""
    with open(path, "rb") as f:
        crc = read_safetensors_header(f, path).get("__metadata__", {}).get(SAFETENSORS_CRC)
        if crc is not None and crc32_to_end(f) != crc:
            raise ValueError(f"{path} is damaged: its tensor bytes changed after they were written (their CRC-32 "
                             f"is not the one in its header)")


def load_factored_hf(path, map_location="cpu"):
    """Our GPT from a krony Hugging Face folder, read as data (config.json's plan, model.safetensors' tensors),
    without running the folder's code."""
    from safetensors.torch import load_file
    check_safetensors(os.path.join(path, "model.safetensors"))
    model = GPT(read_hf_config(path))
    stored = load_file(os.path.join(path, "model.safetensors"))
    weights = {key: value.t() if key.endswith(HF_CONV1D_WEIGHTS) else value for key, value in stored.items()}
    if "lm_head.weight" in model.state_dict() and "transformer.wte.weight" in weights:
        weights.setdefault("lm_head.weight", weights["transformer.wte.weight"])  # tied to wte: saved once
    return load_weights(model, weights, os.path.join(path, "model.safetensors")).to(map_location)


def is_hub_name(source):
    """Whether source can name a model on the Hugging Face hub (gpt2, openai-community/gpt2): not a .pt file, nor
    a path no hub name can be (./x, /x, x/, a/b/c)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return not source.endswith((".pt", ".pth"))


def check_source_path(source):
    """A source that is not a file must be a Hugging Face folder (with config.json) or a hub name: fail fast on a
    folder without config.json and on a missing path, which the hub is never asked for."""
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise ValueError(f"{source} is a folder without config.json, not a Hugging Face model{did_you_mean(source)}")
    if not os.path.exists(source) and not is_hub_name(source):
        raise FileNotFoundError(f"no such file or directory: {source}")


def from_hub(load, source):
    """load(source) for a source that is no file or folder here: where the hub lacks it too (or cannot be reached),
    first say what the user most likely meant, a local path that does not exist."""
    try:
        return load(source)
    except OSError as e:
        raise FileNotFoundError(f"no such file or directory: {source}, nor a model on the Hugging Face hub "
                                f"({one_line(e)})") from None


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


def load_model_config(source: str, what: str | None = None) -> GPTConfig:
    """The GPTConfig of a model source without its weights: a checkpoint's model_args (memory-mapped, so nothing
    is read but them), or a Hugging Face model's config.json. UsageError, one line, if it cannot be read."""
    try:
        if os.path.isfile(source):
            return GPTConfig.from_args(read_checkpoint(source, mmap=True)["model_args"])
        check_source_path(source)
        if os.path.isdir(source):
            return read_hf_config(source)
        from transformers import AutoConfig
        return GPTConfig.from_hf(from_hub(AutoConfig.from_pretrained, source))
    except Exception as e:  # any failure to read the user's source is theirs to fix: one line
        raise UsageError(f"cannot load {what or source}: {one_line(e)}") from None


def load_model(source: str, map_location: str | torch.device = "cpu", what: str | None = None) -> GPT:
    """Our GPT from any model source (see the top), on map_location; `what` names the source in errors (default:
    the source itself). A dense export of a Kronecker model loads as the dense GPT it is. UsageError, one line,
    if it cannot be opened."""
    try:
        if os.path.isfile(source):
            return load_checkpoint(source, map_location)[0]
        check_source_path(source)
        if is_krony_dir(source):
            return load_factored_hf(source, map_location)
        if os.path.isdir(source):
            weights = os.path.join(source, "model.safetensors")
            if os.path.isfile(weights):
                check_safetensors(weights)
            return GPT.from_pretrained(source).to(map_location)
        return from_hub(GPT.from_pretrained, source).to(map_location)
    except Exception as e:  # any failure to open the user's source is theirs to fix: one line
        raise UsageError(f"cannot load {what or source}: {one_line(e)}") from None
