"""What every script shares that needs no torch: the error policy, GPT-2's tokenizer, character vocabularies and
nanoGPT's token files.

Error policy: library code raises UsageError (a mistake in the user's input or set-up, told in one line) or
ValueError; only a script's main() turns it into one line on stderr and exit status 2, through
exit_on_usage_error.

A token file is a flat uint16 array of GPT-2 token ids (np.memmap readable): each document's
`encode_ordinary` tokens followed by the end-of-text token 50256. The data/*/prepare.py scripts write them
with tokenize and write_splits.
"""
import functools
import json
import math
import os
import sys
import tempfile
from contextlib import contextmanager

import numpy as np
from tqdm import tqdm

EOT = 50256  # GPT-2's <|endoftext|>
META_FILE = "meta.json"  # beside token files whose ids are characters, not GPT-2 tokens (read_vocab)
WRITE_SHARDS = 1024  # as nanoGPT: write in contiguous pieces so memory stays flat on 9 B tokens


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


def write_text(text, path):
    """Atomically: a crash mid-write never leaves a truncated results file."""
    tmp_path = f"{path}.tmp{os.getpid()}"
    with open(tmp_path, "w") as f:
        f.write(text)
    os.replace(tmp_path, path)


def write_json(obj, path):
    write_text(json.dumps(obj, indent=2), path)


def check_out_dir(out_dir, flag="--out_dir"):
    """Refuse, before any slow work, a folder that cannot be created or written in: one under a file, or in a
    read-only place. Tried with a temporary folder, removed at once: root passes every permission-bit check."""
    ancestor = os.path.abspath(out_dir)
    while not os.path.exists(ancestor):  # the folder that out_dir will be created in
        ancestor = os.path.dirname(ancestor)
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
    tmp_path = os.path.join(folder, f"{META_FILE}.tmp{os.getpid()}")
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump({"vocab_size": len(itos), "itos": list(itos)}, f, ensure_ascii=False)
    os.replace(tmp_path, os.path.join(folder, META_FILE))


def encode_chars(text, itos):
    """The ids of text's characters; UsageError naming the first character the vocabulary lacks."""
    stoi = {c: i for i, c in enumerate(itos)}
    missing = next((c for c in text if c not in stoi), None)
    if missing is not None:
        raise UsageError(f"the character {missing!r} is not in the model's vocabulary of {len(itos)} characters")
    return [stoi[c] for c in text]


def decode_chars(ids, itos):
    return "".join(itos[i] for i in ids)


def _tokenize_batch(batch, text_column):
    enc = gpt2_encoding()
    ids = [enc.encode_ordinary(text) + [EOT] for text in batch[text_column]]
    return {"ids": ids, "len": [len(x) for x in ids]}


def tokenize(dataset, text_column="text", num_proc=1, desc="tokenizing"):
    """Per document: `ids` (uint16 token ids ending in EOT) and their count `len`; other columns are dropped."""
    import datasets
    if text_column not in dataset.column_names:
        raise UsageError(f"no {text_column!r} column in the input (columns: {', '.join(dataset.column_names)}); "
                         f"choose one with --text_column")
    if dataset.features[text_column] not in (datasets.Value("string"), datasets.Value("large_string")):
        raise UsageError(f"column {text_column!r} holds {dataset.features[text_column]}, not text")
    gpt2_encoding()  # fail here, once, rather than inside every worker
    # uint16 ids keep the map's cache files 4x smaller than the default int64 (72 GB -> 18 GB on OpenWebText)
    features = datasets.Features({"ids": datasets.List(datasets.Value("uint16")), "len": datasets.Value("int64")})
    # num_proc=1 would still go through a worker pool in datasets 5: None maps in this process
    return dataset.map(_tokenize_batch, batched=True, fn_kwargs={"text_column": text_column},
                       remove_columns=dataset.column_names, features=features,
                       num_proc=num_proc if num_proc > 1 else None, desc=desc)


def _write_bin(tokenized, n_tokens, path, desc):
    """Write the documents' ids back to back into `path`, in at most WRITE_SHARDS contiguous batches."""
    arr = np.memmap(path, dtype=np.uint16, mode="w+", shape=(n_tokens,))
    batch_size = math.ceil(len(tokenized) / WRITE_SHARDS)
    idx = 0
    # arrow batches flatten to one uint16 array without a Python object per document
    for batch in tqdm(tokenized.with_format("arrow").iter(batch_size=batch_size),
                      total=math.ceil(len(tokenized) / batch_size), desc=desc):
        ids = batch["ids"].combine_chunks().flatten().to_numpy()
        arr[idx:idx + len(ids)] = ids
        idx += len(ids)
    assert idx == n_tokens, (idx, n_tokens)
    arr.flush()
    del arr


def write_splits(tokenized_splits, out_dir):
    """Write each tokenized split to out_dir/<split>.bin and print its size.

    All files are written under temporary names and renamed only once every one is complete, so a crash
    never leaves a truncated .bin, nor a new train.bin beside a stale val.bin. The temporary names are this
    process's own, so that two runs writing the same out_dir at once never write into each other's file."""
    counts = {}
    for split, tokenized in tokenized_splits.items():
        if len(tokenized) == 0:
            raise UsageError(f"the {split} split has no documents")
        counts[split] = int(np.sum(tokenized.with_format("numpy")["len"][:], dtype=np.uint64))
        if counts[split] == len(tokenized):
            raise UsageError(f"the {split} split's documents are all empty (no text to tokenize)")
    os.makedirs(out_dir, exist_ok=True)
    temp_paths = {split: os.path.join(out_dir, f"{split}.bin.tmp{os.getpid()}") for split in tokenized_splits}
    try:
        for split, tokenized in tokenized_splits.items():
            _write_bin(tokenized, counts[split], temp_paths[split], desc=f"writing {split}.bin")
        for split, temp_path in temp_paths.items():
            os.replace(temp_path, os.path.join(out_dir, f"{split}.bin"))
    except BaseException:
        for temp_path in temp_paths.values():
            if os.path.exists(temp_path):
                os.remove(temp_path)
        raise
    for split, n_tokens in counts.items():
        path = os.path.join(out_dir, f"{split}.bin")
        print(f"{path}: {n_tokens:,} tokens, {len(tokenized_splits[split]):,} documents, "
              f"{os.path.getsize(path) / 2**20:,.1f} MiB")
    return counts
