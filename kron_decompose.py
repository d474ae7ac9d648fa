"""
Step 1 of the pipeline: choose Kronecker factor shapes, and initialise a compressed GPT-2 from a pretrained one.

    python kron_decompose.py 768 768 1 --model gpt2 --init vl    # writes checks/krony_gpt2_768_768_1_vl.pt
    python kron_decompose.py 768 768 1 --kron c_attn=768x768:1 --kron attn_proj=384x384:1 --kron wte=50257x384:1 \\
        --layers odd                                             # MLP, attention and embedding, odd blocks
    python kron_decompose.py --list --target 81M                 # every valid MLP shape; needs no weights
    python kron_decompose.py --list --matrix c_attn              # ... or of any other factorable matrix

DIM_1 DIM_2 N_FACTORS factor the MLP (c_fc's A is DIM_1 x DIM_2, c_proj's its transpose); --kron NAME=RxC:F
factors any of wte (vocab x n_embd, tied to lm_head), c_attn (n_embd x 3 n_embd), attn_proj (n_embd x n_embd),
c_fc (n_embd x 4 n_embd), c_proj (4 n_embd x n_embd) with F products of an R x C matrix A (x @ W orientation);
--layers picks the blocks. Every factored matrix of the teacher becomes W_hat = sum_r A_r (x) B_r, every other
weight is copied. Initialisations:
  vl       Van Loan-Pitsianis nearest Kronecker sum: the Frobenius-optimal W_hat (Eckart-Young).
  vl_norm  vl rescaled so that ||W_hat||_F = ||W||_F (the paper's modified Van Loan).
  prune    the paper's pruning init: A_r keeps every k-th row (or column) of W, B_r is a one-hot vector.
  random   the scratch init of GPT(config) (W_hat entries of std 0.02, c_proj scaled as in GPT-2).
A teacher that is itself a Kronecker checkpoint is decomposed through its materialized weights, so a model
can be re-factored into another plan. The decompositions are compress.py (train.py uses them too); this file
is the command line and the shape listing, which needs no torch and answers at once.
"""

import argparse
import os
import re
import time

from common import UsageError, exit_on_usage_error, one_line
from kron_shapes import (BLOCK_MATRICES, INIT_NAMES, MATRICES, PART_OF, check_init, count_params, list_shapes,
                         matrix_shape, resolve_plan, weight_params)


# ----------------------------------------------------------------------------------------------------
# Listing: arithmetic only, no models are built.

def mark_target(rows, target):
    """Indices of the rows closest to `target` parameters without wpe, ties included (the paper names its models
    by this count: 81M is 81,186,144). Many shapes share a count, so several rows are usually marked."""
    distance = [abs(r["params_no_wpe"] - target) for r in rows]
    return [i for i, d in enumerate(distance) if d == min(distance)]


def format_listing(rows, n_embd, n_layer, target=None, matrix="mlp", vocab_size=50257):
    dense, dense_no_wpe = count_params(n_embd, n_layer=n_layer, vocab_size=vocab_size)
    name = "c_fc" if matrix == "mlp" else matrix
    rows_dim, cols_dim = matrix_shape(name, n_embd, vocab_size)
    what = (f"c_fc is {rows_dim}x{cols_dim} (A (x) B), c_proj its transpose (A^T (x) B^T)" if matrix == "mlp"
            else f"{matrix} is {rows_dim}x{cols_dim} (A (x) B)" + ("" if matrix == "wte" else ", in every block"))
    flops = "MLP" if matrix == "mlp" else matrix
    lines = [f"dense: {dense:,} parameters, {dense_no_wpe:,} without wpe (n_embd={n_embd}, n_layer={n_layer}); {what}",
             f"FLOPs: multiply-adds per token relative to dense ({flops}: in its cheaper order"
             f"{', as lm_head' if matrix == 'wte' else ''}; model: all weight matrices)",
             f"{'dim_1':>5} {'dim_2':>5} {'factors':>7} {'A (' + name + ')':>12} {'B (' + name + ')':>12} "
             f"{'per matrix':>12} {'parameters':>12} {'without wpe':>12} {flops + ' FLOPs':>11} {'model FLOPs':>11}"]
    marked = set(mark_target(rows, target)) if target else set()
    for i, r in enumerate(rows):
        mark = f"  <- {target / 1e6:g}M" if i in marked else ""
        lines.append(f"{r['dim_1']:>5} {r['dim_2']:>5} {r['factors']:>7} {r['a_shape']:>12} {r['b_shape']:>12} "
                     f"{r['matrix_params']:>12,} {r['params']:>12,} {r['params_no_wpe']:>12,} "
                     f"{r['matrix_flops']:>11.1%} {r['model_flops']:>11.1%}{mark}")
    lines.append(f"{len(rows)} valid shapes" + (f"; {len(marked)} marked as closest to {target:,} parameters "
                                                "without wpe" if target else ""))
    return "\n".join(lines)


