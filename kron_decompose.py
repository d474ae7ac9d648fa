"""
Step 1 of the pipeline: choose Kronecker factor shapes, and initialise a compressed GPT-2 from a pretrained one.

    python kron_decompose.py 768 768 1 --model gpt2 --init vl    # writes checks/krony_gpt2_768_768_1_vl.pt
    python kron_decompose.py 768 768 1 --kron c_attn=768x768:1 --kron attn_proj=384x384:1 --kron wte=50257x384:1 \\
        --layers odd                                             # MLP, attention and embedding, odd blocks
    python kron_decompose.py 768 768 1 --kron c_fc@3=768x768:2  # per block: block 3's c_fc with 2 factors
    python kron_decompose.py 768 768 1 --init act --calibration data/owt/train.bin   # fitted to the outputs
    python kron_decompose.py --allocate --target 81M             # per block: the shapes of least error in 81M
    python kron_decompose.py --list --target 81M                 # every valid MLP shape; needs no weights
    python kron_decompose.py --list --matrix c_attn              # ... or of any other factorable matrix
    python kron_decompose.py --rank c_fc=64 --rank c_proj=64     # rank-64 factors: the truncated SVD
    python kron_decompose.py --keep_blocks 0,2,4,6,8,10          # DistilGPT2's student: every other block

DIM_1 DIM_2 FACTORS factor the MLP (c_fc's A is DIM_1 x DIM_2, c_proj's its transpose); --kron NAME=RxC:F
factors any of wte (vocab x n_embd, tied to lm_head), c_attn (n_embd x 3 n_embd), attn_proj (n_embd x n_embd),
c_fc (n_embd x 4 n_embd), c_proj (4 n_embd x n_embd) with F products of an R x C matrix A (x @ W orientation);
--layers picks the blocks, and NAME@BLOCKS=RxC:F sets a matrix in the blocks listed (e.g. c_fc@1,3) over the
rest. --rank NAME[@BLOCKS]=R is low rank in the same layers: A in x 1, B 1 x out, R factors (vl: W's truncated
SVD, R * (in + out) parameters). --keep_blocks 0,2,4 keeps only those teacher blocks (copied exactly, renumbered
0..k-1, the embeddings and final norm too), as DistilGPT2 was made; a plan then factors the kept model. Every
factored matrix of the teacher becomes W_hat = sum_r A_r (x) B_r, every other weight is copied.
Initialisations:
  vl       Van Loan-Pitsianis nearest Kronecker sum: the Frobenius-optimal W_hat (Eckart-Young).
  vl_norm  vl rescaled so that ||W_hat||_F = ||W||_F (the paper's modified Van Loan).
  prune    the paper's pruning init: A_r keeps every k-th row (or column) of W, B_r is a one-hot vector.
  random   the scratch init of GPT(config) (W_hat entries of std 0.02, c_proj scaled as in GPT-2).
  act      fitted to what the blocks compute on --calibration tokens, not to the weights: each factored matrix
           starts at the closed form that weighs W by its inputs' second moment, then Adam fits each factored
           MLP (and attention) to the teacher's outputs, block by block on inputs that have passed through the
           blocks already compressed (as GPTQ); a factored wte is weighted by the tokens' frequencies.
With --calibration (needed by act, optional for the others) the report adds each matrix's output error
tr(D^T C D) / tr(W^T C W), D = W - W_hat, C the second moment of the inputs the teacher's matrix sees.
--allocate needs no shape: it prices every valid A shape and factor count of each block's --matrices by the
squared relative error its closed form leaves (weight error; output error with --init act) and picks, block
by block, the plan of least total error within --target parameters without wpe (an exact knapsack).
A teacher that is itself a Kronecker checkpoint is decomposed through its materialized weights, so a model
can be re-factored into another plan. The decompositions are compress.py (train.py uses them too); this file
is the command line and the shape listing, which needs no torch and answers at once.
"""

