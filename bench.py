"""
Speed of Kronecker-factored GPT-2 against dense, measured side by side in one run on one device.

1. Layers: KroneckerLinear vs dense nn.Linear vs materializing sum_r kron(A_r, B_r) then a matmul (what the
   original Krony code did), for the c_fc and c_proj shapes of the paper's 81M and 95M models, forward and
   forward+backward, on batch_size x seq_len tokens.
2. Models (random weights): training tokens/s (forward, backward, AdamW step) and generation latency of dense
   GPT-2 124M vs the 81M and 95M Kronecker models.

    python bench.py                                # everything, sizes chosen for the device
    python bench.py --skip_models --batch_size=8 --seq_len=1024 --device=cpu
"""

import argparse
import statistics
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn

from model import GPT, GPTConfig, KroneckerLinear

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


def median_seconds(fn, device, iters, warmup):
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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

        def forward(layer):
            with torch.no_grad():
                layer(x)

        def forward_backward(layer):
            layer(x).backward(grad_out)

        for pass_name, step in (("fwd", forward), ("fwd+bwd", forward_backward)):
            ms = {name: 1e3 * median_seconds(lambda: step(layer), args.device, args.iters, args.warmup)
                  for name, layer in layers.items()}
            print(f"| {model_name} {matrix} {in_f}x{out_f}, A {a_rows}x{a_cols} | {pass_name} | {ms['dense']:.2f} "
                  f"| {ms['kron']:.2f} | {ms['kron'] / ms['dense']:.2f} | {ms['materialized']:.2f} "
                  f"| {ms['materialized'] / ms['dense']:.2f} |", flush=True)


def bench_models(args, dtype):
    batch, seq = args.model_batch_size, args.model_seq_len
    autocast = (torch.autocast(device_type=args.device.split(":")[0], dtype=dtype)
                if dtype != torch.float32 else nullcontext())
    print(f"\n## Models: training on {batch}x{seq} tokens per step, generation of {args.gen_tokens} tokens after a "
          f"{args.prompt_len}-token prompt (batch 1, no KV cache), {args.dtype}, median of {args.iters}\n")
    print("| model | parameters | train tokens/s | ratio | generation ms/token | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    baseline = None
    for name, kron_args in MODELS:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**kron_args)).to(args.device)
        optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), args.device.split(":")[0])
        idx = torch.randint(0, 50257, (batch, seq + 1), device=args.device)

        def train_step():
            with autocast:
                _, loss = model(idx[:, :-1], idx[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        model.train()
        tokens_per_s = batch * seq / median_seconds(train_step, args.device, args.iters, args.warmup)
        prompt = torch.randint(0, 50257, (1, args.prompt_len), device=args.device)
        model.eval()

        def generate():
            with autocast:
                model.generate(prompt, args.gen_tokens, temperature=0)

        ms_per_token = 1e3 * median_seconds(generate, args.device, max(1, args.iters // 2), 1) / args.gen_tokens
        baseline = baseline or (tokens_per_s, ms_per_token)
        print(f"| {name} | {model.get_num_params(non_embedding=False):,} | {tokens_per_s:,.0f} "
              f"| {tokens_per_s / baseline[0]:.2f} | {ms_per_token:.2f} | {ms_per_token / baseline[1]:.2f} |",
              flush=True)
        del model, optimizer


def main():
    default_device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=default_device)
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


if __name__ == "__main__":
    main()
