"""
Speed of Kronecker-factored GPT-2 against dense, measured side by side in one run on one device.

1. Layers: KroneckerLinear vs dense nn.Linear vs materializing sum_r kron(A_r, B_r) then a matmul (what the
   original Krony code did), for the c_fc and c_proj shapes of the paper's 81M and 95M models, forward and
   forward+backward, on batch_size x seq_len tokens; and the factored tied embedding (lookup + lm_head)
   against nn.Embedding + its tied nn.Linear; and a Monarch MLP of 4 blocks (monarch4, in the Kronecker columns).
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
6. Decode (with --decode): transformers' generate() with its KV cache, batch 1, greedy, float32, ms per new token
   of dense GPT-2 124M, DistilGPT2's shape (6 blocks, as published: gelu_new) and krony's 81M and 48.5M
   factored exports (krony_to_gpt.py --keep_factors), timed in turns; with a dynamic cache, a static one, and
   (--compile) a static one with the forward pass compiled; --decode_profile adds where one generate()'s time goes
   (torch.profiler: calls and self CPU time per token of GEMMs, KV cache growth, attention).

--dtype takes a list (float32,bfloat16: each timed in the same turns); --compile times every section's models
compiled beside eager. --suite gpu is the prepared GPU check (under 5 minutes on one GPU): the MLP and the 81M
train step against dense in bfloat16, eager and compiled, act's fit of one block, decode and its profile; --out
writes its tables as OUT.json and OUT.md. On a CPU (--device cpu) it runs the same code, shorter.

    python bench.py                                # layers and models, sizes chosen for the device
    python bench.py --dtype=float32,bfloat16 --compile --device=cpu
    python bench.py --skip_layers --skip_models --decode --compile
    python bench.py --skip_layers --skip_models --decode --decode_profile --device=cpu
    python bench.py --device=cuda --suite=gpu --out=bench_gpu
    python bench.py --skip_models --batch_size=8 --seq_len=1024 --device=cpu
    python bench.py --skip_layers --skip_models --eval=wiki2 --data_dir=../shared/eval --eval_tokens=8192
    python bench.py --skip_layers --skip_models --export --iters=3
    python bench.py --skip_layers --skip_models --act --device=cpu
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn

from checkpoints import load_model
from common import (ACT_STEPS, CALIBRATION_TOKENS, UsageError, exit_on_usage_error, one_line, usage_errors, write_json,
                    write_text)
from devices import autocast_context, default_device, setup_device
from kron_shapes import matrix_shape
from kronecker import KroneckerEmbedding, KroneckerLinear
from model import GPT, MLP, GPTConfig

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
# the Monarch MLP (monarch.py) of 4 blocks has 1.25 times the 81M MLP's parameters, 6 blocks 0.83 times
MLP_PLANS = [("81M", dict(dim_1=768, dim_2=768, factors=1)), ("95M", dict(dim_1=384, dim_2=3072, factors=1)),
             ("monarch4", dict(monarch={"c_fc": 4, "c_proj": 4}))]
MODELS = [("GPT-2 124M (dense)", {}), ("Krony 81M (768 768 1)", dict(dim_1=768, dim_2=768, factors=1)),
          ("Krony 95M (384 3072 1)", dict(dim_1=384, dim_2=3072, factors=1)),
          ("Krony 48.5M (MLP, attention, embedding)", PLAN_50M)]


TABLES = []  # every table printed, for --out


class Table:
    """A markdown table printed row by row as it is measured (a long run shows its progress), kept for --out."""

    def __init__(self, title, columns):
        self.title, self.columns, self.rows = title, columns, []
        TABLES.append(self)
        print(f"\n{self.markdown()}", flush=True)

    def row(self, *values):
        self.rows.append(list(values))
        print(f"| {' | '.join(cell(v) for v in values)} |", flush=True)

    def markdown(self):
        lines = [f"## {self.title}", "", f"| {' | '.join(self.columns)} |", "|" + " --- |" * len(self.columns)]
        return "\n".join(lines + [f"| {' | '.join(cell(v) for v in row)} |" for row in self.rows])


def cell(value):
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def compiled(module, args):
    return torch.compile(module, backend=args.compile_backend)


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
    """Each layer's forward, and forward+backward, against the dense layer it replaces; the whole MLP too."""
    n_tokens = args.batch_size * args.seq_len
    columns = ["shape", "pass", "dtype", "dense ms", "Kronecker ms", "ratio"]
    columns += ["dense compiled ms", "Kronecker compiled ms", "ratio compiled"] if args.compile else []
    table = Table(f"Layers: {n_tokens} tokens ({args.batch_size}x{args.seq_len}), median of {args.iters}, time "
                  f"relative to dense (nn.Linear; for wte nn.Embedding + its tied lm_head; for mlp model.MLP), "
                  f"compile={args.compile}", columns + ["materialized kron ms", "materialized ratio"])
    shapes = [(name, "mlp", None) for name, _ in MLP_PLANS if name in args.layer_models] + \
        [shape for shape in LAYER_SHAPES if shape[0] in args.layer_models]
    for model_name, matrix, kron_shape in shapes:
        layers, x, grad_out, label = layer_pair(model_name, matrix, kron_shape, n_tokens, args.device)
        if args.compile:
            layers.update({"dense compiled": compiled(layers["dense"], args),
                           "kron compiled": compiled(layers["kron"], args)})
        for backward in (False, True):
            for dtype in args.dtypes:
                steps = {name: layer_step(layer, x, grad_out if backward else None, args.device, dtype)
                         for name, layer in layers.items()}
                ms = {name: 1e3 * s for name, s in median_seconds(steps, args.device, args.iters, args.warmup).items()}
                row = [label, "fwd+bwd" if backward else "fwd", dtype, ms["dense"], ms["kron"], ms["kron"] / ms["dense"]]
                if args.compile:
                    row += [ms["dense compiled"], ms["kron compiled"], ms["kron compiled"] / ms["dense compiled"]]
                materialized = ms.get("materialized")
                table.row(*row, materialized or "-", materialized / ms["dense"] if materialized else "-")


