"""
Step 4 of the pipeline: export one of our checkpoints as a Hugging Face model directory.

    python krony_to_gpt.py checks/my_checkpoint.pt out_dir
    python krony_to_gpt.py checks/my_checkpoint.pt out_dir --keep_factors
    python krony_to_gpt.py checks/my_checkpoint.pt out_dir --tokenizer path/to/gpt2_tokenizer --overwrite

The whole config comes from the checkpoint (Kronecker or dense; DDP/torch.compile prefixes are stripped).
By default every Kronecker matrix is materialized as W = sum_r A_r (x) B_r (and every Monarch matrix as its
product), so OUT_DIR is a plain
GPT2LMHeadModel (config.json, model.safetensors, generation_config.json) plus GPT-2's tokenizer files:
AutoModelForCausalLM, AutoTokenizer, pipeline("text-generation") and lm-evaluation-harness load it with nothing
else. A model of a character-level dataset (a checkpoint with "itos") gets the meta.json of its characters
instead of GPT-2's tokenizer (common.read_vocab reads them back), and a tokenizer of those characters, so that
AutoTokenizer and pipeline("text-generation") read and write its text too. --keep_factors writes the factors
themselves instead, with an auto_map and the code that runs them, copied byte for byte from this repository:
hf_remote_code/'s configuration_krony.py and modeling_krony.py (transformers' own GPT-2 with the factored modules
swapped in) and the layers and plans they import, kronecker.py, monarch.py and kron_shapes.py. The model stays as
small on disk and in memory as it trained, and loads with
    AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True)
(perplexity.py, sample.py and checkpoints.load_model read it without running its code). AutoTokenizer reads its
config.json first, so it too takes trust_remote_code=True, or asks on a terminal whether to run that code (either
answer gives the same tokenizer). Either export is checked (its logits must equal ours) before it is renamed into
place, so OUT_DIR is never half written.

Both carry a generation_config.json (GPT-2's <|endoftext|> as bos, eos and pad token, where the vocabulary holds
it) and a model card, README.md (model_card.py: the Hub's metadata, the plan per block, parameters, init and
training tokens; `perplexity.py OUT_DIR` adds its scores). To publish the folder as it is, card included:
    from huggingface_hub import upload_folder
    upload_folder(folder_path=OUT_DIR, repo_id="you/your-model", repo_type="model")
(a model's own push_to_hub uploads what its save_pretrained writes, without this card).
"""

import argparse
import os
import shutil
from contextlib import contextmanager

import torch

from checkpoints import is_hub_name, load_checkpoint, load_model_config, load_vocab, seal_safetensors
from common import EOT, UsageError, existing_ancestor, exit_on_usage_error, one_line, write_vocab
from compress import materialize
from model import HF_CONV1D_WEIGHTS
from model_card import CARD, card_text

LOGIT_TOLERANCE = 1e-3  # round-off is ~2e-6 on a random GPT-2 124M; one misplaced matrix moves logits by ~1
FACTORED_TOLERANCE = 1e-5  # relative to the largest logit: the same factors, the same contractions
ROOT = os.path.dirname(os.path.abspath(__file__))
# what a --keep_factors folder runs, relative to ROOT: the glue, and the modules it imports (as .kronecker, ...)
REMOTE_CODE = ("hf_remote_code/configuration_krony.py", "hf_remote_code/modeling_krony.py", "kronecker.py",
               "monarch.py", "kron_shapes.py")


def hf_state_dict(model, hf_model):
    """hf_model's state dict filled from our model: Linear weights transposed to Conv1D, factors as they are.
    bias=False models export with zero biases, which computes the same function."""
    ours = model.state_dict()
    state_dict = {}
    for key, like in hf_model.state_dict().items():
        if key.endswith(HF_CONV1D_WEIGHTS):
            value = ours[key].t()
        elif key in ours:
            value = ours[key]
        elif key.endswith(".bias"):
            value = torch.zeros_like(like)
        else:
            raise ValueError(f"no weight for Hugging Face key {key}")
        state_dict[key] = value.detach().to(torch.float32).contiguous()
    return state_dict


@torch.no_grad()
def to_hf(model):
    """A GPT2LMHeadModel with our model's weights, every Kronecker (and Monarch) factor multiplied out."""
    from transformers import GPT2Config, GPT2LMHeadModel
    dense = materialize(model)
    hf_model = GPT2LMHeadModel(GPT2Config(**dense.config.to_hf()))
    hf_model.load_state_dict(hf_state_dict(dense, hf_model))
    return hf_model.eval()