import argparse
import os
import re
import time

from common import ACT_LR, ACT_STEPS, CALIBRATION_TOKENS, INIT_NAMES, UsageError, exit_on_usage_error, read_calibration
from kron_shapes import (BLOCK_MATRICES, MATRICES, PART_OF, Plan, allocate, count_params, list_shapes,
                         matrix_shape, parse_blocks, parse_kron, parse_rank, rank_kron, weight_params)


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


# ----------------------------------------------------------------------------------------------------
# Command line

def default_out(source, plan, init, target=None, blocks=None):
    name = os.path.basename(os.path.normpath(source))
    name = re.sub(r"\.(pt|pth|ckpt)$", "", name)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    if blocks is not None:  # --keep_blocks: krony_gpt2-keep-0.2.4_...
        name += f"-keep-{'.'.join(map(str, blocks))}"
        if not plan and target is None:
            return os.path.join("checks", f"krony_{name}.pt")
    if target is not None:  # --allocate: krony_gpt2_allocated-81M_act.pt
        return os.path.join("checks", f"krony_{name}_allocated-{re.sub(r'[^A-Za-z0-9.]+', '', target)}_{init}.pt")
    kron = plan.to_kron()
    if set(kron) == {"c_fc", "c_proj"} and kron["c_proj"] == kron["c_fc"][1::-1] + kron["c_fc"][2:]:
        shape = "_".join(map(str, kron["c_fc"]))  # the shorthand's name: krony_gpt2_768_768_1_vl.pt
    else:
        shape = "_".join(f"{key.replace('@', '-at-').replace(',', '.')}-{a}x{b}-{f}" for key, (a, b, f) in kron.items())
    return os.path.join("checks", f"krony_{name}_{shape}_{init}.pt")


