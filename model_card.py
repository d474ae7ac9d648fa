"""
The model card of an export (its README.md): the YAML metadata the Hugging Face Hub reads, then a body that says
what the model is, where it came from and how to load and score it. krony_to_gpt.py writes it; perplexity.py adds
its scores to it as model-index results, changing nothing else: the body, and any metadata a user edited, stay.
"""

import os
import re

import yaml

from common import write_text
from kron_shapes import BLOCK_MATRICES, count_params

CARD = "README.md"
LICENSE = "mit"  # GPT-2's, which every krony model derives from
TRAINING_DATASETS = {"owt": "Skylion007/openwebtext"}  # train.py's dataset names, by their hub ids


def hub_id(source):
    """source when it names a model on the Hub (gpt2, openai-community/gpt2), None for a local file or folder."""
    if not source or os.path.exists(source) or source.endswith(".pt"):
        return None
    return source if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source) else None


def provenance(checkpoint):
    """{"base", "init", "teacher", "dataset", "tokens", "iterations"}: what a checkpoint says of its making (None
    where it does not say): kron_decompose.py records its init, train.py its settings and iteration."""
    init, settings = checkpoint.get("init") or {}, checkpoint.get("config") or {}
    init_from = settings.get("init_from")
    base = init.get("teacher") or (init_from if init_from not in (None, "scratch", "resume") else None)
    tokens = None
    if settings and checkpoint.get("iter_num") is not None:
        tokens = checkpoint["iter_num"] * settings["gradient_accumulation_steps"] * settings["batch_size"] * \
            settings["block_size"]
    dataset = settings.get("data_dir") or settings.get("dataset")
    return {"base": base, "init": init.get("method") or settings.get("init"), "dataset": dataset, "tokens": tokens,
            "teacher": settings.get("teacher") or None, "iterations": checkpoint.get("iter_num")}


def plan_rows(config):
    """The markdown table of the plan per block: each matrix's factor shape (A rows x A columns : factors), or
    monarch:N for a Monarch matrix of N blocks."""
    plan = config.plan
    rows = ["| block | " + " | ".join(BLOCK_MATRICES) + " |", "| --- " * (len(BLOCK_MATRICES) + 1) + "|"]
    for block in range(config.n_layer):
        cells = [f"{s[0]}x{s[1]}:{s[2]}" if (s := plan.shape(name, block)) else
                 f"monarch:{n}" if (n := plan.nblocks(name, block)) else "dense" for name in BLOCK_MATRICES]
        rows.append(f"| {block} | " + " | ".join(cells) + " |")
    if plan.shape("wte"):
        rows.append(f"\nThe token embedding (wte, tied to the output layer) is factored too: "
                    f"{'x'.join(map(str, plan.shape('wte')[:2]))}:{plan.shape('wte')[2]}.")
    return "\n".join(rows)


def character_lines(itos, block_size, remote):
    """The card's section on a model of characters: its ids, and code that decodes them with meta.json alone."""
    start = "\n" if "\n" in itos else itos[0]
    return ["## Its characters", "",
            f"Its ids are {len(itos)} characters, not GPT-2's tokens: tokenizer.json reads and writes them for "
            "AutoTokenizer and pipeline, and meta.json lists them, id i being the character itos[i], for code "
            "without a tokenizer:", "", "```python", "import json", "", "import torch",
            "from transformers import AutoModelForCausalLM", "", 'folder = "path/to/this/folder"',
            'with open(f"{folder}/meta.json", encoding="utf-8") as f:',
            '    itos = json.load(f)["itos"]  # the character of each id',
            "stoi = {c: i for i, c in enumerate(itos)}",
            f"model = AutoModelForCausalLM.from_pretrained(folder{remote})",
            f"prompt = torch.tensor([[stoi[c] for c in {start!r}]])",
            f"ids = model.generate(prompt, max_new_tokens={min(200, block_size - len(start))}, do_sample=True)",
            'print("".join(itos[i] for i in ids[0].tolist()))', "```", ""]


def front_matter(metadata):
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n"


