"""
Step 5 of the pipeline: perplexity as the paper measures it, and LAMBADA's last-word accuracy.

    python perplexity.py out_dir                               # wiki103, wiki2 and lambada from the hub
    python perplexity.py gpt2 wiki2 lambada --data_dir ../shared/eval --out results.json
    python perplexity.py checks/krony.pt data/shakespeare/val.bin --max_tokens 20000
    python perplexity.py distilgpt2 wiki103 --stride 512 --device cuda --dtype bfloat16

MODEL: one of our checkpoints, a Hugging Face GPT-2 directory (what krony_to_gpt.py writes) or a hub name
(gpt2, distilgpt2); all are evaluated through model.py. DATASET: wiki103, wiki2 (alias wiki1), lambada, all
(the default: the three), or a local file: .bin (nanoGPT's uint16 GPT-2 tokens), .jsonl (rows {"text": ...})
or .txt. A .bin with a meta.json beside it holds characters (data/shakespeare_char): only a model of those
characters scores it, per character, with its bits per character (log2 of that perplexity); a model of characters
scores nothing else.

An export's model card (MODEL/README.md, krony_to_gpt.py's) gets the wiki103, wiki2 and lambada scores as
model-index results, and nothing else in it changes. Only full-protocol scores go there: a run with --max_tokens,
--stride or a dtype other than float32 prints its scores and says that it left the card as it was, so a partial
score never replaces a full one.

The paper's protocol (the default): the test split's rows joined with "\\n\\n" and tokenized once with GPT-2's
tokenizer, cut into windows of the model's context length, stride equal to it; each window's loss has
labels = inputs (n-1 predictions), and perplexity = exp(mean of the per-window mean losses).
--stride S (at most the context) is Hugging Face's sliding-window evaluation instead: windows start every S
tokens and each scores only the tokens the previous one did not, so (for S < context) every token but the first
is predicted once, with at least context-S tokens of history outside the first window; perplexity =
exp(total NLL / predictions).
LAMBADA also gets lm-evaluation-harness's lambada_openai last-word task: context = the passage minus its last
word, target = " " + last word; accuracy (every target token greedy-correct) and per-word perplexity.
"""

import argparse
import itertools
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from common import (EOT, UsageError, check_vocab, exit_on_usage_error, gpt2_encoding, one_line, open_tokens, read_vocab,
                    usage_errors, write_json)
from checkpoints import load_model, load_model_config, load_vocab
from devices import autocast_context, default_device, setup_device
from model import IGNORE_INDEX
from model_card import CARD, add_results

# name: (hub id, hub config, the JSON-lines file --data_dir must hold). The hub's lambada (cimec/lambada) is what
# the paper's load_dataset("lambada") read; the local copy is OpenAI's rendering of the same 5,153 passages.
DATASETS = {
    "wiki103": ("Salesforce/wikitext", "wikitext-103-v1", "wikitext-103-v1.test.jsonl"),
    "wiki2": ("Salesforce/wikitext", "wikitext-2-v1", "wikitext-2-v1.test.jsonl"),
    "lambada": ("cimec/lambada", None, "lambada_openai.test.jsonl"),
}
ALIASES = {"wiki1": "wiki2"}  # the original README's spelling
FILE_TYPES = (".bin", ".jsonl", ".txt")


# ----------------------------------------------------------------------------------------------------
# Data

def encode(text):
    """GPT-2 token ids, identical to Hugging Face's GPT-2 tokenizer (which also reads <|endoftext|> as 50256)."""
    return gpt2_encoding().encode(text, allowed_special="all")


def read_jsonl(path):
    texts = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                try:
                    text = json.loads(line)["text"]
                except (ValueError, TypeError, KeyError):
                    text = None
                if not isinstance(text, str):
                    raise UsageError(f"{path}:{line_number}: expected a JSON object with a string 'text'")
                texts.append(text)
    return texts