def decompose(args, shorthand, kron, ranks=None):
    """Decompose --model by the plan, report the errors and write the checkpoint."""
    # torch takes seconds to import: only now, so that --list and argument errors answer at once
    import torch
    from checkpoints import load_model, load_model_config, load_vocab, make_checkpoint, save_checkpoint
    from compress import check_act_device, compress, keep_blocks, output_errors, weight_errors
    from devices import setup_device

    what = f"--model {args.model}"
    shape = load_model_config(args.model, what)  # the plan is checked against the teacher's shape before its weights
    itos = load_vocab(args.model, what)  # a teacher of a character-level dataset: the student reads its characters
    ranks = ranks or {}
    blocks, n_layer = None, shape.n_layer
    if args.keep_blocks is not None:
        try:
            blocks = parse_blocks(args.keep_blocks, shape.n_layer)
        except ValueError as e:
            raise UsageError(f"{args.model} has {shape.n_layer} blocks: {e}") from None
        n_layer = len(blocks)
    plan = None
    if not args.allocate:  # --allocate chooses the plan from the teacher's weights, below
        try:
            plan = Plan.from_settings(shape.n_embd, n_layer, shape.vocab_size, *shorthand,
                                      kron={**kron, **rank_kron(ranks, shape.n_embd, shape.vocab_size)} or None,
                                      kron_layers=args.layers)
            plan.check_init(args.init)
        except ValueError as e:
            raise UsageError(f"{args.model}: {e}") from None
    out = args.out or default_out(args.model, plan, args.init, args.target if args.allocate else None, blocks)
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a directory; give a file name")
    if args.init == "act" and not args.calibration:
        raise UsageError("--init act fits the factors to the teacher's outputs: give --calibration FILE, a token "
                         "file of the teacher's vocabulary (e.g. data/owt/train.bin)")
    act_device = "cpu"
    if args.init == "act":
        try:
            act_device = setup_device(args.device)  # "auto" and "cuda:1" resolved once, for the check and the fit
            check_act_device(act_device)
        except ValueError as e:
            raise UsageError(str(e)) from None
    calibration = None
    if args.calibration:  # refused before the teacher's weights are read
        calibration = torch.from_numpy(read_calibration(args.calibration, args.calibration_tokens, shape.block_size,
                                                        shape.vocab_size))
    teacher = load_model(args.model, what=what)
    if blocks is not None:  # the kept blocks are the teacher the plan factors
        teacher = keep_blocks(teacher, blocks)
    allocation = None
    if args.allocate:
        plan, allocation = allocate_plan(args, teacher, calibration if args.init == "act" else None)
    torch.manual_seed(1337)  # --init random is reproducible
    t0 = time.time()
    student = compress(teacher, plan, args.init, progress=True, calibration=calibration, act_steps=args.act_steps,
                       act_lr=args.act_lr, act_sweeps=args.act_sweeps, act_device=act_device)
    seconds = time.time() - t0
    errors = weight_errors(teacher, student)  # "wte" and "h.<block>.<matrix>"
    outputs = output_errors(teacher, student, calibration) if calibration is not None else None
    report(args, teacher, student, errors, outputs, seconds)

    init_info = {"teacher": args.model, "method": args.init, "kron": plan.to_kron(),
                 "teacher_params": teacher.get_num_params(False), "params": student.get_num_params(False),
                 "errors": errors}
    if allocation is not None:
        init_info.update(allocation=allocation)
    if blocks is not None:
        init_info.update(keep_blocks=blocks)
    if calibration is not None:
        init_info.update(output_errors=outputs, calibration={"file": args.calibration, "tokens": calibration.numel()})
    if args.init == "act":
        init_info.update(act_steps=args.act_steps, act_lr=args.act_lr, act_sweeps=args.act_sweeps)
    try:
        save_checkpoint(make_checkpoint(student, itos, init=init_info), out)
    except OSError as e:
        raise UsageError(f"cannot write --out {out}: {e}") from None
    print(f"wrote {out}")
    if not plan:
        settings = ""
    elif shorthand[0] is not None and not kron and not ranks and args.layers == "all" and not args.allocate:
        settings = f"--dim_1={shorthand[0]} --dim_2={shorthand[1]} --factors={shorthand[2]}"
    else:
        settings = f'--dim_1=None --dim_2=None --factors=None --kron="{plan.to_kron()}"'
    if itos is None:
        print(f"next: python train.py config/train_gpt2.py --init_from={out} {settings}")
    else:
        print(f"next: python train.py --data_dir=DIR --init_from={out} {settings}  (DIR: a dataset of the teacher's "
              f"{len(itos)} characters, with their meta.json)")


def allocate_plan(args, teacher, calibration):
    """(plan, what to record of it) with the least total error proxy of --matrices within --target parameters
    (without wpe); the proxy of each choice is its squared relative error (output-weighted with calibration), as
    compress.allocation_options prices it. Prints the chosen plan as a table."""
    from compress import allocation_options
    config = teacher.config
    names = args.matrices.split(",")
    target = parse_size(args.target)
    t0 = time.time()
    options = allocation_options(teacher, names, calibration)
    _, dense_no_wpe = count_params(config.n_embd, config.n_layer, config.vocab_size, config.block_size, config.bias)
    fixed = dense_no_wpe - sum(opts[0][0] for opts in options.values())  # every weight but the candidates'
    chosen = allocate(options, target - fixed)
    if chosen is None:
        smallest = fixed + sum(min(o[0] for o in opts) for opts in options.values())
        raise UsageError(f"--target {args.target}: the smallest plan of {args.matrices} has {smallest:,} parameters "
                         f"without wpe")
    plan = Plan(config.n_embd, config.n_layer, config.vocab_size,
                {place: shape for place, shape in chosen.items() if shape is not None})
    picked = {place: next(o for o in options[place] if o[2] == shape) for place, shape in chosen.items()}
    proxy = {f"h.{block}.{name}": option[1] for (name, block), option in picked.items()}
    total = fixed + sum(option[0] for option in picked.values())
    weighting = "output-weighted" if calibration is not None else "weight"
    print(f"allocated {args.matrices} within {target:,} parameters without wpe: {total:,} ({total / target:.1%} of "
          f"the target; {len(options)} matrices, {sum(map(len, options.values())):,} options priced in "
          f"{time.time() - t0:.1f}s; proxy: the squared relative {weighting} error of the closed form)")
    print(f"{'block':>5} {'matrix':>9} {'A':>9} {'B':>9} {'factors':>7} {'parameters':>11} {'proxy':>8}")
    for (name, block), shape in sorted(chosen.items(), key=lambda item: (item[0][1], names.index(item[0][0]))):
        in_features, out_features = matrix_shape(name, config.n_embd, config.vocab_size)
        params = picked[name, block][0]
        if shape is None:
            print(f"{block:>5} {name:>9} {'dense':>9} {'':>9} {'':>7} {params:>11,} {0:>8.4f}")
        else:
            print(f"{block:>5} {name:>9} {f'{shape[0]}x{shape[1]}':>9} "
                  f"{f'{in_features // shape[0]}x{out_features // shape[1]}':>9} {shape[2]:>7} {params:>11,} "
                  f"{proxy[f'h.{block}.{name}']:>8.4f}")
    print(f"error proxy: total {sum(proxy.values()):.4f} over {len(proxy)} matrices")
    return plan, {"target": target, "matrices": names, "params_no_wpe": total, "proxy": proxy}


