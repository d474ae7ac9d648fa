"""
Step 4 of the pipeline: export one of our checkpoints as a standard Hugging Face GPT-2 directory.

    python krony_to_gpt.py checks/my_checkpoint.pt out_dir
    python krony_to_gpt.py checks/my_checkpoint.pt out_dir --tokenizer path/to/gpt2_tokenizer --overwrite

The whole config comes from the checkpoint (Kronecker or dense; DDP/torch.compile prefixes are stripped).
Every Kronecker c_fc/c_proj is materialized as W = sum_r A_r (x) B_r, so OUT_DIR is a plain GPT2LMHeadModel
(config.json, model.safetensors, generation_config.json) plus GPT-2's tokenizer files: AutoModelForCausalLM,
AutoTokenizer, pipeline("text-generation") and lm-evaluation-harness load it with nothing else. The export is
checked (its logits must equal ours) before it is renamed into place, so OUT_DIR is never half written.
"""

import argparse
import os
import shutil
import sys

import torch

from model import HF_CONV1D_WEIGHTS, KroneckerLinear, load_checkpoint

LOGIT_TOLERANCE = 1e-3  # round-off is ~2e-6 on a random GPT-2 124M; one misplaced matrix moves logits by ~1


def fail(message):
    print(f"krony_to_gpt.py: {message}", file=sys.stderr)
    sys.exit(2)


def hf_config(config):
    """The GPT2Config of our GPTConfig: GPT-2's defaults (gelu_new, eps 1e-5, tied embeddings) are ours too."""
    from transformers import GPT2Config
    return GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                      n_layer=config.n_layer, n_head=config.n_head, embd_pdrop=config.dropout,
                      attn_pdrop=config.dropout, resid_pdrop=config.dropout)


@torch.no_grad()
def to_hf(model):
    """A GPT2LMHeadModel with our model's weights: Kronecker factors materialized, Linear weights transposed.

    bias=False models export with zero biases, which computes the same function.
    """
    from transformers import GPT2LMHeadModel
    hf_model = GPT2LMHeadModel(hf_config(model.config))
    ours = model.state_dict()
    state_dict = {}
    for key, like in hf_model.state_dict().items():
        module_name, _, param_name = key.rpartition(".")
        module = model.get_submodule(module_name)
        if isinstance(module, KroneckerLinear) and param_name == "weight":
            value = module.dense_weight()  # already (in, out), the Conv1D orientation
        elif key.endswith(HF_CONV1D_WEIGHTS):
            value = ours[key].t()
        elif key in ours:
            value = ours[key]
        elif param_name == "bias":
            value = torch.zeros_like(like)
        else:
            raise ValueError(f"no weight for Hugging Face key {key}")
        state_dict[key] = value.detach().to(torch.float32).contiguous()
    hf_model.load_state_dict(state_dict)
    return hf_model.eval()


@torch.no_grad()
def max_logit_difference(model, hf_model, seq_len=64):
    idx = torch.randint(0, model.config.vocab_size, (2, min(seq_len, model.config.block_size)),
                        generator=torch.Generator().manual_seed(0))
    ours = model.eval()(idx)[0]
    theirs = hf_model(idx).logits
    return (ours - theirs).abs().max().item()


def export(model, out_dir, tokenizer):
    """Write model (our GPT) and tokenizer to out_dir, replacing it, via a temporary directory renamed into place.

    Returns the largest |logit difference| between the written model and ours.
    """
    from transformers import GPT2LMHeadModel
    out_dir = os.path.normpath(out_dir)
    tmp_dir, old_dir = f"{out_dir}.tmp{os.getpid()}", f"{out_dir}.old{os.getpid()}"
    try:
        to_hf(model).save_pretrained(tmp_dir)
        tokenizer.model_max_length = model.config.block_size
        tokenizer.save_pretrained(tmp_dir)
        # Check what was written, as it will be read, rather than the in-memory copy.
        diff = max_logit_difference(model, GPT2LMHeadModel.from_pretrained(tmp_dir, dtype=torch.float32))
        if not diff <= LOGIT_TOLERANCE:
            raise RuntimeError(f"exported logits differ from ours by {diff:.3g} (> {LOGIT_TOLERANCE}); nothing written")
        if os.path.exists(out_dir):
            os.replace(out_dir, old_dir)
        os.replace(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        shutil.rmtree(old_dir, ignore_errors=True)
    return diff


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a krony checkpoint (.pt) from kron_decompose.py or train.py")
    parser.add_argument("out_dir", help="the Hugging Face directory to write")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="where GPT-2's tokenizer comes from: a hub name or a local directory (default: gpt2)")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    args = parser.parse_args(argv)

    if not os.path.isfile(args.checkpoint):
        fail(f"no such checkpoint: {args.checkpoint}")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        fail(f"{args.out_dir} is a file, not a directory")
    if os.path.isdir(args.out_dir) and os.listdir(args.out_dir) and not args.overwrite:
        fail(f"{args.out_dir} already exists; pass --overwrite to replace it")
    try:
        model, checkpoint = load_checkpoint(args.checkpoint)
    except (ValueError, RuntimeError, TypeError) as e:  # not ours, or model_args that do not fit the weights
        fail(f"cannot load {args.checkpoint}: {str(e).splitlines()[0]}")

    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    except Exception as e:
        fail(f"cannot load the tokenizer {args.tokenizer!r} ({type(e).__name__}); it needs the network once, "
             f"HF_HUB_CACHE pointing at a copy of gpt2's tokenizer files, or --tokenizer DIR")
    if len(tokenizer) > model.config.vocab_size:
        fail(f"the tokenizer has {len(tokenizer):,} tokens but the model only {model.config.vocab_size:,}: "
             f"this checkpoint was not trained on GPT-2's tokens")

    c = model.config
    mlp = f"Kronecker MLPs (A {c.dim_1}x{c.dim_2}, {c.factors} factors)" if c.is_kronecker else "dense MLPs"
    print(f"{args.checkpoint}: {mlp}, {c.n_layer} layers, {c.n_head} heads, n_embd {c.n_embd}, block_size "
          f"{c.block_size}, {model.get_num_params():,} parameters, iter_num {checkpoint.get('iter_num')}")
    diff = export(model, args.out_dir, tokenizer)
    print(f"wrote {args.out_dir}: GPT2LMHeadModel and GPT-2 tokenizer; max |logit difference| to the checkpoint "
          f"{diff:.2e}")


if __name__ == "__main__":
    main()