def parse_size(text):
    """'81M' -> 81_000_000; also K, B and plain integers."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMbB]?)\s*", text)
    if not match:
        raise UsageError(f"--target {text!r} is not a size like 81M, 95.3M or 81186144")
    number, unit = match.groups()
    return round(float(number) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[unit.lower()])


def parse_kron(entries):
    """{name: (a_rows, a_cols, factors)} from --kron NAME=ROWSxCOLS:FACTORS arguments."""
    kron = {}
    for entry in entries:
        match = re.fullmatch(r"(\w+)=(\d+)x(\d+):(\d+)", entry.strip())
        if not match:
            raise UsageError(f"--kron {entry!r} is not NAME=ROWSxCOLS:FACTORS, e.g. c_attn=768x768:1")
        name, shape = match.group(1), tuple(int(v) for v in match.groups()[1:])
        if name not in MATRICES:
            raise UsageError(f"--kron {entry!r}: {name!r} is not one of {', '.join(MATRICES)}")
        if name in kron:
            raise UsageError(f"--kron names {name} twice")
        kron[name] = shape
    return kron


# ----------------------------------------------------------------------------------------------------
# Command line

def default_out(source, plan, init):
    name = os.path.basename(os.path.normpath(source))
    name = re.sub(r"\.(pt|pth|ckpt)$", "", name)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    if set(plan) == {"c_fc", "c_proj"} and plan["c_proj"] == plan["c_fc"][1::-1] + plan["c_fc"][2:]:
        shape = "_".join(map(str, plan["c_fc"]))  # the shorthand's name: krony_gpt2_768_768_1_vl.pt
    else:
        shape = "_".join(f"{k}-{a}x{b}-{f}" for k, (a, b, f) in plan.items())
    return os.path.join("checks", f"krony_{name}_{shape}_{init}.pt")


def decompose(args, shorthand, kron):
    """Decompose --model by the plan, report the errors and write the checkpoint."""
    # torch takes seconds to import: only now, so that --list and argument errors answer at once
    import torch
    from compress import compress
    from model import factorable_matrices, load_model, load_model_config, make_checkpoint, save_checkpoint, weight_of

    plan_args = dict(zip(("dim_1", "dim_2", "factors"), shorthand), kron=kron or None, kron_layers=args.layers)

    def load(read):
        try:
            return read(args.model)
        except Exception as e:  # any failure to open the user's --model is reported, not raised
            raise UsageError(f"cannot load --model {args.model}: {one_line(e)}") from None

    shape = load(load_model_config)  # the plan is checked against the teacher's config, before its weights load
    try:
        plan, layers = resolve_plan(shape.n_embd, shape.n_layer, shape.vocab_size, **plan_args)
        check_init(plan, args.init, shape.n_embd, shape.vocab_size)
    except ValueError as e:
        raise UsageError(f"{args.model}: {e}") from None
    out = args.out or default_out(args.model, plan, args.init)
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a directory; give a file name")
    teacher = load(load_model)
    torch.manual_seed(1337)  # --init random is reproducible
    t0 = time.time()
    student = compress(teacher, args.init, progress=True, **plan_args)
    errors = {}  # ||W - W_hat|| / ||W|| of every factored matrix, "wte" and "h.<layer>.<name>"
    with torch.no_grad():
        for (name, layer, source), (_, _, target) in zip(factorable_matrices(teacher), factorable_matrices(student)):
            if student.config.factored(name, layer):
                W = weight_of(source).double()
                key = name if layer is None else f"h.{layer}.{name}"
                errors[key] = ((W - weight_of(target).double()).norm() / W.norm()).item()
    seconds = time.time() - t0
    report(args, teacher, student, plan, layers, errors, seconds)

    init_info = {"teacher": args.model, "method": args.init, "dim_1": shorthand[0], "dim_2": shorthand[1],
                 "factors": shorthand[2], "kron": plan, "kron_layers": list(layers),
                 "teacher_params": teacher.get_num_params(False), "params": student.get_num_params(False),
                 "errors": errors}
    try:
        save_checkpoint(make_checkpoint(student, init=init_info), out)
    except OSError as e:
        raise UsageError(f"cannot write --out {out}: {e}") from None
    print(f"wrote {out}")
    if shorthand[0] is not None and not kron and args.layers == "all":
        settings = f"--dim_1={shorthand[0]} --dim_2={shorthand[1]} --factors={shorthand[2]}"
    else:
        settings = f'--kron="{dict(plan)}" --kron_layers={args.layers}'
    print(f"next: python train.py config/train_gpt2.py --init_from={out} {settings}")


def report(args, teacher, student, plan, layers, errors, seconds):
    c = teacher.config
    teacher_params, student_params = teacher.get_num_params(False), student.get_num_params(False)
    kind = "Kronecker" if c.is_kronecker else "dense"
    print(f"teacher {args.model} ({kind}): {teacher_params:,} parameters, {teacher.get_num_params():,} without wpe")
    print(f"krony ({args.init}): {student_params:,} parameters, {student.get_num_params():,} without wpe: "
          f"{student_params / teacher_params:.1%} of the teacher ({teacher_params / student_params:.2f}x smaller), "
          f"built in {seconds:.1f}s; blocks {', '.join(map(str, layers))}")
    print(f"{'matrix':>9} {'part':>9} {'W':>12} {'A':>11} {'B':>9} {'factors':>7} {'mean error':>10} "
          f"{'parameters':>13} {'saved':>13}")
    for name, shape in plan.items():
        copies = 1 if name == "wte" else len(layers)
        in_features, out_features = matrix_shape(name, c.n_embd, c.vocab_size)
        dense = weight_params(name, None, c.n_embd, c.vocab_size) * copies
        factored = weight_params(name, shape, c.n_embd, c.vocab_size) * copies
        mean = sum(v for k, v in errors.items() if k.split(".")[-1] == name) / copies
        print(f"{name:>9} {PART_OF[name]:>9} {f'{in_features}x{out_features}':>12} "
              f"{f'{shape[0]}x{shape[1]}':>11} {f'{in_features // shape[0]}x{out_features // shape[1]}':>9} "
              f"{shape[2]:>7} {mean:>10.4f} {factored:>13,} {dense - factored:>13,}")
    print(f"{'total':>9} {'':>9} {'':>12} {'':>11} {'':>9} {'':>7} {'':>10} {student_params:>13,} "
          f"{teacher_params - student_params:>13,}")
    block_names = [name for name in BLOCK_MATRICES if name in plan]
    if block_names:
        print("relative Frobenius error ||W - W_hat|| / ||W|| per block:")
        print(f"{'layer':>5} " + " ".join(f"{name:>9}" for name in block_names))
        for i in layers:
            print(f"{i:>5} " + " ".join(f"{errors[f'h.{i}.{name}']:>9.4f}" for name in block_names))
    if "wte" in plan:
        print(f"relative Frobenius error of wte: {errors['wte']:.4f}")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dim_1", type=int, nargs="?", help="c_fc's A has dim_1 rows (must divide n_embd)")
    parser.add_argument("dim_2", type=int, nargs="?", help="c_fc's A has dim_2 columns (must divide 4*n_embd)")
    parser.add_argument("n_factors", type=int, nargs="?", help="number of Kronecker products summed per matrix")
    parser.add_argument("--kron", action="append", default=[], metavar="NAME=ROWSxCOLS:FACTORS",
                        help=f"factor another matrix ({', '.join(MATRICES)}); repeat for several")
    parser.add_argument("--layers", default="all", help="blocks whose matrices are factored: all, odd, even or "
                                                        "a list like 0,2,4 (default all)")
    parser.add_argument("--model", default="gpt2",
                        help="teacher: a hub name, a local Hugging Face GPT-2 directory, or a krony checkpoint")
    parser.add_argument("--init", default="vl", choices=INIT_NAMES)
    parser.add_argument("--out", help="checkpoint to write (default checks/krony_MODEL_SHAPE_INIT.pt)")
    parser.add_argument("--list", action="store_true", help="list every valid shape instead; needs no weights")
    parser.add_argument("--matrix", default="mlp", choices=("mlp",) + MATRICES,
                        help="--list: the matrix whose shapes to list (default mlp: c_fc, c_proj its transpose)")
    parser.add_argument("--n_embd", type=int, default=768, help="--list: model width")
    parser.add_argument("--n_layer", type=int, default=12, help="--list: number of blocks")
    parser.add_argument("--vocab_size", type=int, default=50257, help="--list: vocabulary")
    parser.add_argument("--factors", default="1", help="--list: comma-separated factor counts, e.g. 1,2,4")
    parser.add_argument("--target", help="--list: mark the shapes closest to this size, e.g. 81M")
    return parser


@exit_on_usage_error("kron_decompose.py")
def main(argv=None):
    args = build_parser().parse_args(argv)
    shorthand = (args.dim_1, args.dim_2, args.n_factors)

    if args.list:
        if any(v is not None for v in shorthand) or args.kron:
            raise UsageError("--list takes no DIM_1 DIM_2 N_FACTORS nor --kron")
        try:
            factors_list = sorted({int(f) for f in args.factors.split(",")})
        except ValueError:
            raise UsageError(f"--factors {args.factors!r} is not a comma-separated list of integers") from None
        if min(args.n_embd, args.n_layer, args.vocab_size, *factors_list) < 1:
            raise UsageError("--n_embd, --n_layer, --vocab_size and --factors must be positive")
        target = parse_size(args.target) if args.target else None
        rows = list_shapes(args.n_embd, factors_list, args.n_layer, args.vocab_size, name=args.matrix)
        print(format_listing(rows, args.n_embd, args.n_layer, target, args.matrix, args.vocab_size))
        return
    kron = parse_kron(args.kron)
    if any(v is None for v in shorthand) and not (kron and all(v is None for v in shorthand)):
        raise UsageError("give DIM_1 DIM_2 N_FACTORS, or --kron NAME=ROWSxCOLS:FACTORS, or --list to see the "
                         "valid shapes")
    if any(v is not None and v < 1 for v in shorthand) or any(min(shape) < 1 for shape in kron.values()):
        raise UsageError("shapes and factor counts must be positive")
    decompose(args, shorthand, kron)


if __name__ == "__main__":
    main()