def layer_pair(model_name, matrix, kron_shape, n_tokens, device):
    """({"dense", "kron", and for one matrix "materialized": module}, input, output gradient, label)."""
    torch.manual_seed(0)
    if matrix == "mlp":
        plan = dict(MLP_PLANS)[model_name]
        layers = {"dense": MLP(GPTConfig(), 0), "kron": MLP(GPTConfig.from_settings(**plan), 0)}
        x = torch.randn(n_tokens, 768, device=device, requires_grad=True)
        grad_out = torch.randn(n_tokens, 768, device=device)
        structure = f"A {plan['dim_1']}x{plan['dim_2']}" if "dim_1" in plan else \
            f"Monarch {plan['monarch']['c_fc']} blocks"
        return ({name: layer.to(device) for name, layer in layers.items()}, x, grad_out,
                f"{model_name} MLP (c_fc, GELU, c_proj), {structure}")
    a_rows, a_cols, factors = kron_shape
    in_f, out_f = matrix_shape(matrix, 768, 50257)
    if matrix == "wte":  # inputs: token ids for the lookup, hidden states for lm_head
        kron = KroneckerEmbedding(in_f, out_f, a_rows, a_cols, factors).to(device)
        layers = {"dense": TiedEmbedding(in_f, out_f), "kron": LookupAndHead(kron)}
        x = (torch.randint(0, in_f, (n_tokens,), device=device),
             torch.randn(n_tokens, out_f, device=device, requires_grad=True))
        grad_out = (torch.randn(n_tokens, out_f, device=device), torch.randn(n_tokens, in_f, device=device))
    else:
        kron = KroneckerLinear(in_f, out_f, a_rows, a_cols, factors).to(device)
        layers = {"dense": nn.Linear(in_f, out_f), "kron": kron}
        x = torch.randn(n_tokens, in_f, device=device, requires_grad=True)
        grad_out = torch.randn(n_tokens, out_f, device=device)
    layers = {name: layer.to(device) for name, layer in layers.items()}
    layers["materialized"] = MaterializedKronecker(kron)
    return layers, x, grad_out, f"{model_name} {matrix} {in_f}x{out_f}, A {a_rows}x{a_cols}"


