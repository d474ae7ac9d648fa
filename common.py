"""What every script shares that needs no torch: the error policy, atomic writes, GPT-2's tokenizer, character
vocabularies and nanoGPT's token files.

Error policy: library code raises UsageError (a mistake in the user's input or set-up, told in one line) or
ValueError; a script turns a ValueError into a UsageError where it knows which argument was wrong (usage_errors),
and only its main() turns a UsageError into one line on stderr and exit status 2, through exit_on_usage_error.

A token file is a flat uint16 array of GPT-2 token ids (np.memmap readable): each document's
`encode_ordinary` tokens followed by the end-of-text token 50256. The data/*/prepare.py scripts write them
with data/prepare_common.py.
"""
import functools
import json
import os
import sys
import tempfile
from contextlib import contextmanager

import numpy as np

EOT = 50256  # GPT-2's <|endoftext|>
META_FILE = "meta.json"  # beside token files whose ids are characters, not GPT-2 tokens (read_vocab)


class UsageError(ValueError):
    """A mistake in the user's input or set-up: reported as one line on stderr, exit status 2."""


def one_line(error):
    """`Type: first line of the message` of an exception, safe on an empty message."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


@contextmanager
def exit_on_usage_error(prog):
    """Around a script's main(): a UsageError becomes `prog: error: message` on stderr and exit status 2."""
    try:
        yield
    except UsageError as e:
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)


@contextmanager
def usage_errors(prefix=None):
    """Around code that checks what the user gave: a ValueError it raises becomes a UsageError of one line,
    `prefix: message` (the message alone without a prefix); a UsageError, already one line for the user, and any
    other exception pass through."""
    try:
        yield
    except UsageError:
        raise
    except ValueError as e:
        message = " ".join(str(e).split())
        raise UsageError(f"{prefix}: {message}" if prefix else message) from None


def first_of(errors):
    """The first of a list of error messages, and how many more there are: 'x is missing (and 2 more)'."""
    return errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")


@contextmanager
def atomic_path(path):
    """A temporary path to write `path`'s new content to: renamed over `path` when the block ends, removed if it
    raises, so that a crash never leaves a truncated file and the old one stays whole until then. The name is this
    process's own, so two runs writing the same file at once never write into each other's temporary file."""
    tmp_path = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def write_text(text, path):
    """Atomically: a crash mid-write never leaves a truncated results file."""
    with atomic_path(path) as tmp_path, open(tmp_path, "w") as f:
        f.write(text)


def write_json(obj, path):
    write_text(json.dumps(obj, indent=2), path)