def hub_offline():
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return any(flag.upper() in ("1", "ON", "YES", "TRUE") for flag in flags)


def hub_reachable(timeout=5):
    """One quick request, so that no network fails in seconds instead of after the hub client's retries."""
    try:
        urllib.request.urlopen(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout=timeout)
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False
    return True


def load_texts(name, data_dir=None):
    """The test rows of a named dataset, from --data_dir or the hub, and a description of where they came from."""
    hub_id, config, filename = DATASETS[name]
    if data_dir:
        path = os.path.join(data_dir, filename)
        if not os.path.isfile(path):
            raise UsageError(f"{path} not found: --data_dir must hold {filename}")
        return read_jsonl(path), path
    hub_name = " ".join(filter(None, (hub_id, config)))
    advice = f"pass --data_dir DIR holding {filename}, or connect to the network once"
    if not hub_offline() and not hub_reachable():
        raise UsageError(f"cannot reach the Hugging Face Hub to download {hub_id}; {advice}")
    import datasets
    try:
        rows = datasets.load_dataset(hub_id, config, split="test")
    except Exception as e:
        raise UsageError(f"cannot load {hub_name} ({one_line(e)}); {advice}") from None
    return list(rows["text"]), f"{hub_name} test split"


def dataset_vocab(dataset):
    """The characters a dataset's ids stand for: the meta.json beside a .bin file; None for GPT-2 tokens."""
    return read_vocab(os.path.dirname(dataset) or ".") if dataset.endswith(".bin") else None


def load_tokens(dataset, data_dir=None, max_tokens=None):
    """(tokens as a 1-D LongTensor, the LAMBADA passages or None, where they came from) of a name or a file."""
    if dataset.endswith(".bin"):  # already ids: GPT-2 tokens, or characters (dataset_vocab)
        tokens = open_tokens(dataset)
        return torch.from_numpy(tokens[:max_tokens].astype(np.int64)), None, dataset
    passages = None
    if dataset in DATASETS:
        texts, source = load_texts(dataset, data_dir)
        passages = texts if dataset == "lambada" else None
    elif dataset.endswith(".jsonl"):
        texts, source = read_jsonl(dataset), dataset
    else:
        try:
            with open(dataset, encoding="utf-8") as f:
                texts, source = [f.read()], dataset
        except UnicodeDecodeError as e:
            raise UsageError(f"{dataset} is not UTF-8 text ({e})")
    return torch.tensor(encode("\n\n".join(texts))[:max_tokens], dtype=torch.long), passages, source


# ----------------------------------------------------------------------------------------------------
# Perplexity over windows

def windows(n_tokens, context, stride):
    """(begin, end, first_target) of each window; tokens first_target..end-1 are scored.

    Hugging Face's loop: windows start every `stride` tokens and score only what the previous window did not
    (a window's first token has nothing before it to be predicted from). stride == context gives the paper's
    disjoint windows, each scoring all but its first token.
    """
    spans, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        first_target = max(prev_end, begin + 1)
        if first_target < end:
            spans.append((begin, end, first_target))
        prev_end = end
        if end == n_tokens:
            break
    return spans


@torch.inference_mode()
def window_nlls(model, tokens, spans, batch_size=8, device="cpu", dtype="float32", desc=None):
    """Summed negative log-likelihood of the scored tokens of each span, in span order (float64, on the CPU).

    Windows are batched; all but possibly the last have the same length, so batches need no padding.
    """
    sums = []
    with tqdm(total=len(spans), desc=desc, unit="window") as bar:
        for i in range(0, len(spans), batch_size):
            for _, group in itertools.groupby(spans[i:i + batch_size], key=lambda s: s[1] - s[0]):
                group = list(group)
                x = torch.stack([tokens[begin:end] for begin, end, _ in group]).to(device)
                with autocast_context(device, dtype):
                    logits = model(x)[0]
                targets = x[:, 1:].clone()  # the logits at position p predict token p + 1
                for row, (begin, _, first_target) in enumerate(group):
                    targets[row, :first_target - begin - 1] = IGNORE_INDEX  # context only, scored by an earlier window
                nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                      ignore_index=IGNORE_INDEX, reduction="none")
                sums.append(nll.view(len(group), -1).sum(dim=1).double().cpu())
                bar.update(len(group))
    return torch.cat(sums)


