"""What the data/*/prepare.py scripts share: GPT-2 tokens of a datasets.Dataset's documents (tokenize), and their
token files written, each split's whole or none (write_splits). The format is common.py's: each document's
`encode_ordinary` tokens, then the end-of-text token, as uint16 back to back."""
import math
import os
from contextlib import ExitStack

import numpy as np
from tqdm import tqdm

from common import EOT, UsageError, atomic_path, gpt2_encoding

WRITE_SHARDS = 1024  # as nanoGPT: write in contiguous pieces so memory stays flat on 9 B tokens


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

    All files are written under temporary names (common.atomic_path's, this process's own) and renamed only once
    every one is complete, so a crash never leaves a truncated .bin, nor a new train.bin beside a stale val.bin."""
    counts = {}
    for split, tokenized in tokenized_splits.items():
        if len(tokenized) == 0:
            raise UsageError(f"the {split} split has no documents")
        counts[split] = int(np.sum(tokenized.with_format("numpy")["len"][:], dtype=np.uint64))
        if counts[split] == len(tokenized):
            raise UsageError(f"the {split} split's documents are all empty (no text to tokenize)")
    os.makedirs(out_dir, exist_ok=True)
    with ExitStack() as renamed_at_the_end:  # every file renamed into place only once all are complete
        temp_paths = {split: renamed_at_the_end.enter_context(atomic_path(os.path.join(out_dir, f"{split}.bin")))
                      for split in tokenized_splits}
        for split, tokenized in tokenized_splits.items():
            _write_bin(tokenized, counts[split], temp_paths[split], desc=f"writing {split}.bin")
    for split, n_tokens in counts.items():
        path = os.path.join(out_dir, f"{split}.bin")
        print(f"{path}: {n_tokens:,} tokens, {len(tokenized_splits[split]):,} documents, "
              f"{os.path.getsize(path) / 2**20:,.1f} MiB")
    return counts