def copy_remote_code(folder):
    """Put the repository's REMOTE_CODE files, byte for byte, into folder (flat, as transformers imports them)."""
    for path in REMOTE_CODE:
        shutil.copyfile(os.path.join(ROOT, path), os.path.join(folder, os.path.basename(path)))


@torch.no_grad()
def to_hf_factored(model, folder):
    """A KronyForCausalLM with our model's weights and plan, the factors kept. Its classes are imported from folder,
    where the remote code is copied first, as transformers imports an export's: this process runs the very code
    the export ships."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    copy_remote_code(folder)
    KronyForCausalLM = get_class_from_dynamic_module("modeling_krony.KronyForCausalLM", folder)
    # GPT-2's tanh GELU as model.py computes it, one kernel: "gelu_new" is the same curve in seven ops per block,
    # a cost a decoded token pays in every block
    config = KronyForCausalLM.config_class(**model.config.to_hf(), activation_function="gelu_pytorch_tanh")
    hf_model = KronyForCausalLM(config)
    hf_model.load_state_dict(hf_state_dict(model, hf_model))
    return hf_model.eval()


@torch.no_grad()
def logit_difference(model, hf_model, seq_len=64):
    """(largest |logit difference|, largest |logit| of ours) on a fixed random batch."""
    idx = torch.randint(0, model.config.vocab_size, (2, min(seq_len, model.config.block_size)),
                        generator=torch.Generator().manual_seed(0))
    ours = model.eval()(idx)[0]
    theirs = hf_model(idx).logits
    return (ours - theirs).abs().max().item(), ours.abs().max().item()


def generation_config(config):
    """GPT-2's: <|endoftext|> begins and ends a text, and pads a batch (GPT-2 has no pad token); a vocabulary
    without it (characters) has none of them."""
    from transformers import GenerationConfig
    if config.vocab_size <= EOT:
        return GenerationConfig()
    return GenerationConfig(bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT)


def char_tokenizer(itos):
    """A Hugging Face tokenizer of a character model's ids: each character one token, its id its place in itos,
    tokens joined back as they are. A character the model never saw is refused by WordLevel's missing [UNK]."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tokenizer = Tokenizer(models.WordLevel({c: i for i, c in enumerate(itos)}))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")  # every character, newlines too
    tokenizer.decoder = decoders.Fuse()
    # transformers' clean-up would drop a space before punctuation, a character of the text like any other
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False)


