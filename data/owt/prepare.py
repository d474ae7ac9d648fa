"""OpenWebText (the paper's training set) -> train.bin / val.bin of GPT-2 tokens, as nanoGPT prepares it.

    python data/owt/prepare.py                     # nanoGPT got 9,035,582,198 train and 4,434,897 val tokens
    python data/owt/prepare.py --max_docs 100000   # a smaller run: 100k shuffled training documents, the same val
    python data/owt/prepare.py --data_files my/*.jsonl --out_dir data/mine   # any local corpus, offline

On the Hugging Face Hub OpenWebText is `Skylion007/openwebtext` (the old id `openwebtext` redirects there). That
repository still carries its legacy loading script, which datasets>=4 refuses to run; when it is refused, the
repository's parquet copy of the same data (data/*.parquet) is read instead.
"""
import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository
from common import UsageError, check_out_dir, exit_on_usage_error, one_line, usage_errors  # noqa: E402
from data.prepare_common import tokenize, write_splits  # noqa: E402

BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def expand_data_files(patterns):
    """Local files, globs and directories -> sorted file list; remote URLs (hf://, https://) pass through."""
    files = []
    for pattern in patterns:
        if "://" in pattern:
            files.append(pattern)
        elif os.path.isdir(pattern):
            found = sorted(f for f in glob.glob(os.path.join(pattern, "*")) if os.path.splitext(f)[1] in BUILDERS)
            if not found:
                raise UsageError(f"no .txt, .json, .jsonl or .parquet files in directory {pattern}")
            files += found
        else:
            found = sorted(glob.glob(pattern))
            if not found:
                raise UsageError(f"no such file: {pattern}")
            files += found
    for f in files:
        if "://" not in f and os.path.getsize(f) == 0:
            raise UsageError(f"empty input file: {f}")
    return files


def load_data_files(patterns, num_proc):
    """Text files are one document each; JSON lines and parquet files are one document per row."""
    import datasets
    files = expand_data_files(patterns)
    extensions = {os.path.splitext(f)[1] for f in files}
    if not extensions <= BUILDERS.keys():
        raise UsageError(f"unsupported input type {', '.join(sorted(extensions - BUILDERS.keys()))}: "
                         f"use .txt, .json, .jsonl or .parquet files")
    builders = {BUILDERS[e] for e in extensions}
    if len(builders) > 1:
        raise UsageError(f"mixed input types ({', '.join(sorted(extensions))}): prepare one kind of file at a time")
    builder = builders.pop()
    kwargs = {"sample_by": "document"} if builder == "text" else {}
    try:
        return datasets.load_dataset(builder, data_files=files, split="train", num_proc=num_proc, **kwargs)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetGenerationError) as e:
        # the parser's error, if wrapped
        raise UsageError(f"cannot read {', '.join(patterns)}: {one_line(e.__cause__ or e)}") from None


def load_hub_dataset(dataset_id, num_proc):
    import datasets
    try:
        try:
            return datasets.load_dataset(dataset_id, split="train", num_proc=num_proc)
        except RuntimeError as e:
            if "Dataset scripts are no longer supported" not in str(e):
                raise
            root = dataset_id if os.path.isdir(dataset_id) else f"hf://datasets/{dataset_id}"
            print(f"{dataset_id} ships a legacy loading script; reading its parquet files {root}/data/*.parquet")
            return datasets.load_dataset("parquet", data_files=f"{root}/data/*.parquet", split="train",
                                         num_proc=num_proc)
    except datasets.exceptions.DatasetNotFoundError:
        raise UsageError(f"unknown dataset id {dataset_id!r} on the Hugging Face Hub (check the spelling, or log in "
                         f"for gated datasets)") from None
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"cannot load dataset {dataset_id!r}: {one_line(e)}; check the id and your network "
                         f"connection, or prepare local files with --data_files") from None


@exit_on_usage_error("data/owt/prepare.py")
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="Skylion007/openwebtext", help="Hugging Face dataset id (its train split)")
    parser.add_argument("--data_files", nargs="+",
                        help="local .txt (one document per file), .jsonl/.json or .parquet (one per row) files, globs "
                             "or directories, instead of --dataset")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--val_fraction", type=float, default=0.0005, help="share of documents held out (nanoGPT's)")
    parser.add_argument("--seed", type=int, default=2357, help="seed of the train/val split (nanoGPT's)")
    parser.add_argument("--max_docs", type=int,
                        help="keep only the first N training documents after the shuffled split, so val.bin is the "
                             "same as a full run's")
    parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise UsageError(f"--val_fraction must be between 0 and 1, got {args.val_fraction}")
    if args.num_proc < 1 or (args.max_docs is not None and args.max_docs < 1):
        raise UsageError("--num_proc and --max_docs must be at least 1")
    check_out_dir(args.out_dir)

    if args.data_files:
        dataset = load_data_files(args.data_files, args.num_proc)
    else:
        dataset = load_hub_dataset(args.dataset, args.num_proc)
    if len(dataset) < 2:
        raise UsageError(f"the input has {len(dataset)} document(s): at least 2 are needed for a train and a val split")
    with usage_errors(f"cannot split {len(dataset)} documents with --val_fraction {args.val_fraction}"):
        split = dataset.train_test_split(test_size=args.val_fraction, seed=args.seed, shuffle=True)
    splits = {"train": split["train"], "val": split["test"]}
    if args.max_docs is not None:
        splits["train"] = splits["train"].select(range(min(args.max_docs, len(splits["train"]))))
    print(f"{len(splits['train']):,} train and {len(splits['val']):,} val documents")
    tokenized = {name: tokenize(ds, args.text_column, args.num_proc, desc=f"tokenizing {name}")
                 for name, ds in splits.items()}
    write_splits(tokenized, args.out_dir)


if __name__ == "__main__":
    main()