def report(args, teacher, student, errors, outputs, seconds):
    config, plan = teacher.config, student.config.plan
    teacher_params, student_params = teacher.get_num_params(False), student.get_num_params(False)
    kind = "Kronecker" if config.plan else "dense"
    print(f"teacher {args.model} ({kind}): {teacher_params:,} parameters, {teacher.get_num_params():,} without wpe")
    print(f"krony ({args.init}): {student_params:,} parameters, {student.get_num_params():,} without wpe: "
          f"{student_params / teacher_params:.1%} of the teacher ({teacher_params / student_params:.2f}x smaller), "
          f"built in {seconds:.1f}s; plan {plan}")
    output_column = f" {'output err':>10}" if outputs else ""
    print(f"{'matrix':>9} {'part':>9} {'W':>12} {'A':>11} {'B':>9} {'factors':>7} {'blocks':>8} {'mean error':>10}"
          f"{output_column} {'parameters':>13} {'saved':>13}")
    for name in plan.names:
        by_shape = {}
        for block, shape in plan.places(name):
            by_shape.setdefault(shape, []).append(block)
        for shape, blocks in by_shape.items():
            in_features, out_features = matrix_shape(name, config.n_embd, config.vocab_size)
            dense = weight_params(name, None, config.n_embd, config.vocab_size) * len(blocks)
            factored = weight_params(name, shape, config.n_embd, config.vocab_size) * len(blocks)
            keys = ["wte"] if name == "wte" else [f"h.{block}.{name}" for block in blocks]
            mean = sum(errors[key] for key in keys) / len(keys)
            output_mean = f" {sum(outputs[key] for key in keys) / len(keys):>10.4f}" if outputs else ""
            where = "-" if name == "wte" else ",".join(map(str, blocks)) if len(blocks) < config.n_layer else "all"
            print(f"{name:>9} {PART_OF[name]:>9} {f'{in_features}x{out_features}':>12} "
                  f"{f'{shape[0]}x{shape[1]}':>11} {f'{in_features // shape[0]}x{out_features // shape[1]}':>9} "
                  f"{shape[2]:>7} {where:>8} {mean:>10.4f}{output_mean} {factored:>13,} {dense - factored:>13,}")
    print(f"{'total':>9} {'':>9} {'':>12} {'':>11} {'':>9} {'':>7} {'':>8} {'':>10}{' ' * len(output_column)} "
          f"{student_params:>13,} {teacher_params - student_params:>13,}")
    tables = [("relative Frobenius error ||W - W_hat|| / ||W||", errors)]
    if outputs:
        tables.append(("relative output error tr(D^T C D) / tr(W^T C W) on the calibration tokens", outputs))
    block_names = [name for name in BLOCK_MATRICES if name in plan.names]
    for title, values in tables:
        if block_names:
            print(f"{title} per block (-: dense):")
            print(f"{'layer':>5} " + " ".join(f"{name:>9}" for name in block_names))
            for block in plan.blocks:
                print(f"{block:>5} " + " ".join(f"{values[f'h.{block}.{name}']:>9.4f}" if f"h.{block}.{name}" in values
                                                else f"{'-':>9}" for name in block_names))
        if "wte" in plan.names:
            print(f"{title} of wte: {values['wte']:.4f}")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dim_1", type=int, nargs="?", help="c_fc's A has dim_1 rows (must divide n_embd)")
    parser.add_argument("dim_2", type=int, nargs="?", help="c_fc's A has dim_2 columns (must divide 4*n_embd)")
    parser.add_argument("factors", type=int, nargs="?", help="number of Kronecker products summed per matrix")
    parser.add_argument("--kron", action="append", default=[], metavar="NAME[@BLOCKS]=ROWSxCOLS:FACTORS",
                        help=f"factor another matrix ({', '.join(MATRICES)}), in the --layers blocks or, with @BLOCKS "
                             f"(e.g. c_fc@3=128x128:2), in those; repeat for several")
    parser.add_argument("--rank", action="append", default=[], metavar="NAME[@BLOCKS]=R",
                        help="rank-R factors of a matrix (A in x 1, B 1 x out, R factors; vl: the truncated SVD), in "
                             "the --layers blocks or, with @BLOCKS, in those; repeat for several")
    parser.add_argument("--keep_blocks", metavar="BLOCKS",
                        help="keep only these teacher blocks, e.g. 0,2,4 (copied, renumbered 0..k-1); with a plan, "
                             "the kept model is factored")
    parser.add_argument("--layers", default="all",
                        help="blocks whose matrices (the MLP shorthand and NAME entries) are factored: all, odd, even "
                             "or a list like 0,2,4 (default all)")
    parser.add_argument("--model", default="gpt2",
                        help="teacher: a hub name, a local Hugging Face GPT-2 directory, or a krony checkpoint")
    parser.add_argument("--init", default="vl", choices=INIT_NAMES)
    parser.add_argument("--calibration", metavar="FILE",
                        help="a token file (train.bin's format) for --init act, and for the output errors of any init")
    parser.add_argument("--calibration_tokens", type=int, default=CALIBRATION_TOKENS, metavar="N",
                        help=f"tokens of --calibration, in windows of the teacher's context "
                             f"(default {CALIBRATION_TOKENS:,})")
    parser.add_argument("--act_steps", type=int, default=ACT_STEPS, help=f"--init act: Adam steps per factored MLP or "
                                                                           f"attention (default {ACT_STEPS})")
    parser.add_argument("--act_lr", type=float, default=ACT_LR,
                        help=f"--init act: Adam's learning rate, cosine to a tenth of it (default {ACT_LR:g})")
    parser.add_argument("--act_sweeps", type=int, default=0, help="--init act: alternating least-squares sweeps "
                                                                   "between the closed form and Adam (default 0)")
    parser.add_argument("--device", default="cpu", help="--init act: where the fit runs, cpu or cuda (default cpu)")
    parser.add_argument("--out", help="checkpoint to write (default checks/krony_MODEL_SHAPE_INIT.pt)")
    parser.add_argument("--allocate", action="store_true",
                        help="choose the plan: per block, the shape and factors of each of --matrices with the least "
                             "total error within --target parameters (no DIM_1 DIM_2 FACTORS)")
    parser.add_argument("--matrices", default="c_fc,c_proj",
                        help="--allocate: the matrices it may factor, comma-separated (default c_fc,c_proj)")
    parser.add_argument("--list", action="store_true", help="list every valid shape instead; needs no weights")
    parser.add_argument("--matrix", default="mlp", choices=("mlp",) + MATRICES,
                        help="--list: the matrix whose shapes to list (default mlp: c_fc, c_proj its transpose)")
    parser.add_argument("--n_embd", type=int, default=768, help="--list: model width")
    parser.add_argument("--n_layer", type=int, default=12, help="--list: number of blocks")
    parser.add_argument("--vocab_size", type=int, default=50257, help="--list: vocabulary")
    parser.add_argument("--factors", dest="factor_counts", default="1",
                        help="--list: the factor counts to list, comma-separated, e.g. 1,2,4")
    parser.add_argument("--target", help="--allocate: the parameters without wpe to stay within, e.g. 81M; --list: "
                                         "mark the shapes closest to this size")
    return parser