def export(model, out_dir, tokenizer, keep_factors=False, itos=None, checkpoint=None):
    """Write model (our GPT) and tokenizer to out_dir, replacing it, via a temporary directory renamed into place;
    for a model of characters (itos) their meta.json and char_tokenizer instead of tokenizer, which may then be
    None. The model card tells what it can of the model's making from checkpoint (ours: its init, settings and
    iteration).

    Returns the largest |logit difference| between the written model, as transformers reads it back, and ours.
    """
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel
    out_dir = os.path.normpath(out_dir)
    # no dot in the temporary name: transformers imports remote code under the directory's name
    tmp_dir, old_dir = f"{out_dir}_tmp{os.getpid()}", f"{out_dir}_old{os.getpid()}"
    try:
        os.makedirs(tmp_dir)
        hf_model = to_hf_factored(model, tmp_dir) if keep_factors else to_hf(model)
        hf_model.generation_config = generation_config(model.config)
        hf_model.save_pretrained(tmp_dir)
        seal_safetensors(os.path.join(tmp_dir, "model.safetensors"))  # the CRC-32 checkpoints.load_model checks
        if keep_factors:
            copy_remote_code(tmp_dir)  # save_pretrained copies the code it imported: make sure it is ours
        with open(os.path.join(tmp_dir, CARD), "w") as f:
            f.write(card_text(model, checkpoint or {}, keep_factors, itos))
        if itos is not None:
            write_vocab(itos, tmp_dir)
            tokenizer = char_tokenizer(itos)
        tokenizer.model_max_length = model.config.block_size
        tokenizer.save_pretrained(tmp_dir)
        # Check what was written, as it will be read, rather than the in-memory copy.
        if keep_factors:
            written = AutoModelForCausalLM.from_pretrained(tmp_dir, trust_remote_code=True, dtype=torch.float32)
        else:
            written = GPT2LMHeadModel.from_pretrained(tmp_dir, dtype=torch.float32)
        diff, scale = logit_difference(model, written)
        tolerance = FACTORED_TOLERANCE * scale if keep_factors else LOGIT_TOLERANCE
        if not diff <= tolerance:
            raise RuntimeError(f"exported logits differ from ours by {diff:.3g} (> {tolerance:.3g}); nothing written")
        if keep_factors and written.num_parameters() != model.get_num_params(non_embedding=False):
            raise RuntimeError(f"the export has {written.num_parameters():,} parameters, ours "
                               f"{model.get_num_params(non_embedding=False):,}; nothing written")
        # A folder, not a file: common.atomic_path renames one file over another, but a folder cannot replace a
        # non-empty one, so the old export is moved aside first and removed once the new one is in place.
        if os.path.exists(out_dir):
            os.replace(out_dir, old_dir)
        os.replace(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        shutil.rmtree(old_dir, ignore_errors=True)
    return diff


def load_tokenizer(name, vocab_size):
    """GPT-2's tokenizer from a hub name or a folder, checked to fit a model of vocab_size tokens."""
    from transformers import AutoTokenizer
    if not os.path.isdir(name) and not is_hub_name(name):
        raise UsageError(f"cannot load the tokenizer {name!r}: no such folder, nor a hub name such as gpt2")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise UsageError(f"cannot load the tokenizer {name!r} ({type(e).__name__}); it needs the network "
                         f"once, HF_HUB_CACHE pointing at a copy of gpt2's tokenizer files, or --tokenizer DIR") \
            from None
    if len(tokenizer) > vocab_size:
        raise UsageError(f"the tokenizer has {len(tokenizer):,} tokens but the model only {vocab_size:,}: this "
                         f"checkpoint was not trained on GPT-2's tokens")
    return tokenizer


@contextmanager
def transformers_bars_off():
    """transformers' and the hub's progress bars off for a while, then back as they were: they count the tensors
    of a file read or written in a blink, and bury the lines this script prints."""
    from transformers.utils import logging
    were_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_on:
            logging.enable_progress_bar()


@exit_on_usage_error("krony_to_gpt.py")
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a krony checkpoint (.pt) from kron_decompose.py or train.py")
    parser.add_argument("out_dir", help="the Hugging Face directory to write")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="where GPT-2's tokenizer comes from: a hub name or a local directory (default: gpt2); "
                             "unused for a model of characters")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    parser.add_argument("--keep_factors", action="store_true",
                        help="write the Kronecker factors (trust_remote_code model) instead of a dense GPT-2")
    args = parser.parse_args(argv)

    if os.path.isdir(args.checkpoint):
        hint = os.path.join(args.checkpoint, "ckpt.pt")
        raise UsageError(f"{args.checkpoint} is a folder, not a checkpoint file"
                         + (f" (did you mean {hint}?)" if os.path.isfile(hint) else ""))
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"no such checkpoint: {args.checkpoint}")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UsageError(f"{args.out_dir} is a file, not a directory")
    if os.path.isdir(args.out_dir) and os.listdir(args.out_dir) and not args.overwrite:
        raise UsageError(f"{args.out_dir} already exists; pass --overwrite to replace it")
    ancestor = existing_ancestor(os.path.dirname(os.path.abspath(args.out_dir)))
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK):
        raise UsageError(f"cannot write {args.out_dir}: {ancestor} is not a writable directory")
    # a character model's characters (it needs no GPT-2 tokenizer), else GPT-2's tokenizer, before the weights are
    # read: the checkpoint memory-mapped, nothing of it read but its small entries
    itos = load_vocab(args.checkpoint)
    with transformers_bars_off():
        tokenizer = None if itos is not None else \
            load_tokenizer(args.tokenizer, load_model_config(args.checkpoint).vocab_size)
        try:
            model, checkpoint = load_checkpoint(args.checkpoint)
        except (ValueError, RuntimeError, TypeError) as e:  # not ours, or model_args that do not fit the weights
            raise UsageError(f"cannot load {args.checkpoint}: {one_line(e)}") from None

        config = model.config
        weights = f"Kronecker {config.plan}" if config.plan else "dense"
        print(f"{args.checkpoint}: {weights}, {config.n_layer} layers, {config.n_head} heads, n_embd "
              f"{config.n_embd}, block_size {config.block_size}, {model.get_num_params():,} parameters, "
              f"iter_num {checkpoint.get('iter_num')}")
        try:
            diff = export(model, args.out_dir, tokenizer, args.keep_factors, itos, checkpoint)
        except OSError as e:
            raise UsageError(f"cannot write {args.out_dir}: {one_line(e)}") from None
    kind = "KronyForCausalLM (load with trust_remote_code=True)" if args.keep_factors else "GPT2LMHeadModel"
    vocab = ("GPT-2 tokenizer" if itos is None else
             f"meta.json, no GPT-2 tokenizer (its ids are the {len(itos)} characters of meta.json) but a tokenizer "
             f"of those characters")
    print(f"wrote {args.out_dir}: {kind} and {vocab}; max |logit difference| to the checkpoint {diff:.2e}")


if __name__ == "__main__":
    main()
