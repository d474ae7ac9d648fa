"""
Sample text from a model: one of our checkpoints, an exported Hugging Face directory, or a hub name.

    python sample.py checks/krony_shakespeare.pt --start="ROMEO:" --num_samples=3 --max_new_tokens=100
    python sample.py gpt2 --start=FILE:prompt.txt --temperature=0.8 --top_k=200 --seed=1337

Text is GPT-2's tokens, or the characters of a model of a character-level dataset (a checkpoint's itos, an
export's meta.json): then --max_new_tokens counts characters.
"""

import argparse

import torch

from common import UsageError, decode_chars, encode_chars, exit_on_usage_error, gpt2_encoding, one_line, usage_errors
from checkpoints import load_model, load_model_config, load_vocab
from devices import autocast_context, default_device, setup_device


@exit_on_usage_error("sample.py")
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="checkpoint file, Hugging Face GPT-2 folder, or hub name (gpt2, distilgpt2)")
    parser.add_argument("--start", default="\n", metavar="TEXT",
                        help='the prompt, or "FILE:path" to read it from a file (default: a newline)')
    parser.add_argument("--num_samples", type=int, default=3, metavar="N", help="(default: %(default)s)")
    parser.add_argument("--max_new_tokens", type=int, default=200, metavar="N",
                        help="tokens (characters for a model of characters) per sample (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T",
                        help="0 samples greedily (default: %(default)s)")
    parser.add_argument("--top_k", type=int, default=200, metavar="K",
                        help="sample from the K most likely tokens, 0: from all (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1337, help="(default: %(default)s)")
    parser.add_argument("--device", default=default_device(), help="(default: %(default)s, the fastest here)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="autocast dtype of the forward pass (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.temperature < 0 or args.top_k < 0 or args.num_samples < 1 or args.max_new_tokens < 0:
        raise UsageError("temperature and top_k must be >= 0, num_samples >= 1, max_new_tokens >= 0")

    start = args.start
    if start.startswith("FILE:"):
        try:
            with open(start[len("FILE:"):], encoding="utf-8") as f:
                start = f.read()
        except OSError as e:
            raise UsageError(f"cannot read the prompt file: {one_line(e)}") from None
    with usage_errors():
        device = setup_device(args.device)
    config = load_model_config(args.model, what=repr(args.model))  # a missing model fails before the weights
    itos = load_vocab(args.model, what=repr(args.model))
    if itos is not None:
        prompt = encode_chars(start, itos)
    elif config.vocab_size < 50257:  # GPT-2's vocabulary
        raise UsageError(f"{args.model!r} has a vocabulary of {config.vocab_size:,}, smaller than GPT-2's, and "
                         f"carries no characters: its ids are not GPT-2 tokens, so there is no text to print")
    else:
        enc = gpt2_encoding()
        prompt = enc.encode(start, allowed_special={"<|endoftext|>"})
    if not prompt:
        raise UsageError("the prompt is empty; give at least one character, e.g. --start='\\n'")
    model = load_model(args.model, map_location=device, what=repr(args.model)).eval()

    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with autocast_context(device, args.dtype):
        out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                             generator=generator)
    for row in out.tolist():
        print(decode_chars(row, itos) if itos is not None else enc.decode(row))
        print("---------------")


if __name__ == "__main__":
    main()