def existing_ancestor(path):
    """The nearest of path and its parents that exists: where a folder at path would be created."""
    ancestor = os.path.abspath(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    return ancestor


def check_out_dir(out_dir, flag="--out_dir"):
    """Refuse, before any slow work, a folder that cannot be created or written in: one under a file, or in a
    read-only place. Tried with a temporary folder, removed at once: root passes every permission-bit check."""
    ancestor = existing_ancestor(out_dir)
    if not os.path.isdir(ancestor):
        raise UsageError(f"{flag} {out_dir}: {ancestor} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(dir=ancestor))
    except OSError as e:
        raise UsageError(f"{flag} {out_dir}: cannot write in {ancestor} ({e.strerror})") from None


@functools.cache
def gpt2_encoding():
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise UsageError(f"cannot load tiktoken's gpt2 tokenizer ({type(e).__name__}): it is downloaded once, so "
                         f"connect to the network, or set TIKTOKEN_CACHE_DIR to a folder that holds its files") \
            from None


def open_tokens(path, vocab_size=None):
    """A token file as a read-only uint16 memmap, checked: it exists, its size is a positive multiple of 2 bytes,
    and (given vocab_size) every id is below vocab_size. numpy's max streams the memmap at disk speed."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such token file")
    size = os.path.getsize(path)
    if size == 0 or size % 2:
        raise UsageError(f"{path} is {size:,} bytes: a token file holds 2-byte token ids, so its size must be a "
                         f"positive even number (a truncated or foreign file?)")
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    if vocab_size is not None:
        largest = int(tokens.max())
        if largest >= vocab_size:
            raise UsageError(f"{path} holds token id {largest}, beyond the model's vocabulary of {vocab_size:,} "
                             f"(not GPT-2 tokens, or a model with a smaller vocab_size)")
    return tokens


# The initialisations compress.compress offers, named here rather than beside their torch code so that every
# script's --init choices (kron_decompose.py --list's included) are known without importing torch.
INIT_NAMES = ("vl", "vl_norm", "prune", "random", "act")
# init act's defaults (compress.fit_to_calibration): the tokens the teacher is run over (128 windows of GPT-2's
# 1,024); the Adam steps and learning rate (cosine to a tenth) of each factored sublayer's fit; no alternating
# least-squares sweeps before Adam, which start it from a worse point (progress.md measures all three).
CALIBRATION_TOKENS = 2 ** 17
ACT_STEPS = 300
ACT_LR = 1e-2
ACT_SWEEPS = 0


def read_calibration(path, n_tokens, block_size, vocab_size, seed=0):
    """The calibration inputs of init act: n_tokens // window windows of window = min(block_size, n_tokens) tokens
    at seeded random offsets of a token file, as an int64 array (windows, window). Refused with one line (before
    any model is loaded) when the file is missing, holds ids beyond vocab_size, or is shorter than n_tokens."""
    tokens = open_tokens(path, vocab_size)
    window = min(block_size, n_tokens)
    if len(tokens) <= max(n_tokens, window):
        raise UsageError(f"{path} holds {len(tokens):,} tokens, not more than calibration_tokens={n_tokens:,}: give "
                         f"a longer file or fewer calibration tokens")
    starts = np.random.default_rng(seed).integers(0, len(tokens) - window, n_tokens // window)
    return np.stack([tokens[s:s + window] for s in starts]).astype(np.int64)


def read_vocab(folder):
    """The characters a dataset's (or an exported model's) ids stand for: the itos list of folder/meta.json, or
    None where there is no meta.json (GPT-2 tokens). meta.json = {"vocab_size": N, "itos": [N characters]}, as
    data/shakespeare_char/prepare.py writes it (nanoGPT's meta.pkl, as JSON)."""
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        itos = meta["itos"]
        valid = (meta["vocab_size"] == len(itos) == len(set(itos))
                 and all(isinstance(c, str) and len(c) == 1 for c in itos))
    except (ValueError, TypeError, KeyError) as e:  # not JSON, not UTF-8, not an object, or a key missing
        raise UsageError(f"{path} is not a character vocabulary ({type(e).__name__}: {e})") from None
    if not valid:
        raise UsageError(f"{path} is not a character vocabulary: itos must be vocab_size distinct characters")
    return itos


def check_vocab(model_name, vocab_size, model_itos, data_name, itos):
    """Refuse ids that mean something else to the model than in the data: another number of characters, other
    characters, or GPT-2 tokens for a model that reads characters. model_itos: the characters the model was
    trained on, itos: the data's (its meta.json), each None for GPT-2 tokens."""
    if itos is None and model_itos is not None:
        raise UsageError(f"{model_name} reads the {len(model_itos)} characters it was trained on, but {data_name} "
                         f"holds GPT-2 tokens (a .bin of characters has their meta.json beside it)")
    if itos is not None and vocab_size != len(itos):
        raise UsageError(f"{model_name} has a vocabulary of {vocab_size:,} tokens, but {data_name} holds the "
                         f"{len(itos)} characters of its meta.json: use a model of those characters")
    if model_itos is not None and model_itos != itos:
        raise UsageError(f"{model_name} was trained on other characters than the {len(itos)} of {data_name}'s "
                         f"meta.json")


def write_vocab(itos, folder):
    """folder/meta.json for the characters itos, atomically."""
    with atomic_path(os.path.join(folder, META_FILE)) as tmp_path, open(tmp_path, "w", encoding="utf-8") as f:
        json.dump({"vocab_size": len(itos), "itos": list(itos)}, f, ensure_ascii=False)


def encode_chars(text, itos):
    """The ids of text's characters; UsageError naming the first character the vocabulary lacks."""
    stoi = {c: i for i, c in enumerate(itos)}
    missing = next((c for c in text if c not in stoi), None)
    if missing is not None:
        raise UsageError(f"the character {missing!r} is not in the model's vocabulary of {len(itos)} characters")
    return [stoi[c] for c in text]


def decode_chars(ids, itos):
    return "".join(itos[i] for i in ids)
