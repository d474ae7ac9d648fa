"""
Speed of Kronecker-factored GPT-2 against dense, measured side by side in one run on one device.

1. Layers: KroneckerLinear vs dense nn.Linear vs materializing sum_r kron(A_r, B_r) then a matmul (what the
   original Krony code did), for the c_fc and c_proj shapes of the paper's 81M and 95M models, forward and
   forward+backward, on batch_size x seq_len tokens.
2. Models (random weights): training tokens/s (forward, backward, AdamW step) and generation latency of dense
   GPT-2 124M vs the 81M and 95M Kronecker models.
3. Evaluation (with --eval DATASET): perplexity.py's batched windows against the plain loop of the paper's
   evaluation (transformers, one window at a time, labels = inputs), same model and tokens; both must agree.

    python bench.py                                # layers and models, sizes chosen for the device
    python bench.py --skip_models --batch_size=8 --seq_len=1024 --device=cpu
    python bench.py --skip_layers --skip_models --eval=wiki2 --data_dir=../shared/eval --eval_tokens=8192
"""

import argparse
import math
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import torch
import torch.nn as nn

from model import GPT, GPTConfig, KroneckerLinear, default_device, load_model

# (model, matrix, in_features, out_features, A rows, A cols)
PAPER_SHAPES = [
    ("81M", "c_fc", 768, 3072, 768, 768),
    ("81M", "c_proj", 3072, 768, 768, 768),
    ("95M", "c_fc", 768, 3072, 384, 3072),
    ("95M", "c_proj", 3072, 768, 3072, 384),
]
MODELS = [("GPT-2 124M (dense)", {}), ("Krony 81M (768 768 1)", dict(dim_1=768, dim_2=768, factors=1)),
          ("Krony 95M (384 3072 1)", dict(dim_1=384, dim_2=3072, factors=1))]


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def median_seconds(steps, device, iters, warmup):
    """{name: median seconds of steps[name]()}, timed in turns (a, b, c, a, b, c, ...) so that a drift in the
    machine's speed (other load, clocks) falls on all of them alike and the ratios stay honest."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def timed_once(step, device):
    """(step's result, seconds it took)."""
    synchronize(device)
    start = time.perf_counter()
    result = step()
    synchronize(device)
    return result, time.perf_counter() - start


class MaterializedKronecker(nn.Module):
    """The original implementation: build W = sum_r kron(A_r, B_r) every call, then x @ W + b."""

    def __init__(self, kron):
        super().__init__()
        self.kron = kron

    def forward(self, x):
        A, B = self.kron.A, self.kron.B
        weight = sum(torch.kron(A[r], B[r]) for r in range(A.shape[0]))
        return x @ weight + self.kron.bias


def bench_layers(args, dtype):
    n_tokens = args.batch_size * args.seq_len
    print(f"\n## Layers: {n_tokens} tokens ({args.batch_size}x{args.seq_len}), {args.dtype}, median of "
          f"{args.iters}, time relative to dense nn.Linear\n")
    print("| shape | pass | dense ms | Kronecker ms | ratio | materialized kron ms | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model_name, matrix, in_f, out_f, a_rows, a_cols in PAPER_SHAPES:
        torch.manual_seed(0)
        kron = KroneckerLinear(in_f, out_f, a_rows, a_cols).to(args.device, dtype)
        layers = {"dense": nn.Linear(in_f, out_f).to(args.device, dtype), "kron": kron,
                  "materialized": MaterializedKronecker(kron)}
        x = torch.randn(n_tokens, in_f, device=args.device, dtype=dtype, requires_grad=True)
        grad_out = torch.randn(n_tokens, out_f, device=args.device, dtype=dtype)
        for backward in (False, True):
            steps = {name: layer_step(layer, x, grad_out if backward else None) for name, layer in layers.items()}
            ms = {name: 1e3 * seconds for name, seconds in median_seconds(steps, args.device, args.iters,
                                                                           args.warmup).items()}
            print(f"| {model_name} {matrix} {in_f}x{out_f}, A {a_rows}x{a_cols} | {'fwd+bwd' if backward else 'fwd'} "
                  f"| {ms['dense']:.2f} | {ms['kron']:.2f} | {ms['kron'] / ms['dense']:.2f} | {ms['materialized']:.2f} "
                  f"| {ms['materialized'] / ms['dense']:.2f} |", flush=True)


def layer_step(layer, x, grad_out):
    """layer(x) without an autograd graph, or layer(x).backward(grad_out) when grad_out is given."""
    def step():
        if grad_out is None:
            with torch.no_grad():
                layer(x)
        else:
            layer(x).backward(grad_out)
    return step


def bench_models(args, dtype):
    print(f"\n## Models: training on {args.model_batch_size}x{args.model_seq_len} tokens per step, generation of "
          f"{args.gen_tokens} tokens after a {args.prompt_len}-token prompt (batch 1, no KV cache), {args.dtype}, "
          f"median of {args.iters}\n")
    print("| model | parameters | train tokens/s | ratio | generation ms/token | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    train_steps, generate_steps, params = {}, {}, {}
    for name, kron_args in MODELS:
        train_steps[name], generate_steps[name], params[name] = model_steps(GPTConfig(**kron_args), args, dtype)
    train_s = median_seconds(train_steps, args.device, args.iters, args.warmup)
    generate_s = median_seconds(generate_steps, args.device, max(1, args.iters // 2), 1)
    dense = MODELS[0][0]
    for name in train_steps:
        tokens_per_s = args.model_batch_size * args.model_seq_len / train_s[name]
        ms_per_token = 1e3 * generate_s[name] / args.gen_tokens
        print(f"| {name} | {params[name]:,} | {tokens_per_s:,.0f} | {train_s[dense] / train_s[name]:.2f} "
              f"| {ms_per_token:.2f} | {generate_s[name] / generate_s[dense]:.2f} |", flush=True)


def model_steps(config, args, dtype):
    """(one training step, one generation, parameters) of a randomly initialised GPT."""
    torch.manual_seed(0)
    device_type = args.device.split(":")[0]
    model = GPT(config).to(args.device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device_type)
    autocast = torch.autocast(device_type=device_type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    idx = torch.randint(0, config.vocab_size, (args.model_batch_size, args.model_seq_len + 1), device=args.device)
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_len), device=args.device)

    def train_step():
        model.train()
        with autocast:
            loss = model(idx[:, :-1], idx[:, 1:])[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def generate():
        model.eval()
        with autocast:
            model.generate(prompt, args.gen_tokens, temperature=0)

    return train_step, generate, model.get_num_params(non_embedding=False)


@torch.inference_mode()
def plain_loop(hf_model, tokens, context, device):
    """The paper's evaluation loop as written: one window per forward pass, Hugging Face's loss."""
    losses = []
    for begin in range(0, len(tokens), context):
        window = tokens[None, begin:begin + context].to(device)
        if window.shape[1] > 1:
            losses.append(hf_model(window, labels=window).loss)
    return math.exp(torch.stack(losses).mean().item())


def bench_eval(args):
    """perplexity.py against plain_loop on a random GPT-2 124M: speed does not depend on the weights."""
    import perplexity
    from transformers import GPT2Config, GPT2LMHeadModel
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp_dir:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp_dir)
        hf_model = GPT2LMHeadModel.from_pretrained(tmp_dir, dtype=torch.float32).to(device).eval()
        model = load_model(tmp_dir, map_location=device).eval()
    tokens = perplexity.load_tokens(args.eval, args.data_dir, args.eval_tokens)[0]
    context = model.config.block_size
    print(f"\n## Evaluation: random GPT-2 124M on {args.eval}, {len(tokens):,} tokens, windows of {context}, "
          f"float32, one timed run each after a warm-up\n")
    print("| method | perplexity | seconds | tokens/s | ratio |")
    print("| --- | --- | --- | --- | --- |")
    warmup = tokens[:2 * context]
    plain_loop(hf_model, warmup, context, device)
    perplexity.perplexity(model, warmup, batch_size=args.eval_batch_size, device=device)
    runs = [("plain transformers loop, batch 1", lambda: plain_loop(hf_model, tokens, context, device))]
    for batch_size in sorted({1, args.eval_batch_size}):
        runs.append((f"perplexity.py, batch {batch_size}", lambda b=batch_size: perplexity.perplexity(
            model, tokens, batch_size=b, device=device)["perplexity"]))
    baseline_seconds = None
    for name, run in runs:
        ppl, seconds = timed_once(run, args.device)
        baseline_seconds = baseline_seconds or seconds
        print(f"| {name} | {ppl:.4f} | {seconds:.2f} | {len(tokens) / seconds:,.0f} "
              f"| {baseline_seconds / seconds:.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch_size", type=int, default=8, help="layer benchmark: sequences")
    parser.add_argument("--seq_len", type=int, default=1024, help="layer benchmark: tokens per sequence")
    parser.add_argument("--model_batch_size", type=int, default=None, help="default: 8 on GPU, 1 on CPU")
    parser.add_argument("--model_seq_len", type=int, default=None, help="default: 1024 on GPU, 256 on CPU")
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--gen_tokens", type=int, default=None, help="default: 100 on GPU, 20 on CPU")
    parser.add_argument("--iters", type=int, default=None, help="timed repetitions (default: 20 on GPU, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip_layers", action="store_true")
    parser.add_argument("--skip_models", action="store_true")
    parser.add_argument("--eval", metavar="DATASET", help="also time perplexity.py on this dataset (as its argument)")
    parser.add_argument("--data_dir", help="--eval: perplexity.py's --data_dir")
    parser.add_argument("--eval_tokens", type=int, default=8192, help="--eval: tokens scored")
    parser.add_argument("--eval_batch_size", type=int, default=8, help="--eval: perplexity.py's --batch_size")
    args = parser.parse_args()
    gpu = args.device.startswith(("cuda", "mps"))
    args.model_batch_size = args.model_batch_size or (8 if gpu else 1)
    args.model_seq_len = args.model_seq_len or (1024 if gpu else 256)
    args.gen_tokens = args.gen_tokens or (100 if gpu else 20)
    args.iters = args.iters or (20 if gpu else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = getattr(torch, args.dtype)

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"# bench.py on {args.device} ({where}), torch {torch.__version__}")
    print(f"command: python {' '.join(sys.argv)}")
    if not args.skip_layers:
        bench_layers(args, dtype)
    if not args.skip_models:
        bench_models(args, dtype)
    if args.eval:
        bench_eval(args)


if __name__ == "__main__":
    main()