@exit_on_usage_error("kron_decompose.py")
def main(argv=None):
    args = build_parser().parse_args(argv)
    shorthand = (args.dim_1, args.dim_2, args.factors)

    if args.list:
        if any(v is not None for v in shorthand) or args.kron:
            raise UsageError("--list takes no DIM_1 DIM_2 FACTORS nor --kron")
        try:
            factors_list = sorted({int(f) for f in args.factor_counts.split(",")})
        except ValueError:
            raise UsageError(f"--factors {args.factor_counts!r} is not a comma-separated list of integers") from None
        if min(args.n_embd, args.n_layer, args.vocab_size, *factors_list) < 1:
            raise UsageError("--n_embd, --n_layer, --vocab_size and --factors must be positive")
        target = parse_size(args.target) if args.target else None
        rows = list_shapes(args.n_embd, factors_list, args.n_layer, args.vocab_size, name=args.matrix)
        print(format_listing(rows, args.n_embd, args.n_layer, target, args.matrix, args.vocab_size))
        return
    try:
        kron, ranks = parse_kron(args.kron), parse_rank(args.rank)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.allocate and ranks:
        raise UsageError("--allocate chooses the shapes: it takes no --rank")
    if args.allocate:
        if any(v is not None for v in shorthand) or kron or args.layers != "all":
            raise UsageError("--allocate chooses the shapes: it takes no DIM_1 DIM_2 FACTORS, --kron nor --layers")
        if not args.target:
            raise UsageError("--allocate needs --target, the parameters without wpe to stay within (e.g. 81M)")
        parse_size(args.target)
        wrong = [name for name in args.matrices.split(",") if name not in BLOCK_MATRICES]
        if wrong or not args.matrices:
            raise UsageError(f"--matrices {args.matrices!r}: give some of {', '.join(BLOCK_MATRICES)}, comma-separated")
        decompose(args, shorthand, kron)
        return
    if args.keep_blocks is not None:
        try:
            parse_blocks(args.keep_blocks, None)  # the range is checked against the teacher's config, in decompose
        except ValueError as e:
            raise UsageError(str(e)) from None
    entries = kron or ranks or args.keep_blocks is not None
    if any(v is None for v in shorthand) and not (entries and all(v is None for v in shorthand)):
        raise UsageError("give DIM_1 DIM_2 FACTORS, or --kron NAME=ROWSxCOLS:FACTORS, --rank NAME=R or --keep_blocks, "
                         "or --list to see the valid shapes")
    if any(v is not None and v < 1 for v in shorthand) or any(min(shape) < 1 for shape in kron.values()) or \
            any(rank < 1 for rank in ranks.values()):
        raise UsageError("shapes and factor counts must be positive")
    if args.calibration_tokens < 1 or min(args.act_steps, args.act_sweeps) < 0 or not args.act_lr > 0:
        raise UsageError("--calibration_tokens and --act_lr must be positive, --act_steps and --act_sweeps not "
                         "negative")
    decompose(args, shorthand, kron, ranks)


if __name__ == "__main__":
    main()