def perplexity(model, tokens, stride=None, **kwargs):
    """The paper's perplexity (stride None), or the token-weighted sliding-window one; with its bookkeeping."""
    context = model.config.block_size
    spans = windows(len(tokens), context, stride or context)
    nll = window_nlls(model, tokens, spans, **kwargs)
    predictions = torch.tensor([end - first_target for _, end, first_target in spans], dtype=torch.float64)
    if stride is None:
        mean_nll = (nll / predictions).mean().item()  # every window counts the same, as in the paper
    else:
        mean_nll = (nll.sum() / predictions.sum()).item()
    return {"perplexity": math.exp(mean_nll), "tokens": len(tokens), "predicted_tokens": int(predictions.sum()),
            "windows": len(spans), "protocol": {"context": context, "stride": stride or context,
                                                "average": "window" if stride is None else "token"}}


# ----------------------------------------------------------------------------------------------------
# LAMBADA's last word, as lm-evaluation-harness's lambada_openai task scores it

def last_word_pair(text):
    """(context tokens, target tokens): harness's doc_to_text / doc_to_target and HFLM's _encode_pair."""
    words = text.split(" ")
    context, continuation = " ".join(words[:-1]), " " + words[-1]
    if context == "":
        return [EOT], encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:  # trailing spaces move to the target, so the split falls on a token boundary
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole, context_tokens = encode(context + continuation), encode(context)
    return context_tokens, whole[len(context_tokens):]


@torch.inference_mode()
def last_word(model, passages, batch_size=8, device="cpu", dtype="float32", desc=None):
    """Accuracy (all target tokens are the argmax) and perplexity exp(-mean log p(target)) over the passages."""
    context = model.config.block_size
    pairs = [last_word_pair(text) for text in passages]
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))  # batches of alike length
    log_likelihoods, greedy = torch.zeros(len(pairs), dtype=torch.float64), torch.zeros(len(pairs), dtype=torch.bool)
    with tqdm(total=len(pairs), desc=desc, unit="passage") as bar:
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            inputs = [(pairs[j][0] + pairs[j][1])[-(context + 1):][:-1] for j in batch]  # as the harness truncates
            x = torch.zeros(len(batch), max(map(len, inputs)), dtype=torch.long)
            for row, ids in enumerate(inputs):
                x[row, :len(ids)] = torch.tensor(ids)  # right padding: causal attention never sees it
            with autocast_context(device, dtype):
                logits = model(x.to(device))[0]
            for row, j in enumerate(batch):
                target = torch.tensor(pairs[j][1], device=logits.device)
                end = len(inputs[row])
                log_probs = F.log_softmax(logits[row, end - len(target):end].float(), dim=-1)
                log_likelihoods[j] = log_probs.gather(1, target[:, None]).sum().item()
                greedy[j] = bool((log_probs.argmax(dim=-1) == target).all())
            bar.update(len(batch))
    return {"accuracy": greedy.double().mean().item(), "last_word_perplexity": math.exp(-log_likelihoods.mean().item()),
            "passages": len(pairs)}


def passages_within(passages, max_tokens):
    """The leading passages that hold at most max_tokens tokens between them (all of them if max_tokens is None)."""
    if max_tokens is None:
        return passages
    kept, total = [], 0
    for text in passages:
        total += len(encode(text))
        if total > max_tokens:
            break
        kept.append(text)
    return kept


# ----------------------------------------------------------------------------------------------------

