"""
Step 1 of the pipeline: choose Kronecker factor shapes, and initialise a compressed GPT-2 from a pretrained one.

    python kron_decompose.py 768 768 1 --model gpt2 --init vl    # writes checks/krony_gpt2_768_768_1_vl.pt
    python kron_decompose.py --list --target 81M                 # every valid shape; needs no weights

Every c_fc and c_proj of the teacher (in x @ W orientation, W of shape (in, out)) becomes
W_hat = sum_r A_r (x) B_r with the shapes of model.GPTConfig; every other weight is copied. Initialisations:
  vl       Van Loan-Pitsianis nearest Kronecker sum: the Frobenius-optimal W_hat (Eckart-Young).
  vl_norm  vl rescaled so that ||W_hat||_F = ||W||_F (the paper's modified Van Loan).
  prune    the paper's pruning init: A_r keeps every k-th row (or column) of W, B_r is a one-hot vector.
  random   the scratch init of GPT(config) (W_hat entries of std 0.02, c_proj scaled as in GPT-2).
A teacher that is itself a Kronecker checkpoint is decomposed through its materialized weights, so a model
can be re-factored into another shape. The decompositions themselves are model.compress (train.py uses them
too); this file is the command line and the shape listing, which needs no torch and answers at once.
"""

import argparse
import os
import re
import sys
import time

from kron_shapes import divisors, kron_flops, max_factors

INITS = ("vl", "vl_norm", "prune", "random")  # model.INITS, named here so that --list needs no torch


# ----------------------------------------------------------------------------------------------------
# Listing: arithmetic only, no models are built.