def card_text(model, checkpoint, keep_factors, itos=None):
    """The whole README.md of an export of model (our GPT) made from checkpoint."""
    config, made = model.config, provenance(checkpoint)
    metadata = {"library_name": "transformers", "pipeline_tag": "text-generation", "license": LICENSE,
                "tags": ["krony", "kronecker", "gpt2", "compression"] + (["custom_code"] if keep_factors else [])}
    if hub_id(made["base"]):
        metadata["base_model"] = hub_id(made["base"])
    dataset = made["dataset"] and TRAINING_DATASETS.get(os.path.basename(os.path.normpath(made["dataset"])))
    if dataset:
        metadata["datasets"] = [dataset]
    parts = config.plan.count_parts(config.block_size, config.bias)
    total, embeddings = sum(parts.values()), parts["embedding"] + parts["position"]
    on_disk = total if keep_factors else \
        count_params(config.n_embd, config.n_layer, config.vocab_size, config.block_size, config.bias)[0]
    stored = "the Kronecker factors themselves" if keep_factors else "every Kronecker product multiplied out"
    lines = [f"# A {'Kronecker-factored' if config.plan else 'dense'} GPT-2 made with krony", "",
             f"{config.n_layer} blocks, {config.n_head} heads, n_embd {config.n_embd}, a context of "
             f"{config.block_size} tokens, vocabulary {config.vocab_size:,}"
             + (f" (the {len(itos)} characters of meta.json, not GPT-2's tokens)" if itos is not None else "") + ".",
             "", f"- Parameters: {total:,}, {total - embeddings:,} without the token and position embeddings "
             f"(embeddings {parts['embedding']:,} + {parts['position']:,}, attention {parts['attention']:,}, MLPs "
             f"{parts['mlp']:,}); {on_disk:,} stored, {4 * on_disk / 2**20:.1f} MiB of float32 weights."]
    if config.plan:
        lines.append(f"- Plan: `{config.plan}`; this export stores {stored}.")
    if config.teacher_blocks:
        lines.append(f"- Blocks {', '.join(map(str, config.teacher_blocks))} of its teacher, copied and renumbered.")
    if made["base"]:
        lines.append(f"- Initialised from `{made['base']}`" + (f" with init `{made['init']}`" if made["init"] and
                                                             config.plan else "") + ".")
    if made["tokens"] is not None:
        teacher = f", distilled from `{made['teacher']}`" if made["teacher"] else ""
        lines.append(f"- Trained on {made['tokens']:,} tokens of `{made['dataset']}` ({made['iterations']:,} "
                     f"iterations){teacher}.")
    if config.plan:
        lines += ["", "## The plan per block", "", plan_rows(config)]
    remote = ", trust_remote_code=True" if keep_factors else ""
    lines += ["", "## How to load it", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
              f'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder"{remote})',
              f'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder"{remote})',
              f'generator = pipeline("text-generation", model="path/to/this/folder"{remote})', "```", ""]
    if keep_factors:
        lines += ["The factored layers run from this folder's own code (modeling_krony.py, kronecker.py, "
                  "monarch.py, kron_shapes.py), hence trust_remote_code. The tokenizer is plain "
                  + ("GPT-2's" if itos is None else "tokenizer.json") + ", but AutoTokenizer reads config.json "
                  "first, and without trust_remote_code it stops to ask whether to run the code config.json names.",
                  ""]
    if itos is not None:
        lines += character_lines(itos, config.block_size, remote)
    lines += ["## How it was scored", "",
              "`python perplexity.py THIS_FOLDER` (krony's perplexity.py) adds its perplexities to this card's "
              "metadata as model-index results: the paper's protocol (the test split joined with blank lines, "
              "disjoint windows of the context, perplexity the exponential of the mean window loss); a partial "
              "run (fewer tokens, another stride or dtype) is never written here.", ""]
    return front_matter(metadata) + "\n" + "\n".join(lines)


def split_card(text):
    """(metadata dict, body) of a README.md with or without YAML front matter."""
    match = re.match(r"---\n(.*?\n)?---\n", text, re.S)
    if not match:
        return {}, text
    return yaml.safe_load(match.group(1) or "") or {}, text[match.end():]


def add_results(path, name, results, protocol):
    """Put perplexity.py's results ({(hub id, config or None): {"perplexity"[, "accuracy"]}}, of test splits) into
    the card at path as model-index results, replacing earlier ones of the same dataset; the body and every other
    metadata key are left as they are."""
    with open(path) as f:
        metadata, body = split_card(f.read())
    index = metadata.get("model-index") or [{"name": name, "results": []}]
    entries = index[0].setdefault("results", [])
    for (hub, config), result in results.items():
        described = {"name": config or hub, "type": hub, **({"config": config} if config else {}), "split": "test"}
        metrics = [{"type": "perplexity", "value": round(result["perplexity"], 4), "name": f"Perplexity ({protocol})"}]
        if "accuracy" in result:
            metrics.append({"type": "accuracy", "value": round(result["accuracy"], 4),
                            "name": "Last-word accuracy (lm-evaluation-harness's lambada_openai task)"})
        entries[:] = [e for e in entries if e.get("dataset", {}).get("type") != hub or
                      e.get("dataset", {}).get("config") != config]
        entries.append({"task": {"type": "text-generation", "name": "Text Generation"}, "dataset": described,
                        "metrics": metrics})
    metadata["model-index"] = index
    write_text(front_matter(metadata) + body, path)