def resolve_datasets(names):
    """Dataset arguments as a list of names and local files, failing on anything else before the model loads."""
    resolved = []
    for name in names:
        name = ALIASES.get(name, name)
        if name == "all":
            resolved += list(DATASETS)
        elif name in DATASETS:
            resolved.append(name)
        elif name.endswith(FILE_TYPES):
            if not os.path.isfile(name):
                raise UsageError(f"no such file: {name}")
            resolved.append(name)
        else:
            raise UsageError(f"unknown dataset {name!r}: use wiki103, wiki2, lambada, all, or a .bin/.jsonl/.txt file")
    return list(dict.fromkeys(resolved))


def protocol_changes(args):
    """The flags, as given, that make a run's scores other than the paper's full protocol over whole test sets."""
    changes = [f"--{flag} {value}" for flag, value in (("max_tokens", args.max_tokens), ("stride", args.stride))
               if value is not None]
    return changes + ([f"--dtype {args.dtype}"] if args.dtype != "float32" else [])


def print_table(results):
    width = max(len("dataset"), *map(len, results))
    print(f"{'dataset':<{width}} {'perplexity':>10} {'tokens':>11} {'windows':>8} {'bits/char':>9} {'acc':>7} "
          f"{'last-word ppl':>14}")
    for name, r in results.items():
        bits = f"{r['bits_per_character']:.4f}" if "bits_per_character" in r else "-"
        acc = f"{r['accuracy']:.4f}" if "accuracy" in r else "-"
        word_ppl = f"{r['last_word_perplexity']:.3f}" if "last_word_perplexity" in r else "-"
        print(f"{name:<{width}} {r['perplexity']:>10.3f} {r['tokens']:>11,} {r['windows']:>8,} {bits:>9} {acc:>7} "
              f"{word_ppl:>14}")