def count_params(n_embd, dim_1=None, dim_2=None, factors=None, n_layer=12, vocab_size=50257, block_size=1024,
                 bias=True):
    """(parameters, parameters without wpe) of GPT(GPTConfig(...)); dim_1 = None means dense MLPs."""
    n, hidden, b = n_embd, 4 * n_embd, int(bias)
    if factors is None:
        mlp_weights = 2 * n * hidden
    else:
        mlp_weights = 2 * factors * (dim_1 * dim_2 + (n // dim_1) * (hidden // dim_2))  # c_fc, c_proj alike
    layer = (2 * (n + n * b)  # ln_1, ln_2
             + 4 * n * n + 4 * n * b  # c_attn, attn.c_proj
             + mlp_weights + (hidden + n) * b)  # mlp
    total = vocab_size * n + block_size * n + n_layer * layer + (n + n * b)  # wte (tied lm_head), wpe, h, ln_f
    return total, total - block_size * n


def mlp_flops(n_embd, dim_1, dim_2, factors):
    """Multiply-adds per token of one c_fc and one c_proj, each in its cheaper contraction order."""
    hidden = 4 * n_embd
    return min(kron_flops(n_embd, hidden, dim_1, dim_2, factors)) + min(kron_flops(hidden, n_embd, dim_2, dim_1,
                                                                                   factors))


def model_flops(n_embd, mlp, n_layer=12, vocab_size=50257):
    """Multiply-adds per token in all weight matrices (c_attn, attn.c_proj, the MLP, lm_head); attention's
    score and value products, which grow with the context, are left out."""
    return n_layer * (4 * n_embd * n_embd + mlp) + n_embd * vocab_size


def list_shapes(n_embd=768, factors_list=(1,), n_layer=12, vocab_size=50257, block_size=1024):
    """A row for every valid (dim_1, dim_2, factors), smallest model first."""
    hidden = 4 * n_embd
    dense_mlp = 2 * n_embd * hidden
    dense_model = model_flops(n_embd, dense_mlp, n_layer, vocab_size)
    rows = []
    for dim_1 in divisors(n_embd):
        for dim_2 in divisors(hidden):
            for factors in factors_list:
                if factors > max_factors(n_embd, hidden, dim_1, dim_2):
                    continue
                params, params_no_wpe = count_params(n_embd, dim_1, dim_2, factors, n_layer, vocab_size, block_size)
                mlp = mlp_flops(n_embd, dim_1, dim_2, factors)
                rows.append(dict(
                    dim_1=dim_1, dim_2=dim_2, factors=factors,
                    a_shape=f"{dim_1}x{dim_2}", b_shape=f"{n_embd // dim_1}x{hidden // dim_2}",
                    matrix_params=factors * (dim_1 * dim_2 + (n_embd // dim_1) * (hidden // dim_2)),
                    params=params, params_no_wpe=params_no_wpe,
                    mlp_flops=mlp / dense_mlp, model_flops=model_flops(n_embd, mlp, n_layer, vocab_size) / dense_model,
                ))
    rows.sort(key=lambda r: (r["params"], r["dim_1"], r["dim_2"], r["factors"]))
    return rows


def mark_target(rows, target):
    """Indices of the rows closest to `target` parameters without wpe, ties included (the paper names its models
    by this count: 81M is 81,186,144). Many shapes share a count, so several rows are usually marked."""
    distance = [abs(r["params_no_wpe"] - target) for r in rows]
    return [i for i, d in enumerate(distance) if d == min(distance)]


def format_listing(rows, n_embd, n_layer, target=None):
    dense, dense_no_wpe = count_params(n_embd, n_layer=n_layer)
    lines = [f"dense: {dense:,} parameters, {dense_no_wpe:,} without wpe (n_embd={n_embd}, n_layer={n_layer}); "
             f"c_fc is {n_embd}x{4 * n_embd} (A (x) B), c_proj its transpose (A^T (x) B^T)",
             "FLOPs: multiply-adds per token relative to dense (MLP: c_fc and c_proj, each in its cheaper order; "
             "model: all weight matrices)",
             f"{'dim_1':>5} {'dim_2':>5} {'factors':>7} {'A (c_fc)':>10} {'B (c_fc)':>10} {'per matrix':>12} "
             f"{'parameters':>12} {'without wpe':>12} {'MLP FLOPs':>9} {'model FLOPs':>11}"]
    marked = set(mark_target(rows, target)) if target else set()
    for i, r in enumerate(rows):
        mark = f"  <- {target / 1e6:g}M" if i in marked else ""
        lines.append(f"{r['dim_1']:>5} {r['dim_2']:>5} {r['factors']:>7} {r['a_shape']:>10} {r['b_shape']:>10} "
                     f"{r['matrix_params']:>12,} {r['params']:>12,} {r['params_no_wpe']:>12,} "
                     f"{r['mlp_flops']:>9.1%} {r['model_flops']:>11.1%}{mark}")
    lines.append(f"{len(rows)} valid shapes" + (f"; {len(marked)} marked as closest to {target:,} parameters "
                                                "without wpe" if target else ""))
    return "\n".join(lines)


def parse_size(text):
    """'81M' -> 81_000_000; also K, B and plain integers."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMbB]?)\s*", text)
    if not match:
        raise ValueError(f"--target {text!r} is not a size like 81M, 95.3M or 81186144")
    number, unit = match.groups()
    return round(float(number) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[unit.lower()])


# ----------------------------------------------------------------------------------------------------
# Command line

def fail(message):
    """A user mistake: one line on stderr and exit status 2, as argparse does."""
    print(f"kron_decompose.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def default_out(source, dim_1, dim_2, factors, init):
    name = os.path.basename(os.path.normpath(source))
    name = re.sub(r"\.(pt|pth|ckpt)$", "", name)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    return os.path.join("checks", f"krony_{name}_{dim_1}_{dim_2}_{factors}_{init}.pt")


def decompose(args):
    """Decompose --model into the given shape, report the errors and write the checkpoint."""
    # torch takes seconds to import: only now, so that --list and argument errors answer at once
    import torch
    from model import compress, load_model, make_checkpoint, mlp_layers, save_checkpoint, weight_of

    dim_1, dim_2, factors = args.dim_1, args.dim_2, args.n_factors
    out = args.out or default_out(args.model, dim_1, dim_2, factors, args.init)
    if os.path.isdir(out):
        fail(f"--out {out} is a directory; give a file name")
    try:
        teacher = load_model(args.model)
    except Exception as e:  # any failure to open the user's --model is reported, not raised
        fail(f"cannot load --model {args.model}: {' '.join(str(e).split())}")
    c = teacher.config
    torch.manual_seed(1337)  # --init random is reproducible
    t0 = time.time()
    try:
        student = compress(teacher, dim_1, dim_2, factors, args.init, progress=True)
    except ValueError as e:
        fail(f"{args.model}: {e}")
    errors = {}  # ||W - W_hat|| / ||W|| of every MLP matrix
    with torch.no_grad():
        for (name, source), (_, target) in zip(mlp_layers(teacher), mlp_layers(student)):
            W = weight_of(source).double()
            errors[name] = ((W - weight_of(target).double()).norm() / W.norm()).item()
    seconds = time.time() - t0

    teacher_params, student_params = teacher.get_num_params(False), student.get_num_params(False)
    kind = "Kronecker" if c.is_kronecker else "dense"
    print(f"teacher {args.model} ({kind}): {teacher_params:,} parameters, {teacher.get_num_params():,} without wpe")
    print(f"krony {dim_1} {dim_2} {factors} ({args.init}): {student_params:,} parameters, "
          f"{student.get_num_params():,} without wpe: {student_params / teacher_params:.1%} of the teacher "
          f"({teacher_params / student_params:.2f}x smaller); MLP FLOPs per token "
          f"{mlp_flops(c.n_embd, dim_1, dim_2, factors) / (8 * c.n_embd ** 2):.1%} of dense")
    print(f"c_fc: A {dim_1}x{dim_2}, B {c.n_embd // dim_1}x{4 * c.n_embd // dim_2}; "
          f"c_proj: A {dim_2}x{dim_1}, B {4 * c.n_embd // dim_2}x{c.n_embd // dim_1}; {factors} factor(s), "
          f"built in {seconds:.1f}s")
    print("relative Frobenius error ||W - W_hat|| / ||W||:")
    print(f"{'layer':>5} {'c_fc':>8} {'c_proj':>8}")
    for i in range(c.n_layer):
        print(f"{i:>5} {errors[f'h.{i}.c_fc']:>8.4f} {errors[f'h.{i}.c_proj']:>8.4f}")
    print(f"{'mean':>5} {sum(errors[f'h.{i}.c_fc'] for i in range(c.n_layer)) / c.n_layer:>8.4f} "
          f"{sum(errors[f'h.{i}.c_proj'] for i in range(c.n_layer)) / c.n_layer:>8.4f}")

    init_info = {"teacher": args.model, "method": args.init, "dim_1": dim_1, "dim_2": dim_2, "factors": factors,
                 "teacher_params": teacher_params, "params": student_params, "errors": errors}
    try:
        save_checkpoint(make_checkpoint(student, init=init_info), out)
    except OSError as e:
        fail(f"cannot write --out {out}: {e}")
    print(f"wrote {out}")
    print(f"next: python train.py config/train_gpt2.py --init_from={out} --dim_1={dim_1} --dim_2={dim_2} "
          f"--factors={factors}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dim_1", type=int, nargs="?", help="c_fc's A has dim_1 rows (must divide n_embd)")
    parser.add_argument("dim_2", type=int, nargs="?", help="c_fc's A has dim_2 columns (must divide 4*n_embd)")
    parser.add_argument("n_factors", type=int, nargs="?", help="number of Kronecker products summed per matrix")
    parser.add_argument("--model", default="gpt2",
                        help="teacher: a hub name, a local Hugging Face GPT-2 directory, or a krony checkpoint")
    parser.add_argument("--init", default="vl", choices=INITS)
    parser.add_argument("--out", help="checkpoint to write (default checks/krony_MODEL_DIM1_DIM2_FACTORS_INIT.pt)")
    parser.add_argument("--list", action="store_true", help="list every valid shape instead; needs no weights")
    parser.add_argument("--n_embd", type=int, default=768, help="--list: model width")
    parser.add_argument("--n_layer", type=int, default=12, help="--list: number of blocks")
    parser.add_argument("--factors", default="1", help="--list: comma-separated factor counts, e.g. 1,2,4")
    parser.add_argument("--target", help="--list: mark the shapes closest to this size, e.g. 81M")
    args = parser.parse_args(argv)
    shape = (args.dim_1, args.dim_2, args.n_factors)

    if args.list:
        if any(v is not None for v in shape):
            fail("--list takes no DIM_1 DIM_2 N_FACTORS")
        try:
            factors_list = sorted({int(f) for f in args.factors.split(",")})
        except ValueError:
            fail(f"--factors {args.factors!r} is not a comma-separated list of integers")
        if args.n_embd < 1 or args.n_layer < 1 or min(factors_list) < 1:
            fail("--n_embd, --n_layer and --factors must be positive")
        try:
            target = parse_size(args.target) if args.target else None
        except ValueError as e:
            fail(str(e))
        rows = list_shapes(args.n_embd, factors_list, args.n_layer)
        print(format_listing(rows, args.n_embd, args.n_layer, target))
        return
    if any(v is None for v in shape):
        fail("give DIM_1 DIM_2 N_FACTORS, or --list to see the valid ones")
    decompose(args)


if __name__ == "__main__":
    main()
