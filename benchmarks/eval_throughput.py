"""
Evaluation throughput of perplexity.py against the plain loop (transformers, one window at a time, loss from
labels = inputs), on the same model, the same tokens, in the same run. Both must give the same perplexity.

    python benchmarks/eval_throughput.py --data_dir ../shared/eval --max_tokens 8192 --device cpu
    python benchmarks/eval_throughput.py --model gpt2 --data_dir ../shared/eval --device cuda --max_tokens 0

Without --model it times a randomly initialised GPT-2 124M (1024 context): speed does not depend on the weights.
"""

import argparse
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import perplexity as P  # noqa: E402
from model import load_model  # noqa: E402


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def plain_loop(hf_model, tokens, context, device):
    """The paper's evaluation loop as written: one window per forward pass, Hugging Face's loss."""
    losses = []
    for begin in range(0, len(tokens), context):
        window = tokens[None, begin:begin + context].to(device)
        if window.shape[1] > 1:
            losses.append(hf_model(window, labels=window).loss)
    return math.exp(torch.stack(losses).mean().item())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Hugging Face GPT-2 directory or hub name (default: random GPT-2 124M)")
    parser.add_argument("--dataset", default="wiki2")
    parser.add_argument("--data_dir", help="as perplexity.py's --data_dir")
    parser.add_argument("--max_tokens", type=int, default=8192, help="0: the whole dataset")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    from transformers import GPT2Config, GPT2LMHeadModel
    with tempfile.TemporaryDirectory() as tmp_dir:
        source = args.model
        if source is None:
            torch.manual_seed(0)
            GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp_dir)
            source = tmp_dir
        hf_model = GPT2LMHeadModel.from_pretrained(source, dtype=torch.float32).to(device).eval()
        model = load_model(source, map_location=device).eval()
    tokens, _, _ = P.load_tokens(args.dataset, args.data_dir, args.max_tokens or None)
    context = model.config.block_size
    print(f"{args.model or 'random GPT-2 124M'} on {args.dataset}: {len(tokens):,} tokens, windows of {context}, "
          f"{device} ({torch.get_num_threads()} CPU threads), float32", file=sys.stderr)

    warmup = tokens[:2 * context]
    plain_loop(hf_model, warmup, context, device)
    P.perplexity(model, warmup, batch_size=args.batch_size, device=device)
    runs = [("plain transformers loop, batch 1", lambda: plain_loop(hf_model, tokens, context, device))]
    for batch_size in sorted({1, args.batch_size}):
        runs.append((f"perplexity.py, batch {batch_size}",
                     lambda b=batch_size: P.perplexity(model, tokens, batch_size=b, device=device)["perplexity"]))
    rows = []
    for name, run in runs:
        synchronize(device)
        start = time.perf_counter()
        ppl = run()
        synchronize(device)
        rows.append((name, ppl, time.perf_counter() - start))
    for name, ppl, seconds in rows:
        print(f"{name:<36} perplexity {ppl:12.4f}   {seconds:8.2f} s   {len(tokens) / seconds:10,.0f} tokens/s")
    print(f"speedup of perplexity.py, batch {args.batch_size}: {rows[0][2] / rows[-1][2]:.2f}x; largest relative "
          f"perplexity difference {max(abs(ppl / rows[0][1] - 1) for _, ppl, _ in rows):.1e}")


if __name__ == "__main__":
    main()