def parse_args(argv):
    """The command line, with every check that needs no model or data."""
    summary_and_examples = "\n\n".join(__doc__.split("\n\n")[:2])  # the rest is for readers of the code
    parser = argparse.ArgumentParser(description=summary_and_examples,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="The protocol, --stride, LAMBADA's last word and the model card: the top "
                                            "of perplexity.py.")
    parser.add_argument("model", help="checkpoint file, Hugging Face GPT-2 folder, or hub name (gpt2, distilgpt2)")
    parser.add_argument("datasets", nargs="*", default=["all"], metavar="DATASET",
                        help="wiki103, wiki2 (or wiki1), lambada, all (the three), or a .bin/.jsonl/.txt file "
                             "(default: all)")
    parser.add_argument("--data_dir", metavar="DIR",
                        help="read the named datasets from JSON-lines files here (default: the Hugging Face Hub)")
    parser.add_argument("--stride", type=int, metavar="S",
                        help="sliding windows every S tokens (default: the paper's disjoint windows)")
    parser.add_argument("--max_tokens", type=int, metavar="N",
                        help="score only the first N tokens of each dataset (default: all; a partial score leaves "
                             "the model card as it was)")
    parser.add_argument("--batch_size", type=int, metavar="N",
                        help="windows or LAMBADA passages per forward pass (default: 8 on a GPU, 1 on a CPU, where "
                             "batching only adds memory traffic)")
    parser.add_argument("--device", default=default_device(), help="(default: %(default)s, the fastest here)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="autocast dtype of the forward pass (default: %(default)s, the paper's)")
    parser.add_argument("--out", metavar="FILE", help="also write the results to this JSON file (default: none)")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch_size must be at least 1")
    if args.max_tokens is not None and args.max_tokens < 2:
        raise UsageError("--max_tokens must be at least 2: perplexity needs a token to predict from and one to predict")
    if args.stride is not None and args.stride < 1:
        raise UsageError(f"--stride must be at least 1, got {args.stride}")
    if args.data_dir and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data_dir {args.data_dir} is not a directory")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UsageError(f"--out {args.out}: no such directory {os.path.dirname(os.path.abspath(args.out))}")
    return args


def read_data(args, names, config):
    """{dataset: (tokens, passages, source)}, each checked against the model's vocabulary, before any weights load:
    a missing dataset should not wait for a large model to load."""
    data = {name: load_tokens(name, args.data_dir, args.max_tokens) for name in names}
    for dataset, (tokens, _, _) in data.items():
        if len(tokens) < 2:
            raise UsageError(f"{dataset} has {len(tokens)} token(s); perplexity needs at least 2")
        if tokens.max() >= config.vocab_size:
            raise UsageError(f"{dataset} holds token id {tokens.max().item()}, beyond the model's vocabulary of "
                             f"{config.vocab_size}: not GPT-2 tokens")
    return data


def update_card(args, report, protocol):
    """Add the scores of the test sets to an export's model card, only when this run followed the full protocol."""
    card = os.path.join(args.model, CARD) if os.path.isdir(args.model) else None
    named = [dataset for dataset in report["datasets"] if dataset in DATASETS]  # the test sets, not local files
    if not (card and os.path.isfile(card) and named):
        return
    changes = protocol_changes(args)
    if changes:
        print(f"left {card} unchanged: its model-index takes only full-protocol scores, and this run used "
              f"{', '.join(changes)}", file=sys.stderr)
        return
    add_results(card, os.path.basename(os.path.normpath(args.model)),
                {DATASETS[dataset][:2]: report["datasets"][dataset] for dataset in named}, protocol)
    print(f"added {', '.join(named)} to {card}'s model-index", file=sys.stderr)


@exit_on_usage_error("perplexity.py")
def main(argv=None):
    args = parse_args(argv)
    names = resolve_datasets(args.datasets)
    with usage_errors():
        device = setup_device(args.device)
    config = load_model_config(args.model, what=repr(args.model))  # a missing model fails before the data load
    context = config.block_size
    if args.stride is not None and args.stride > context:
        raise UsageError(f"--stride must be between 1 and the model's context length {context}, got {args.stride}")
    vocabs = {name: dataset_vocab(name) for name in names}
    model_itos = load_vocab(args.model, what=repr(args.model))
    for name, itos in vocabs.items():
        check_vocab(repr(args.model), config.vocab_size, model_itos, name, itos)
    data = read_data(args, names, config)
    model = load_model(args.model, map_location=device, what=repr(args.model)).eval()
    protocol = (f"paper's protocol: windows of {context}, stride {context}, mean of window losses"
                if args.stride is None else f"sliding windows of {context}, stride {args.stride}, mean over tokens")
    print(f"{args.model}: {model.get_num_params():,} parameters; {protocol}; {args.dtype} on {device}",
          file=sys.stderr)

    report = {"model": args.model, "parameters": model.get_num_params(), "device": str(device), "dtype": args.dtype,
              "datasets": {}}
    batch_size = args.batch_size or (1 if device.type == "cpu" else 8)
    run = dict(batch_size=batch_size, device=device, dtype=args.dtype)
    for dataset, (tokens, passages, source) in data.items():
        t0 = time.time()
        result = perplexity(model, tokens, args.stride, desc=dataset, **run)
        seconds = time.time() - t0
        result.update(source=source, seconds=round(seconds, 3), tokens_per_second=round(len(tokens) / seconds, 1),
                      unit="token" if vocabs[dataset] is None else "character")
        if vocabs[dataset] is not None:  # the perplexity is per character
            result["bits_per_character"] = math.log2(result["perplexity"])
        passages = passages_within(passages or [], args.max_tokens)
        if passages:
            result.update(last_word(model, passages, desc=f"{dataset} last word", **run))
        report["datasets"][dataset] = result
        if args.out:
            write_json(report, args.out)
    print_table(report["datasets"])
    update_card(args, report, protocol)


if __name__ == "__main__":
    main()
