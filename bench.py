"""
Speed of Kronecker-factored GPT-2 against dense, measured side by side in one run on one device.

1. Layers: KroneckerLinear vs dense nn.Linear vs materializing sum_r kron(A_r, B_r) then a matmul (what the
   original Krony code did), for the c_fc and c_proj shapes of the paper's 81M and 95M models, forward and
   forward+backward, on batch_size x seq_len tokens; and the factored tied embedding (lookup + lm_head)
   against nn.Embedding + its tied nn.Linear.
2. Models (random weights): training tokens/s (forward, backward, AdamW step) and generation latency of dense
   GPT-2 124M vs the 81M and 95M Kronecker models and config/train_gpt2_50M.py's layout (MLP, attention and
   embedding factored); --compile times them compiled.
3. Exports (with --export): krony_to_gpt.py's dense export against --keep_factors for the 81M and 95M models:
   size on disk, parameters, and generation with transformers' generate() and its key-value cache.
4. Evaluation (with --eval DATASET): perplexity.py's batched windows against the plain loop of the paper's
   evaluation (transformers, one window at a time, labels = inputs), same model and tokens; both must agree.
5. init act (with --act): kron_decompose.py --init act's fit of GPT-2 small's MLPs, 81M plan, random weights
   (the time does not depend on them) and 2^17 random calibration tokens, at the defaults: wall time and peak
   memory; --act_layers times fewer blocks (each costs the same).

    python bench.py                                # layers and models, sizes chosen for the device
    python bench.py --skip_models --batch_size=8 --seq_len=1024 --device=cpu
    python bench.py --skip_layers --skip_models --eval=wiki2 --data_dir=../shared/eval --eval_tokens=8192
    python bench.py --skip_layers --skip_models --export --iters=3
    python bench.py --skip_layers --skip_models --act --device=cpu
"""

import argparse
import math
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn

from checkpoints import load_model
from common import ACT_STEPS, CALIBRATION_TOKENS
from devices import autocast_context, default_device, setup_device
from kron_shapes import matrix_shape
from kronecker import KroneckerEmbedding, KroneckerLinear
from model import GPT, GPTConfig

# (model, matrix, (A rows, A cols, factors)) of GPT-2 small's matrices (kron_shapes.matrix_shape)
LAYER_SHAPES = [
    ("81M", "c_fc", (768, 768, 1)),
    ("81M", "c_proj", (768, 768, 1)),
    ("95M", "c_fc", (384, 3072, 1)),
    ("95M", "c_proj", (3072, 384, 1)),
    ("<60M", "wte", (50257, 384, 1)),  # B 1x2: half the embedding
]
PLAN_50M = dict(dim_1=768, dim_2=768, factors=1,  # config/train_gpt2_50M.py
                kron={"c_attn": (768, 1152, 1), "attn_proj": (768, 384, 1), "wte": (50257, 384, 1)})
MODELS = [("GPT-2 124M (dense)", {}), ("Krony 81M (768 768 1)", dict(dim_1=768, dim_2=768, factors=1)),
          ("Krony 95M (384 3072 1)", dict(dim_1=384, dim_2=3072, factors=1)),
          ("Krony 48.5M (MLP, attention, embedding)", PLAN_50M)]


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
    """The original implementation: build W = sum_r kron(A_r, B_r) every call, then x @ W + b (for wte: the
    lookup and lm_head from the built W)."""

    def __init__(self, kron):
        super().__init__()
        self.kron = kron

    def forward(self, x):
        A, B = self.kron.A, self.kron.B
        weight = sum(torch.kron(A[r], B[r]) for r in range(A.shape[0]))
        if isinstance(self.kron, KroneckerEmbedding):
            return weight[x[0]], x[1] @ weight.t()
        return x @ weight + self.kron.bias


class TiedEmbedding(nn.Module):
    """Dense GPT-2's lookup and lm_head, one (vocab, n_embd) matrix: (embedding of x[0], logits x[1] @ W^T)."""

    def __init__(self, vocab_size, n_embd):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, x):
        return self.wte(x[0]), self.lm_head(x[1])


class LookupAndHead(nn.Module):
    """A KroneckerEmbedding's two uses, as TiedEmbedding: (embedding of x[0], logits x[1] @ W^T)."""

    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, x):
        return self.embedding(x[0]), self.embedding.unembed(x[1])