def layer_step(layer, x, grad_out, device, dtype):
    """layer(x) without an autograd graph, or layer(x).backward(grad_out) when grad_out is given."""
    def step():
        with autocast_context(device, dtype):
            if grad_out is None:
                with torch.no_grad():
                    layer(x)
            else:
                out = layer(x)
                torch.autograd.backward(out if isinstance(out, tuple) else (out,),
                                        grad_out if isinstance(grad_out, tuple) else (grad_out,))
    return step


def bench_models(args):
    modes = ["eager", "compiled"] if args.compile else ["eager"]
    table = Table(f"Models: training on {args.model_batch_size}x{args.model_seq_len} tokens per step (forward, "
                  f"backward, AdamW), generation of {args.gen_tokens} tokens after a {args.prompt_len}-token prompt "
                  f"(batch 1, no KV cache, eager), median of {args.iters}; time ratios against dense in the same dtype "
                  f"and mode", ["model", "parameters", "dtype", "mode", "train tokens/s", "step time ratio",
                            "generation ms/token", "ratio"])
    models = [(name, plan) for name, plan in MODELS if name.split(" (")[0] in args.models]
    for dtype in args.dtypes:
        train_steps, generate_steps, params = {}, {}, {}
        for name, plan in models:
            for mode in modes:
                train_steps[name, mode], generate, params[name] = model_steps(
                    GPTConfig.from_settings(n_layer=args.n_layer, **plan), args, dtype, mode == "compiled")
                if mode == "eager":
                    generate_steps[name] = generate
        train_s = median_seconds(train_steps, args.device, args.iters, args.warmup)
        generate_s = median_seconds(generate_steps, args.device, max(1, args.iters // 2), 1) if args.gen_tokens else {}
        dense = models[0][0]
        for (name, mode), seconds in train_s.items():
            tokens_per_s = args.model_batch_size * args.model_seq_len / seconds
            generation = ["-", "-"]
            if mode == "eager" and generate_s:
                generation = [1e3 * generate_s[name] / args.gen_tokens, generate_s[name] / generate_s[dense]]
            table.row(name, params[name], dtype, mode, tokens_per_s, seconds / train_s[dense, mode], *generation)


def model_steps(config, args, dtype, compile_model):
    """(one training step, one generation, parameters) of a randomly initialised GPT."""
    torch.manual_seed(0)
    device_type = args.device.split(":")[0]
    raw_model = GPT(config).to(args.device)
    model = compiled(raw_model, args) if compile_model else raw_model
    optimizer = raw_model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device_type)
    autocast = autocast_context(args.device, dtype)
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
        raw_model.eval()
        with autocast:
            raw_model.generate(prompt, args.gen_tokens, temperature=0)

    return train_step, generate, raw_model.get_num_params(non_embedding=False)


def gpt2_tokenizer():
    """transformers' GPT-2 tokenizer, which krony_to_gpt.py writes into an export."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained("gpt2")
    except Exception as e:
        raise UsageError(f"--export needs GPT-2's tokenizer files ({one_line(e)}): connect to the network once, or "
                         f"set HF_HUB_CACHE to a folder that holds them") from None


def bench_export(args, tokenizer):
    """krony_to_gpt.py's two exports of the 81M and 95M models (random weights): size on disk, parameters, and
    transformers' generate() with its key-value cache, factored against dense."""
    from transformers import AutoModelForCausalLM

    import krony_to_gpt
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


def read_eval_tokens(args):
    """--eval's tokens, read before any benchmark runs: a missing file or an unreachable hub fails in seconds."""
    import perplexity
    names = perplexity.resolve_datasets([args.eval])
    if len(names) != 1:
        raise UsageError(f"--eval {args.eval}: give one dataset (wiki103, wiki2, lambada or a .bin/.jsonl/.txt file)")
    if perplexity.dataset_vocab(names[0]) is not None:
        raise UsageError(f"--eval {args.eval} holds characters (a meta.json is beside it): GPT-2 124M reads GPT-2 "
                         f"tokens")
    tokens = perplexity.load_tokens(names[0], args.data_dir, args.eval_tokens)[0]
    if len(tokens) < 2:
        raise UsageError(f"--eval {args.eval} has {len(tokens)} token(s): perplexity needs at least 2")
    if tokens.max() >= GPTConfig().vocab_size:
        raise UsageError(f"--eval {args.eval} holds token id {tokens.max().item()}, beyond GPT-2's vocabulary: not "
                         f"GPT-2 tokens")
    return tokens


def bench_eval(args, tokens):
    """perplexity.py against plain_loop on a random GPT-2 124M: speed does not depend on the weights."""
    import perplexity
    from transformers import GPT2Config, GPT2LMHeadModel
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp_dir:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp_dir)
        hf_model = GPT2LMHeadModel.from_pretrained(tmp_dir, dtype=torch.float32).to(device).eval()
        model = load_model(tmp_dir, map_location=device).eval()
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
    student = compress(teacher, Plan.from_settings(config.n_embd, config.n_layer, config.vocab_size,
                                                   dim_1=768, dim_2=768, factors=1))
    calibration = torch.randint(config.vocab_size, (args.calibration_tokens // config.block_size, config.block_size))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fit_to_calibration(teacher, student, calibration, steps=args.act_steps, progress=True, device=args.device)
    seconds = time.perf_counter() - start
    peak = (f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB on the GPU" if args.device.startswith("cuda")
            else f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB resident")
    table = Table(f"init act: GPT-2 small's MLPs, 81M plan, {len(calibration) * config.block_size:,} calibration "
                  f"tokens, {args.act_steps} Adam steps per MLP", ["blocks", "seconds", "seconds per block",
                                                                    "12 blocks, minutes", "peak memory"])
    per_block = seconds / args.act_layers
    table.row(args.act_layers, seconds, per_block, 12 * per_block / 60, peak)


def decode_models(args):
    """{name: Hugging Face model, float32, on the device}: dense GPT-2 124M and DistilGPT2's shape as transformers
    builds them (random weights: the time does not depend on them), and krony's factored exports as transformers
    reads krony_to_gpt.py's folders back, remote code and all."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from krony_to_gpt import to_hf_factored
    torch.manual_seed(0)
    models = {"GPT-2 124M (dense)": GPT2LMHeadModel(GPT2Config(n_layer=args.n_layer)),
              f"DistilGPT2 shape ({args.n_layer // 2} blocks)": GPT2LMHeadModel(GPT2Config(n_layer=args.n_layer // 2))}
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in MODELS[1::2]:  # the 81M and the 48.5M models
            folder = os.path.join(tmp, f"export{len(models)}")
            os.makedirs(folder)
            to_hf_factored(GPT(GPTConfig.from_settings(n_layer=args.n_layer, **plan)), folder).save_pretrained(folder)
            models[name.replace("Krony", "krony export")] = AutoModelForCausalLM.from_pretrained(
                folder, trust_remote_code=True, dtype=torch.float32)
    return {name: model.to(args.device).eval() for name, model in models.items()}


def bench_decode(args):
    """Per-token latency of generate() with the KV cache; the models timed in turns, one cache kind at a time."""
    from transformers import CompileConfig
    models = decode_models(args)
    prompt = torch.randint(0, 50257, (1, args.prompt_len), generator=torch.Generator().manual_seed(1)).to(args.device)
    n_new = args.decode_tokens
    caches = {"dynamic": dict(), "static": dict(cache_implementation="static", disable_compile=True)}
    if args.decode_compile:
        # transformers compiles a static cache's forward by itself on GPUs; elsewhere it must be told to
        compile_config = CompileConfig(fullgraph=True, backend=args.compile_backend,
                                       mode="reduce-overhead" if args.device.startswith("cuda") else "default")
        compile_config._compile_all_devices = True
        caches["static, compiled"] = dict(cache_implementation="static", compile_config=compile_config)
    table = Table(f"Decode: generate() with the KV cache, batch 1, greedy, float32, {n_new} new tokens after a "
                  f"{args.prompt_len}-token prompt, median of {args.iters}, ratio against DistilGPT2's shape",
                  ["model", "parameters", "cache", "ms/token", "ratio"])
    distil = list(models)[1]

    def generate(model, **options):
        with torch.inference_mode():
            return model.generate(prompt, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                  attention_mask=torch.ones_like(prompt), pad_token_id=50256, **options)
    for cache, options in caches.items():
        seconds = median_seconds({name: lambda m=m, o=options: generate(m, **o) for name, m in models.items()},
                                 args.device, args.iters, args.warmup)
        for name, model in models.items():
            table.row(name, model.num_parameters(), cache, 1e3 * seconds[name] / n_new, seconds[name] / seconds[distil])
    if args.decode_profile:
        profile_decode(models, generate, n_new)


# --decode_profile's op groups: aten op names -> what they are in a GPT-2 decode step
DECODE_OPS = {"GEMMs": ("aten::mm", "aten::addmm"), "KV cache growth": ("aten::cat",),
              "attention kernel": ("aten::_scaled_dot_product",)}


def profile_decode(models, generate, n_new):
    """Where a decode step's time goes: torch.profiler's self CPU time (host time on a GPU) and calls per new
    token of one generate() with the dynamic cache (n_new forward passes, the prompt's first), by op group."""
    from torch.profiler import ProfilerActivity, profile
    table = Table(f"Decode profile: one generate() of {n_new} tokens, dynamic cache, torch.profiler self CPU time "
                  f"per new token, ms (calls)", ["model", "aten calls", "all ops ms", *DECODE_OPS])
    for name, model in models.items():
        generate(model)  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(model)
        events = prof.key_averages()
        groups = [[e for e in events if e.key.startswith(prefixes)] for prefixes in DECODE_OPS.values()]
        table.row(name, round(sum(e.count for e in events if e.key.startswith("aten::")) / n_new),
                  sum(e.self_cpu_time_total for e in events) / 1e3 / n_new,
                  *[f"{sum(e.self_cpu_time_total for e in group) / 1e3 / n_new:.3f} "
                    f"({sum(e.count for e in group) / n_new:g})" for group in groups])


def apply_suite(args):
    """--suite gpu: the prepared check of a GPU (under 5 minutes on one): the 81M MLP and train step against dense
    in bfloat16 (unless --dtype says otherwise), eager and compiled; act's fit of one block; decode with both caches,
    and its profile."""
    args.dtype = args.dtype or "bfloat16"
    args.compile, args.decode, args.decode_compile, args.decode_profile, args.act = True, True, False, True, True
    args.layer_models, args.models = "81M", "GPT-2 124M,Krony 81M"
    args.act_layers = 1
    if not args.device.startswith("cuda"):  # the same code, shorter
        args.batch_size, args.seq_len = args.batch_size or 1, args.seq_len or 128
        args.act_steps, args.calibration_tokens = min(args.act_steps, 5), min(args.calibration_tokens, 2048)


def write_tables(out, args):
    """OUT.json (every table's title, columns and rows, the machine and the command) and OUT.md."""
    header = dict(device=args.device, device_name=device_name(args.device), torch=torch.__version__,
                  command=" ".join(["python"] + sys.argv))
    results = dict(header, tables=[dict(title=t.title, columns=t.columns, rows=t.rows) for t in TABLES])
    markdown = [f"# bench.py on {args.device} ({header['device_name']}), torch {torch.__version__}", "",
                f"`{header['command']}`", ""] + [t.markdown() + "\n" for t in TABLES]
    write_json(results, f"{out}.json")
    write_text("\n".join(markdown) + "\n", f"{out}.md")
    print(f"\nwrote {out}.json and {out}.md")


def device_name(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    import platform
    name = platform.processor() or platform.machine()
    try:  # Linux names the CPU model (lscpu's "Model name") only here
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


class OneLineParser(argparse.ArgumentParser):
    """argparse's own mistakes (an unknown flag, a value of the wrong type) told in one line, as every other."""

    def error(self, message):
        raise UsageError(message)


# counts that must be at least 1 (at least 0 for MAY_BE_ZERO), checked before the defaults fill the unset ones
COUNTS = ("batch_size", "seq_len", "model_batch_size", "model_seq_len", "prompt_len", "iters", "threads",
          "export_new_tokens", "eval_batch_size", "act_layers", "act_steps", "decode_tokens", "n_layer")
MAY_BE_ZERO = ("warmup", "gen_tokens")


def check_args(args):
    """Refuse every mistake in the arguments with a UsageError, before any benchmark runs; fill in the defaults
    that depend on the device and on --suite."""
    for name in COUNTS + MAY_BE_ZERO:
        value, least = getattr(args, name), 0 if name in MAY_BE_ZERO else 1
        if value is not None and value < least:
            raise UsageError(f"--{name} must be at least {least}, got {value}")
    if args.eval_tokens < 2:
        raise UsageError(f"--eval_tokens must be at least 2 (one to predict from, one to predict), got "
                         f"{args.eval_tokens}")
    with usage_errors("--device"):
        args.device = str(setup_device(args.device))
    gpu = args.device.startswith(("cuda", "mps"))
    args.decode_compile = args.compile
    if args.suite:
        apply_suite(args)
    if args.decode_profile and not args.decode:
        raise UsageError("--decode_profile profiles the decode section: add --decode")
    args.dtypes = (args.dtype or "float32").split(",")
    unknown = sorted(set(args.dtypes) - {"float32", "bfloat16", "float16"})
    if unknown:
        raise UsageError(f"--dtype {','.join(unknown)}: expected float32, bfloat16 or float16")
    args.layer_models, args.models = args.layer_models.split(","), args.models.split(",")
    for flag, names, known in (("--layer_models", args.layer_models, [s[0] for s in LAYER_SHAPES] +
                                [name for name, _ in MLP_PLANS]),
                               ("--models", args.models, [name.split(" (")[0] for name, _ in MODELS])):
        unknown = [name for name in names if name not in known]
        if unknown:
            raise UsageError(f"{flag} {','.join(unknown)}: expected some of {','.join(dict.fromkeys(known))}")
    if args.compile and args.compile_backend not in torch.compiler.list_backends(exclude_tags=()):
        raise UsageError(f"--compile_backend {args.compile_backend} is not a torch.compile backend: inductor, eager, "
                         f"aot_eager, or another of torch.compiler.list_backends()")
    if args.data_dir and not args.eval:
        raise UsageError("--data_dir is where --eval reads its dataset: add --eval")
    if args.data_dir and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data_dir {args.data_dir} is not a directory")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UsageError(f"--out {args.out}: no such folder {os.path.dirname(os.path.abspath(args.out))}")

    args.batch_size, args.seq_len = args.batch_size or 8, args.seq_len or 1024
    args.model_batch_size = args.model_batch_size or (8 if gpu else 1)
    args.model_seq_len = args.model_seq_len or (1024 if gpu else 256)
    args.gen_tokens = (100 if gpu else 20) if args.gen_tokens is None else args.gen_tokens
    args.decode_tokens = args.decode_tokens or (128 if gpu else 64)
    args.iters = args.iters or (20 if gpu else 5)
    context = GPTConfig().block_size  # GPT-2's, of every model timed
    if args.model_seq_len > context:
        raise UsageError(f"--model_seq_len {args.model_seq_len} is longer than GPT-2's context of {context}")
    for section, new_tokens in (("decode", args.decode_tokens), ("export", args.export_new_tokens)):
        if getattr(args, section) and args.prompt_len + new_tokens > context:
            raise UsageError(f"--{section}: --prompt_len {args.prompt_len} and {new_tokens} new tokens do not fit "
                             f"GPT-2's context of {context}")
    if args.decode and args.n_layer < 2:
        raise UsageError("--decode times DistilGPT2's shape, half of --n_layer blocks: --n_layer must be at least 2")
    if args.act and args.calibration_tokens < context:
        raise UsageError(f"--calibration_tokens must be at least GPT-2's context of {context}, got "
                         f"{args.calibration_tokens}")


@exit_on_usage_error("bench.py")
def main(argv=None):
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--dtype", help="one or more of float32,bfloat16,float16 (default: float32; --suite: bfloat16)")
    parser.add_argument("--batch_size", type=int, help="layer benchmark: sequences (default: 8; --suite on CPU: 1)")
    parser.add_argument("--seq_len", type=int, help="layer benchmark: tokens per sequence (default: 1024; --suite on "
                                                    "CPU: 128)")
    parser.add_argument("--layer_models", default="81M,95M,<60M,monarch4", help="layer benchmark: the models' shapes")
    parser.add_argument("--models", default=",".join(name.split(" (")[0] for name, _ in MODELS),
                        help="model benchmark: which (the first is the dense reference)")
    parser.add_argument("--model_batch_size", type=int, default=None, help="default: 8 on GPU, 1 on CPU")
    parser.add_argument("--model_seq_len", type=int, default=None, help="default: 1024 on GPU, 256 on CPU")
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--gen_tokens", type=int, default=None, help="default: 100 on GPU, 20 on CPU; 0: none")
    parser.add_argument("--iters", type=int, default=None, help="timed repetitions (default: 20 on GPU, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time every model torch.compiled")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile's backend")
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
    parser.add_argument("--calibration_tokens", type=int, default=CALIBRATION_TOKENS, help="--act: tokens")
    parser.add_argument("--decode", action="store_true", help="also time generate() with the KV cache (section 6)")
    parser.add_argument("--decode_profile", action="store_true",
                        help="--decode: also profile one generate() per model (self CPU time by op group)")
    parser.add_argument("--decode_tokens", type=int, default=None, help="--decode: new tokens (128 GPU, 64 CPU)")
    parser.add_argument("--n_layer", type=int, default=12,
                        help="models and decode: blocks of every full-depth model (DistilGPT2's shape has half); "
                             "fewer: a quick check of the code")
    parser.add_argument("--suite", choices=["gpu"], help="the prepared GPU check (see above); implies its sections")
    parser.add_argument("--out", help="write the tables to OUT.json and OUT.md")
    args = parser.parse_args(argv)
    check_args(args)
    tokens = read_eval_tokens(args) if args.eval else None  # what could still fail, before any benchmark runs
    tokenizer = gpt2_tokenizer() if args.export else None
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"# bench.py on {args.device} ({device_name(args.device)}), torch {torch.__version__}")
    print(f"command: python {' '.join(sys.argv)}")
    if not args.skip_layers:
        bench_layers(args)
    if not args.skip_models:
        bench_models(args)
    if args.eval:
        bench_eval(args, tokens)
    if args.export:
        bench_export(args, tokenizer)
    if args.act:
        bench_act(args)
    if args.decode:
        bench_decode(args)
    if args.out:
        write_tables(args.out, args)


if __name__ == "__main__":
    main()