def bench_layers(args):
    """Each layer's forward, and forward+backward, against the dense layer it replaces."""
    n_tokens = args.batch_size * args.seq_len
    print(f"\n## Layers: {n_tokens} tokens ({args.batch_size}x{args.seq_len}), {args.dtype}, median of "
          f"{args.iters}, time relative to dense (nn.Linear; for wte nn.Embedding + its tied lm_head)\n")
    print("| shape | pass | dense ms | Kronecker ms | ratio | materialized kron ms | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model_name, matrix, (a_rows, a_cols, factors) in LAYER_SHAPES:
        torch.manual_seed(0)
        in_f, out_f = matrix_shape(matrix, 768, 50257)
        if matrix == "wte":  # inputs: token ids for the lookup, hidden states for lm_head
            kron = KroneckerEmbedding(in_f, out_f, a_rows, a_cols, factors).to(args.device)
            layers = {"dense": TiedEmbedding(in_f, out_f), "kron": LookupAndHead(kron)}
            x = (torch.randint(0, in_f, (n_tokens,), device=args.device),
                 torch.randn(n_tokens, out_f, device=args.device, requires_grad=True))
            grad_out = (torch.randn(n_tokens, out_f, device=args.device),
                        torch.randn(n_tokens, in_f, device=args.device))
        else:
            kron = KroneckerLinear(in_f, out_f, a_rows, a_cols, factors).to(args.device)
            layers = {"dense": nn.Linear(in_f, out_f), "kron": kron}
            x = torch.randn(n_tokens, in_f, device=args.device, requires_grad=True)
            grad_out = torch.randn(n_tokens, out_f, device=args.device)
        layers = {name: layer.to(args.device) for name, layer in layers.items()}
        layers["materialized"] = MaterializedKronecker(kron)
        for backward in (False, True):
            steps = {name: layer_step(layer, x, grad_out if backward else None, args)
                     for name, layer in layers.items()}
            seconds = median_seconds(steps, args.device, args.iters, args.warmup)
            ms = {name: 1e3 * s for name, s in seconds.items()}
            print(f"| {model_name} {matrix} {in_f}x{out_f}, A {a_rows}x{a_cols} | {'fwd+bwd' if backward else 'fwd'} "
                  f"| {ms['dense']:.2f} | {ms['kron']:.2f} | {ms['kron'] / ms['dense']:.2f} | {ms['materialized']:.2f} "
                  f"| {ms['materialized'] / ms['dense']:.2f} |", flush=True)


def layer_step(layer, x, grad_out, args):
    """layer(x) without an autograd graph, or layer(x).backward(grad_out) when grad_out is given."""
    def step():
        with autocast_context(args.device, args.dtype):
            if grad_out is None:
                with torch.no_grad():
                    layer(x)
            else:
                out = layer(x)
                torch.autograd.backward(out if isinstance(out, tuple) else (out,),
                                        grad_out if isinstance(grad_out, tuple) else (grad_out,))
    return step


def bench_models(args):
    print(f"\n## Models: training on {args.model_batch_size}x{args.model_seq_len} tokens per step, generation of "
          f"{args.gen_tokens} tokens after a {args.prompt_len}-token prompt (batch 1, no KV cache), {args.dtype}, "
          f"compile={args.compile}, median of {args.iters}\n")
    print("| model | parameters | train tokens/s | ratio | generation ms/token | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    train_steps, generate_steps, params = {}, {}, {}
    for name, kron_args in MODELS:
        train_steps[name], generate_steps[name], params[name] = model_steps(GPTConfig.from_settings(**kron_args), args)
    train_s = median_seconds(train_steps, args.device, args.iters, args.warmup)
    generate_s = median_seconds(generate_steps, args.device, max(1, args.iters // 2), 1)
    dense = MODELS[0][0]
    for name in train_steps:
        tokens_per_s = args.model_batch_size * args.model_seq_len / train_s[name]
        ms_per_token = 1e3 * generate_s[name] / args.gen_tokens
        print(f"| {name} | {params[name]:,} | {tokens_per_s:,.0f} | {train_s[dense] / train_s[name]:.2f} "
              f"| {ms_per_token:.2f} | {generate_s[name] / generate_s[dense]:.2f} |", flush=True)


def model_steps(config, args):
    """(one training step, one generation, parameters) of a randomly initialised GPT."""
    torch.manual_seed(0)
    device_type = args.device.split(":")[0]
    raw_model = GPT(config).to(args.device)
    model = torch.compile(raw_model) if args.compile else raw_model
    optimizer = raw_model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device_type)
    autocast = autocast_context(args.device, args.dtype)
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
            raw_model.generate(prompt, args.gen_tokens, temperature=0)

    return train_step, generate, raw_model.get_num_params(non_embedding=False)


def bench_export(args):
    """krony_to_gpt.py's two exports of the 81M and 95M models (random weights): size on disk, parameters, and
    transformers' generate() with its key-value cache, factored against dense."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import krony_to_gpt
    tokenizer = AutoTokenizer.from_pretrained("gpt2")
    print(f"\n## Exports: krony_to_gpt.py dense vs --keep_factors (random weights, wte scaled so that greedy "
          f"decoding has no near-ties); generate() with the KV cache, batch 1, {args.export_new_tokens} new tokens "
          f"after a {args.prompt_len}-token prompt, float32, median of {args.iters}\n")
    print("| model | export | parameters | model.safetensors bytes | bytes / (4 x factored parameters) "
          "| generation ms/token | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, plan in MODELS[1:3]:
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_settings(**plan)).eval()
        with torch.no_grad():
            model.transformer.wte.weight.mul_(20)
        factored_params = model.get_num_params(non_embedding=False)
        with tempfile.TemporaryDirectory() as tmp:
            dirs = {"dense": os.path.join(tmp, "dense"), "factored": os.path.join(tmp, "factored")}
            for kind, out_dir in dirs.items():
                krony_to_gpt.export(model, out_dir, tokenizer, keep_factors=kind == "factored")
            hf = {kind: AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True,
                                                             dtype=torch.float32).to(args.device).eval()
                  for kind, out_dir in dirs.items()}
            prompt = torch.randint(0, 50257, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
            prompt = prompt.to(args.device)
            n_new = args.export_new_tokens

            def generate(hf_model):
                with torch.inference_mode():
                    return hf_model.generate(prompt, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                             attention_mask=torch.ones_like(prompt), pad_token_id=50256)
            outputs = {kind: generate(m) for kind, m in hf.items()}
            same = torch.equal(outputs["dense"], outputs["factored"])
            timed = median_seconds({kind: lambda m=m: generate(m) for kind, m in hf.items()}, args.device,
                                   args.iters, 1) if name.startswith("Krony 81M") else {}
            for kind, out_dir in dirs.items():
                size = os.path.getsize(os.path.join(out_dir, "model.safetensors"))
                ms = f"{1e3 * timed[kind] / n_new:.2f}" if timed else "-"
                ratio = f"{timed[kind] / timed['dense']:.2f}" if timed else "-"
                print(f"| {name} | {kind} | {hf[kind].num_parameters():,} | {size:,} "
                      f"| {size / (4 * factored_params):.4f} | {ms} | {ratio} |", flush=True)
            print(f"\n{name}: greedy outputs of the two exports identical token for token: {same}\n")


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


def bench_act(args):
    import resource
    from compress import compress, fit_to_calibration
    from kron_shapes import Plan
    torch.manual_seed(0)
    config = GPTConfig(n_layer=args.act_layers)
    teacher = GPT(config)
    student = compress(teacher, Plan.from_settings(config.n_embd, config.n_layer, config.vocab_size, 768, 768, 1))
    calibration = torch.randint(config.vocab_size, (CALIBRATION_TOKENS // config.block_size, config.block_size))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fit_to_calibration(teacher, student, calibration, steps=args.act_steps, progress=True, device=args.device)
    seconds = time.perf_counter() - start
    peak = (f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB on the GPU" if args.device.startswith("cuda")
            else f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB resident")
    print(f"\n## init act: GPT-2 small's MLPs, 81M plan, {args.act_layers} blocks, {CALIBRATION_TOKENS:,} calibration "
          f"tokens, {args.act_steps} Adam steps per MLP\n")
    per_block = seconds / args.act_layers
    print(f"{seconds:.1f} s ({per_block:.1f} s per block; 12 blocks: {12 * per_block / 60:.1f} min), peak {peak}")


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
    parser.add_argument("--compile", action="store_true", help="models: torch.compile the training step")
    parser.add_argument("--skip_layers", action="store_true")
    parser.add_argument("--skip_models", action="store_true")
    parser.add_argument("--eval", metavar="DATASET", help="also time perplexity.py on this dataset (as its argument)")
    parser.add_argument("--data_dir", help="--eval: perplexity.py's --data_dir")
    parser.add_argument("--export", action="store_true",
                        help="also time krony_to_gpt.py's dense and factored exports (needs GPT-2's tokenizer files)")
    parser.add_argument("--export_new_tokens", type=int, default=128, help="--export: tokens generated")
    parser.add_argument("--eval_tokens", type=int, default=8192, help="--eval: tokens scored")
    parser.add_argument("--eval_batch_size", type=int, default=8, help="--eval: perplexity.py's --batch_size")
    parser.add_argument("--act", action="store_true", help="also time init act's fit (section 5)")
    parser.add_argument("--act_layers", type=int, default=12, help="--act: blocks of GPT-2 small to fit")
    parser.add_argument("--act_steps", type=int, default=ACT_STEPS, help="--act: Adam steps per MLP")
    args = parser.parse_args()
    gpu = args.device.startswith(("cuda", "mps"))
    args.model_batch_size = args.model_batch_size or (8 if gpu else 1)
    args.model_seq_len = args.model_seq_len or (1024 if gpu else 256)
    args.gen_tokens = args.gen_tokens or (100 if gpu else 20)
    args.iters = args.iters or (20 if gpu else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_device(args.device)

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"# bench.py on {args.device} ({where}), torch {torch.__version__}")
    print(f"command: python {' '.join(sys.argv)}")
    if not args.skip_layers:
        bench_layers(args)
    if not args.skip_models:
        bench_models(args)
    if args.eval:
        bench_eval(args)
    if args.export:
        bench_export(args)
    if args.act:
        bench_act(args)


if __name__ == "__main__":
    main()
