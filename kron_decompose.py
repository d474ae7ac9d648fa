"""
Step 1 of the pipeline: choose Kronecker factor shapes, and initialise a compressed GPT-2 from a pretrained one.

    python kron_decompose.py 768 768 1 --model gpt2 --init vl    # writes checks/krony_gpt2_768_768_1_vl.pt
    python kron_decompose.py 768 768 1 --kron c_attn=768x768:1 --kron attn_proj=384x384:1 --kron wte=50257x384:1 \\
        --layers odd                                             # MLP, attention and embedding, odd blocks
    python kron_decompose.py 768 768 1 --kron c_fc@3=768x768:2  # per block: block 3's c_fc with 2 factors
    python kron_decompose.py 768 768 1 --init act --calibration data/owt/train.bin   # fitted to the outputs
    python kron_decompose.py --allocate --target 81M             # per block: the shapes of least error in 81M
    python kron_decompose.py --list --target 81M                 # every valid MLP shape, the closest to 81M last
    python kron_decompose.py --list --target 81M --top 5         # ... or only the 5 closest; needs no weights
    python kron_decompose.py --list --matrix c_attn              # ... or of any other factorable matrix
    python kron_decompose.py --list --monarch                    # ... with Monarch sizes beside the shapes
    python kron_decompose.py --rank c_fc=64 --rank c_proj=64     # rank-64 factors: the truncated SVD
    python kron_decompose.py --monarch c_fc=4 --monarch c_proj=4  # Monarch matrices of 4 blocks (monarch.py)
    python kron_decompose.py --keep_blocks 0,2,4,6,8,10          # DistilGPT2's student: every other block

DIM_1 DIM_2 FACTORS factor the MLP (c_fc's A is DIM_1 x DIM_2, c_proj's its transpose); --kron NAME=RxC:F
factors any of wte (vocab x n_embd, tied to lm_head), c_attn (n_embd x 3 n_embd), attn_proj (n_embd x n_embd),
c_fc (n_embd x 4 n_embd), c_proj (4 n_embd x n_embd) with F products of an R x C matrix A (x @ W orientation);
--layers picks the blocks, and NAME@BLOCKS=RxC:F sets a matrix in the blocks listed (e.g. c_fc@1,3) over the
rest. --rank NAME[@BLOCKS]=R is low rank in the same layers: A in x 1, B 1 x out, R factors (vl: W's truncated
SVD, R * (in + out) parameters). --monarch NAME[@BLOCKS]=NBLOCKS makes a block's matrix a Monarch matrix, two
block-diagonal factors of NBLOCKS blocks with a fixed permutation between them, min(in, out) * (in + out) / NBLOCKS
parameters (NBLOCKS must divide both sides; vl is its projection, an SVD per pair of blocks). --keep_blocks 0,2,4
keeps only those teacher blocks (copied exactly, renumbered 0..k-1, the embeddings and final norm too), as DistilGPT2
was made; a plan then factors the kept model. Every
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
--allocate needs no shape: it prices every valid A shape and factor count and every Monarch block count of each
block's --matrices by the squared relative error its closed form leaves (weight error; with --init act output
error, scaled matrix by matrix to what it costs the loss) and picks, block by block, the plan of least total
price within --target parameters without wpe (an exact knapsack).
A teacher that is itself a Kronecker checkpoint is decomposed through its materialized weights, so a model
can be re-factored into another plan. The student goes to --out, refused if it exists (--overwrite replaces it),
by default a name of the teacher and the plan that no other teacher's student shares (teacher_name); the last line
printed is the train.py command that fine-tunes it, on the teacher's data and sized by its run (next_command).
The decompositions are compress.py (train.py uses them too); this file is the command line and the shape
listing, which needs no torch and answers at once.
"""

import argparse
import hashlib
import os
import re
import shlex
import time
from dataclasses import dataclass

from common import (ACT_LR, ACT_STEPS, CALIBRATION_TOKENS, INIT_NAMES, UsageError, exit_on_usage_error,
                    read_calibration, usage_errors)
from kron_shapes import (BLOCK_MATRICES, MATRICES, PART_OF, Plan, allocate, count_params, list_monarch, list_shapes,
                         matrix_shape, monarch_params, parse_blocks, parse_kron, parse_monarch, parse_rank, rank_kron,
                         weight_params)

# The fine-tuning suggested after a student is written is sized by the teacher's own run (its checkpoint's "config"):
# the same data, context and batches, a twentieth of its iterations at 0.3 of its learning rate, as
# config/study_frontier_char.py fine-tunes the students of a 6,000-iteration teacher (300 iterations at 3e-4 of 1e-3).
FINETUNE_ITERS, FINETUNE_LR = 1 / 20, 0.3
RUN_KEYS = {"dataset", "data_dir", "block_size", "batch_size", "gradient_accumulation_steps", "max_iters",
            "learning_rate", "eval_iters", "compile"}
# A character-level teacher that recorded no run is sized as that teacher (config/train_shakespeare_char.py).
CHAR_TEACHER_RUN = dict(block_size=128, batch_size=16, gradient_accumulation_steps=1, max_iters=6000,
                        learning_rate=1e-3, eval_iters=20, compile=False)


# ----------------------------------------------------------------------------------------------------
# Listing: arithmetic only, no models are built.

def mark_target(rows, target):
    """Indices of the rows closest to `target` parameters without wpe, ties included (the paper names its models
    by this count: 81M is 81,186,144). Many shapes share a count, so several rows are usually marked."""
    distance = [abs(r["params_no_wpe"] - target) for r in rows]
    return [i for i, d in enumerate(distance) if d == min(distance)]


def closest_first(rows, target):
    """Indices of all rows, the closest to `target` parameters without wpe first (ties in listing order)."""
    return sorted(range(len(rows)), key=lambda i: (abs(rows[i]["params_no_wpe"] - target), i))


def format_listing(rows, n_embd, n_layer, target=None, matrix="mlp", vocab_size=50257, top=None):
    """The table of `rows`, the shapes closest to `target` marked. With a target the closest rows are repeated at
    the end, where the eye lands after a long table; with `top`, only the top closest rows, closest first."""
    dense, dense_no_wpe = count_params(n_embd, n_layer=n_layer, vocab_size=vocab_size)
    name = "c_fc" if matrix == "mlp" else matrix
    rows_dim, cols_dim = matrix_shape(name, n_embd, vocab_size)
    what = (f"c_fc is {rows_dim}x{cols_dim} (A (x) B), c_proj its transpose (A^T (x) B^T)" if matrix == "mlp"
            else f"{matrix} is {rows_dim}x{cols_dim} (A (x) B)" + ("" if matrix == "wte" else ", in every block"))
    flops = "MLP" if matrix == "mlp" else matrix
    header = (f"{'dim_1':>5} {'dim_2':>5} {'factors':>7} {'A (' + name + ')':>12} {'B (' + name + ')':>12} "
              f"{'per matrix':>12} {'parameters':>12} {'without wpe':>12} {flops + ' FLOPs':>11} {'model FLOPs':>11}")
    lines = [f"dense: {dense:,} parameters, {dense_no_wpe:,} without wpe (n_embd={n_embd}, n_layer={n_layer}); {what}",
             f"FLOPs: multiply-adds per token relative to dense ({flops}: in its cheaper order"
             f"{', as lm_head' if matrix == 'wte' else ''}; model: all weight matrices)",
             header]
    marked = set(mark_target(rows, target)) if target else set()

    def row_line(i, mark=True):
        r = rows[i]
        return (f"{r['dim_1']:>5} {r['dim_2']:>5} {r['factors']:>7} {r['a_shape']:>12} {r['b_shape']:>12} "
                f"{r['matrix_params']:>12,} {r['params']:>12,} {r['params_no_wpe']:>12,} "
                f"{r['matrix_flops']:>11.1%} {r['model_flops']:>11.1%}"
                + (f"  <- {target / 1e6:g}M" if mark and i in marked else ""))

    if top:
        shown = closest_first(rows, target)[:top]
        lines += [row_line(i) for i in shown]
        lines.append(f"the {len(shown)} of {len(rows)} valid shapes closest to {target:,} parameters without wpe, "
                     f"closest first; {len(marked)} marked as closest")
        return "\n".join(lines)
    lines += [row_line(i) for i in range(len(rows))]
    if target:
        lines += [f"closest to {target:,} parameters without wpe (--top N: the N closest alone):", header]
        lines += [row_line(i, mark=False) for i in sorted(marked)]
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


def listing(args):
    """--list: the table of every valid shape of --matrix, after the checks of its arguments."""
    check_top(args)
    if any(v is not None for v in (args.dim_1, args.dim_2, args.factors)) or args.kron:
        raise UsageError("--list takes no DIM_1 DIM_2 FACTORS nor --kron")
    if any(args.monarch) or (args.monarch and args.matrix == "wte"):
        raise UsageError("--list --monarch takes no NAME=NBLOCKS; it lists the Monarch sizes of --matrix (a block "
                         "matrix or mlp, not wte)")
    try:
        factors_list = sorted({int(f) for f in args.factor_counts.split(",")})
    except ValueError:
        raise UsageError(f"--factors {args.factor_counts!r} is not a comma-separated list of integers") from None
    if min(args.n_embd, args.n_layer, args.vocab_size, *factors_list) < 1:
        raise UsageError("--n_embd, --n_layer, --vocab_size and --factors must be positive")
    target = parse_size(args.target) if args.target else None
    rows = list_shapes(args.n_embd, factors_list, args.n_layer, args.vocab_size, name=args.matrix)
    if args.monarch:  # beside the Kronecker shapes, smallest model first
        rows = sorted(rows + list_monarch(args.n_embd, args.n_layer, args.vocab_size, name=args.matrix),
                      key=lambda row: row["params"])
    return format_listing(rows, args.n_embd, args.n_layer, target, args.matrix, args.vocab_size, args.top)


# ----------------------------------------------------------------------------------------------------
# Command line

def teacher_name(source):
    """The teacher's part of the default --out, readable and never another teacher's: a hub name as it is (gpt2);
    a local file or folder by its parent folder and its name, and 6 hex digits of its absolute path, since train.py
    names every run's checkpoint ckpt.pt (out-a/ckpt.pt -> out-a-ckpt-1f3a9c)."""
    if not os.path.exists(source):
        return re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(os.path.normpath(source)))
    path = os.path.realpath(source)
    parent, name = os.path.split(path)
    name = re.sub(r"\.(pt|pth|ckpt)$", "", name)
    digest = hashlib.sha256(path.encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{os.path.basename(parent)}-{name}-{digest}")


def default_out(source, plan, init, target=None, blocks=None):
    name = teacher_name(source)
    if blocks is not None:  # --keep_blocks: krony_gpt2-keep-0.2.4_...
        name += f"-keep-{'.'.join(map(str, blocks))}"
        if not plan and target is None:
            return os.path.join("checks", f"krony_{name}.pt")
    if target is not None:  # --allocate: krony_gpt2_allocated-81M_act.pt
        return os.path.join("checks", f"krony_{name}_allocated-{re.sub(r'[^A-Za-z0-9.]+', '', target)}_{init}.pt")
    kron = plan.to_kron()
    if set(kron) == {"c_fc", "c_proj"} and kron["c_proj"] == kron["c_fc"][1::-1] + kron["c_fc"][2:] and \
            not plan.monarch:
        shape = "_".join(map(str, kron["c_fc"]))  # the shorthand's name: krony_gpt2_768_768_1_vl.pt
    else:
        safe = {key: key.replace("@", "-at-").replace(",", ".") for key in [*kron, *plan.to_monarch()]}
        shape = "_".join([*(f"{safe[key]}-{a}x{b}-{f}" for key, (a, b, f) in kron.items()),
                          *(f"{safe[key]}-monarch{n}" for key, n in plan.to_monarch().items())])
    return os.path.join("checks", f"krony_{name}_{shape}_{init}.pt")


def check_out(out, overwrite):
    """Refuse, before any weights are read, to write over a file the user made, unless told to."""
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a directory; give a file name")
    if os.path.exists(out) and not overwrite:
        raise UsageError(f"--out {out} exists: give another --out, or --overwrite to replace it")


def check_top(args):
    """--top belongs to --list --target."""
    if args.top is not None and not (args.list and args.target and args.top >= 1):
        raise UsageError("--top N shows the N shapes closest to --list --target: give both, and N of at least 1")


def check_command_line(args):
    """(shorthand, kron, ranks): the plan the command line gives, after every check that needs no file."""
    check_top(args)
    with usage_errors():
        kron, ranks, monarch = parse_kron(args.kron), parse_rank(args.rank), parse_monarch(args.monarch)
    shorthand = (args.dim_1, args.dim_2, args.factors)
    if args.allocate:
        check_allocate(args, shorthand, kron, {**ranks, **monarch})
    else:
        check_plan(args, shorthand, kron, ranks, monarch)
    if args.calibration_tokens < 1 or min(args.act_steps, args.act_sweeps) < 0 or not args.act_lr > 0:
        raise UsageError("--calibration_tokens and --act_lr must be positive, --act_steps and --act_sweeps not "
                         "negative")
    if args.init == "act" and not args.calibration:
        raise UsageError("--init act fits the factors to the teacher's outputs: give --calibration FILE, a token "
                         "file of the teacher's vocabulary (e.g. data/owt/train.bin)")
    return shorthand, kron, ranks, monarch


def check_allocate(args, shorthand, kron, ranks):
    """--allocate chooses the plan: it takes none, but a --target and the --matrices it may factor."""
    if ranks:
        raise UsageError("--allocate chooses the shapes: it takes no --rank nor --monarch")
    if any(v is not None for v in shorthand) or kron or args.layers != "all":
        raise UsageError("--allocate chooses the shapes: it takes no DIM_1 DIM_2 FACTORS, --kron nor --layers")
    if not args.target:
        raise UsageError("--allocate needs --target, the parameters without wpe to stay within (e.g. 81M)")
    parse_size(args.target)
    wrong = [name for name in args.matrices.split(",") if name not in BLOCK_MATRICES]
    if wrong or not args.matrices:
        raise UsageError(f"--matrices {args.matrices!r}: give some of {', '.join(BLOCK_MATRICES)}, comma-separated")


def check_plan(args, shorthand, kron, ranks, monarch):
    """A plan is given: the whole shorthand, and/or entries (--kron, --rank, --monarch, --keep_blocks), of positive
    sizes."""
    if args.keep_blocks is not None:
        with usage_errors():
            parse_blocks(args.keep_blocks, None)  # the range is checked against the teacher's config, in check_args
    entries = kron or ranks or monarch or args.keep_blocks is not None
    if any(v is None for v in shorthand) and not (entries and all(v is None for v in shorthand)):
        raise UsageError("give DIM_1 DIM_2 FACTORS, or --kron NAME=ROWSxCOLS:FACTORS, --rank NAME=R, --monarch "
                         "NAME=NBLOCKS or --keep_blocks, or --list to see the valid shapes")
    if any(v is not None and v < 1 for v in shorthand) or any(min(shape) < 1 for shape in kron.values()) or \
            any(n < 1 for n in [*ranks.values(), *monarch.values()]):
        raise UsageError("shapes and factor counts must be positive")


def student_plan(args, shape, n_layer, kron, ranks, monarch):
    """The command line's plan for a teacher of `shape` with n_layer blocks (kept ones), checked to fit it and
    --init."""
    with usage_errors(args.model):
        plan = Plan.from_settings(shape.n_embd, n_layer, shape.vocab_size, dim_1=args.dim_1, dim_2=args.dim_2,
                                  factors=args.factors,
                                  kron={**kron, **rank_kron(ranks, shape.n_embd, shape.vocab_size)} or None,
                                  kron_layers=args.layers, monarch=monarch or None)
        plan.check_init(args.init)
    return plan


def act_device(args):
    """Where init act fits the factors, resolved once for the check and the fit ("auto", "cuda:1"); cpu otherwise."""
    if args.init != "act":
        return "cpu"
    from compress import check_act_device
    from devices import setup_device
    with usage_errors():
        device = setup_device(args.device)
        check_act_device(device)
    return device


@dataclass
class Checked:
    """What check_args found in the arguments, the teacher's config and the calibration file."""
    plan: Plan | None  # None with --allocate, which chooses it from the teacher's weights
    shorthand: tuple | None  # DIM_1 DIM_2 FACTORS where they alone make the plan (plan_settings)
    blocks: list | None  # --keep_blocks, in the teacher's numbering
    out: str
    itos: list | None  # the teacher's characters, which the student reads too; None for GPT-2 tokens
    run: dict | None  # the settings train.py trained the teacher with (teacher_run)
    calibration: "torch.Tensor | None"  # int64 (windows, window): --calibration's tokens
    act_device: "torch.device | str"


def check_args(args):
    """Every argument checked, each mistake one line, before any weights are read: the command line first (before
    torch is imported, so that these errors answer at once), then the plan against the teacher's config, --out,
    the device and the calibration tokens."""
    shorthand, kron, ranks, monarch = check_command_line(args)
    import torch
    from checkpoints import load_model_config, load_vocab
    what = f"--model {args.model}"
    shape = load_model_config(args.model, what)  # the plan is checked against the teacher's shape before its weights
    itos = load_vocab(args.model, what)  # a teacher of a character-level dataset: the student reads its characters
    run = teacher_run(args.model)  # sizes the fine-tuning that the last line suggests
    blocks = None
    if args.keep_blocks is not None:
        with usage_errors(f"{args.model} has {shape.n_layer} blocks"):
            blocks = parse_blocks(args.keep_blocks, shape.n_layer)
    n_layer = shape.n_layer if blocks is None else len(blocks)
    plan = None if args.allocate else student_plan(args, shape, n_layer, kron, ranks, monarch)
    out = args.out or default_out(args.model, plan, args.init, args.target if args.allocate else None, blocks)
    check_out(out, args.overwrite)
    device = act_device(args)
    calibration = None
    if args.calibration:
        calibration = torch.from_numpy(read_calibration(args.calibration, args.calibration_tokens, shape.block_size,
                                                        shape.vocab_size))
    alone = shorthand[0] is not None and not kron and not ranks and not monarch and args.layers == "all" and \
        not args.allocate
    return Checked(plan, shorthand if alone else None, blocks, out, itos, run, calibration, device)


def decompose(args, checked):
    """Decompose --model by the plan (or the one --allocate chooses), report the errors, write the student and print
    the command that fine-tunes it."""
    import torch
    from checkpoints import load_model, make_checkpoint, save_checkpoint
    from compress import compress, keep_blocks, output_errors, weight_errors

    teacher = load_model(args.model, what=f"--model {args.model}")
    if checked.blocks is not None:  # the kept blocks are the teacher the plan factors
        teacher = keep_blocks(teacher, checked.blocks)
    plan, allocation = checked.plan, None
    if args.allocate:
        plan, allocation = allocate_plan(args, teacher, checked.calibration if args.init == "act" else None)
    torch.manual_seed(1337)  # --init random is reproducible
    t0 = time.time()
    student = compress(teacher, plan, args.init, progress=True, calibration=checked.calibration,
                       act_steps=args.act_steps, act_lr=args.act_lr, act_sweeps=args.act_sweeps,
                       act_device=checked.act_device)
    seconds = time.time() - t0
    errors = weight_errors(teacher, student)  # "wte" and "h.<block>.<matrix>"
    outputs = output_errors(teacher, student, checked.calibration) if checked.calibration is not None else None
    report(args, teacher, student, errors, outputs, seconds)

    init = init_record(args, checked, plan, teacher, student, errors, outputs, allocation)
    try:
        save_checkpoint(make_checkpoint(student, checked.itos, init=init), checked.out)
    except OSError as e:
        raise UsageError(f"cannot write --out {checked.out}: {e}") from None
    print(f"wrote {checked.out}")
    print(f"next: {next_command(checked.out, plan_settings(plan, checked.shorthand), checked.run, checked.itos)}")


def init_record(args, checked, plan, teacher, student, errors, outputs, allocation):
    """The checkpoint's "init": the teacher, the method, the plan, the sizes and errors, and what else made it."""
    info = {"teacher": args.model, "method": args.init, "kron": plan.to_kron(),
            "teacher_params": teacher.get_num_params(False), "params": student.get_num_params(False),
            "errors": errors}
    if plan.monarch:
        info.update(monarch=plan.to_monarch())
    if allocation is not None:
        info.update(allocation=allocation)
    if checked.blocks is not None:
        info.update(keep_blocks=checked.blocks)
    if checked.calibration is not None:
        info.update(output_errors=outputs, calibration={"file": args.calibration,
                                                        "tokens": checked.calibration.numel()})
    if args.init == "act":
        info.update(act_steps=args.act_steps, act_lr=args.act_lr, act_sweeps=args.act_sweeps)
    return info


def plan_settings(plan, shorthand):
    """train.py's settings of the student's plan: DIM_1 DIM_2 FACTORS where they alone make it, else its --kron."""
    if not plan:  # --keep_blocks alone: a dense student, so the config's plan is unset
        return "--dim_1=None --dim_2=None --factors=None"
    if shorthand is not None:
        return f"--dim_1={shorthand[0]} --dim_2={shorthand[1]} --factors={shorthand[2]}"
    monarch = f' --monarch="{plan.to_monarch()}"' if plan.monarch else ""
    return f'--dim_1=None --dim_2=None --factors=None --kron="{plan.to_kron()}"{monarch}'


def teacher_run(source):
    """The settings train.py trained the teacher with (its checkpoint's "config"), or None where it recorded none
    (a Hugging Face model, a kron_decompose.py output)."""
    from checkpoints import read_checkpoint
    run = read_checkpoint(source, mmap=True).get("config") if os.path.isfile(source) else None
    return run if run and RUN_KEYS <= run.keys() else None


def finetune_settings(run):
    """train.py settings that fine-tune a student of the teacher that `run` trained (module constants above)."""
    iters = max(1, round(run["max_iters"] * FINETUNE_ITERS))
    learning_rate = run["learning_rate"] * FINETUNE_LR
    return dict(block_size=run["block_size"], batch_size=run["batch_size"],
                gradient_accumulation_steps=run["gradient_accumulation_steps"], max_iters=iters,
                lr_decay_iters=iters, warmup_iters=iters // 20, learning_rate=f"{learning_rate:.3g}",
                min_lr=f"{learning_rate / 10:.3g}", eval_interval=max(1, iters // 2), eval_iters=run["eval_iters"],
                compile=run["compile"])


def next_command(out, plan_settings, run, itos):
    """The train.py command that fine-tunes the student written to `out`, in out's name without .pt: a teacher of
    GPT-2 tokens that recorded no run gets the paper's recipe on OpenWebText (config/train_gpt2.py, plan_settings
    override its plan); any other is fine-tuned as finetune_settings sizes it, on the teacher's data where known."""
    where = f"--init_from={shlex.quote(out)} --out_dir={shlex.quote(os.path.splitext(out)[0])}"
    if run is None and itos is None:
        return f"python train.py config/train_gpt2.py {where} {plan_settings}"
    data_dir = shlex.quote(run["data_dir"] or os.path.join("data", run["dataset"])) if run else "DIR"
    settings = " ".join(f"--{key}={value}" for key, value in finetune_settings(run or CHAR_TEACHER_RUN).items())
    unknown = "" if run else f"  (DIR: a dataset of the teacher's {len(itos)} characters, with their meta.json)"
    return f"python train.py {where} --data_dir={data_dir} {settings}{unknown}"


def allocate_plan(args, teacher, calibration):
    """(plan, what to record of it) with the least total price of --matrices within --target parameters (without
    wpe), over every Kronecker shape and factor count, every Monarch matrix and W itself: each choice's squared
    relative error of the closed form, of the weights (compress.allocation_options) or, with calibration, of the
    outputs scaled matrix by matrix to the loss (compress.calibrated_options). Prints the chosen plan as a table."""
    from compress import MONARCH, allocation_options, allocation_plan, calibrated_options
    config = teacher.config
    names = args.matrices.split(",")
    target = parse_size(args.target)
    t0 = time.time()
    with usage_errors(f"--allocate --init {args.init} on {args.model}"):
        options = calibrated_options(teacher, names, calibration) if calibration is not None else \
            allocation_options(teacher, names)
    _, dense_no_wpe = count_params(config.n_embd, config.n_layer, config.vocab_size, config.block_size, config.bias)
    fixed = dense_no_wpe - sum(opts[0][0] for opts in options.values())  # every weight but the candidates'
    chosen = allocate(options, target - fixed)
    if chosen is None:
        smallest = fixed + sum(min(o[0] for o in opts) for opts in options.values())
        raise UsageError(f"--target {args.target}: the smallest plan of {args.matrices} has {smallest:,} parameters "
                         f"without wpe")
    plan = allocation_plan(config, chosen)
    picked = {place: next(o for o in options[place] if o[2] == shape) for place, shape in chosen.items()}
    proxy = {f"h.{block}.{name}": option[1] for (name, block), option in picked.items()}
    total = fixed + sum(option[0] for option in picked.values())
    pricing = "the loss-scaled output error" if calibration is not None else "the squared relative weight error"
    print(f"allocated {args.matrices} within {target:,} parameters without wpe: {total:,} ({total / target:.1%} of "
          f"the target; {len(options)} matrices, {sum(map(len, options.values())):,} options priced in "
          f"{time.time() - t0:.1f}s; price: {pricing} of the closed form)")
    print(f"{'block':>5} {'matrix':>9} {'A':>10} {'B':>9} {'factors':>7} {'parameters':>11} {'price':>8}")
    for (name, block), shape in sorted(chosen.items(), key=lambda item: (item[0][1], names.index(item[0][0]))):
        in_features, out_features = matrix_shape(name, config.n_embd, config.vocab_size)
        params, price = picked[name, block][0], proxy[f"h.{block}.{name}"]
        if shape is None:
            print(f"{block:>5} {name:>9} {'dense':>10} {'':>9} {'':>7} {params:>11,} {price:>8.4f}")
        elif shape[0] == MONARCH:
            print(f"{block:>5} {name:>9} {f'monarch:{shape[1]}':>10} {f'{shape[1]} blocks':>9} {'':>7} "
                  f"{params:>11,} {price:>8.4f}")
        else:
            print(f"{block:>5} {name:>9} {f'{shape[0]}x{shape[1]}':>10} "
                  f"{f'{in_features // shape[0]}x{out_features // shape[1]}':>9} {shape[2]:>7} {params:>11,} "
                  f"{price:>8.4f}")
    print(f"price: total {sum(proxy.values()):.4f} over {len(proxy)} matrices")
    return plan, {"target": target, "matrices": names, "params_no_wpe": total, "proxy": proxy}


def report(args, teacher, student, errors, outputs, seconds):
    """The teacher's and the student's sizes, and a row per factored matrix and shape: its mean error and savings."""
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
        for (matrix, block), nblocks in plan.monarch.items():  # a Monarch matrix's "shape" is its nblocks
            if matrix == name:
                by_shape.setdefault(nblocks, []).append(block)
        for shape, blocks in by_shape.items():
            in_features, out_features = matrix_shape(name, config.n_embd, config.vocab_size)
            dense = weight_params(name, None, config.n_embd, config.vocab_size) * len(blocks)
            if isinstance(shape, int):
                factored = monarch_params(name, shape, config.n_embd, config.vocab_size) * len(blocks)
                a, b, factors = "monarch", f"{shape} blocks", "-"
            else:
                factored = weight_params(name, shape, config.n_embd, config.vocab_size) * len(blocks)
                a, b = f"{shape[0]}x{shape[1]}", f"{in_features // shape[0]}x{out_features // shape[1]}"
                factors = shape[2]
            keys = ["wte"] if name == "wte" else [f"h.{block}.{name}" for block in blocks]
            mean = sum(errors[key] for key in keys) / len(keys)
            output_mean = f" {sum(outputs[key] for key in keys) / len(keys):>10.4f}" if outputs else ""
            where = "-" if name == "wte" else ",".join(map(str, blocks)) if len(blocks) < config.n_layer else "all"
            print(f"{name:>9} {PART_OF[name]:>9} {f'{in_features}x{out_features}':>12} "
                  f"{a:>11} {b:>9} {factors:>7} {where:>8} {mean:>10.4f}{output_mean} {factored:>13,} "
                  f"{dense - factored:>13,}")
    print(f"{'total':>9} {'':>9} {'':>12} {'':>11} {'':>9} {'':>7} {'':>8} {'':>10}{' ' * len(output_column)} "
          f"{student_params:>13,} {teacher_params - student_params:>13,}")
    print_errors_by_block(plan, errors, outputs)


def print_errors_by_block(plan, errors, outputs):
    """The relative errors of the factored matrices (and their output errors, given calibration), a row per block."""
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
    # --help shows the module's first two paragraphs (what it does, the examples); the rest is for readers of the code
    parser = argparse.ArgumentParser(usage="%(prog)s [DIM_1 DIM_2 FACTORS] [--kron ...] [--model SOURCE] [options]\n"
                                           "       %(prog)s --list [--target SIZE [--top N]] [options]",
                                     description="\n\n".join(__doc__.strip().split("\n\n")[:2]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="The top of kron_decompose.py explains the initialisations, --allocate "
                                            "and the errors it reports.")
    plan = parser.add_argument_group("the plan (the MLP shorthand, and/or --kron, --rank, --monarch, --keep_blocks)")
    plan.add_argument("dim_1", type=int, nargs="?", help="c_fc's A has dim_1 rows (must divide n_embd)")
    plan.add_argument("dim_2", type=int, nargs="?", help="c_fc's A has dim_2 columns (must divide 4*n_embd)")
    plan.add_argument("factors", type=int, nargs="?", help="Kronecker products summed per matrix")
    plan.add_argument("--kron", action="append", default=[], metavar="NAME[@BLOCKS]=ROWSxCOLS:FACTORS",
                      help=f"factor a matrix ({', '.join(MATRICES)}) in the --layers blocks, or in BLOCKS (e.g. "
                           f"c_fc@3=128x128:2); repeatable")
    plan.add_argument("--rank", action="append", default=[], metavar="NAME[@BLOCKS]=R",
                      help="rank-R factors of a matrix (vl: its truncated SVD); repeatable")
    plan.add_argument("--monarch", action="append", default=[], nargs="?", const="", metavar="NAME[@BLOCKS]=NBLOCKS",
                      help=f"make a matrix ({', '.join(BLOCK_MATRICES)}) a Monarch matrix of NBLOCKS blocks, in the "
                           f"--layers blocks or in BLOCKS; repeatable. With --list, alone: list Monarch sizes too")
    plan.add_argument("--keep_blocks", metavar="BLOCKS",
                      help="keep only these teacher blocks, e.g. 0,2,4 (renumbered 0..k-1)")
    plan.add_argument("--layers", default="all", metavar="BLOCKS",
                      help="blocks of the shorthand and plain NAME entries: all, odd, even or e.g. 0,2,4 "
                           "(default %(default)s)")
    run = parser.add_argument_group("the teacher, the init and the output")
    run.add_argument("--model", default="gpt2", metavar="SOURCE",
                     help="teacher: a hub name, a Hugging Face GPT-2 folder or a krony checkpoint (default "
                          "%(default)s)")
    run.add_argument("--init", default="vl", choices=INIT_NAMES, metavar="INIT",
                     help="vl: Van Loan's nearest Kronecker sum; vl_norm: vl rescaled to ||W||; prune: the paper's "
                          "pruning; random: from scratch; act: fitted to the teacher's outputs on --calibration "
                          "(default %(default)s)")
    run.add_argument("--out", metavar="FILE",
                     help="checkpoint to write (default checks/krony_TEACHER_SHAPE_INIT.pt, TEACHER a hub name as "
                          "given, or a local teacher's folder, name and path hash: out-a/ckpt.pt -> out-a-ckpt-1f3a9c)")
    run.add_argument("--overwrite", action="store_true", help="replace --out if it exists (else refused)")
    act = parser.add_argument_group("calibration and --init act")
    act.add_argument("--calibration", metavar="FILE",
                     help="token file (train.bin's format): needed by act, adds output errors to any init")
    act.add_argument("--calibration_tokens", type=int, default=CALIBRATION_TOKENS, metavar="N",
                     help="tokens of --calibration used (default %(default)s)")
    act.add_argument("--act_steps", type=int, default=ACT_STEPS, metavar="N",
                     help="Adam steps per factored MLP or attention (default %(default)s)")
    act.add_argument("--act_lr", type=float, default=ACT_LR, metavar="LR",
                     help="Adam's learning rate, cosine to a tenth (default %(default)s)")
    act.add_argument("--act_sweeps", type=int, default=0, metavar="N",
                     help="alternating least-squares sweeps before Adam (default %(default)s)")
    act.add_argument("--device", default="cpu", metavar="DEVICE",
                     help="where the fit runs: cpu, cuda or auto (default %(default)s)")
    allocate = parser.add_argument_group("--allocate: choose the plan of least error within --target")
    allocate.add_argument("--allocate", action="store_true",
                          help="per block, the Kronecker shapes and factors or Monarch blocks of --matrices (no "
                               "DIM_1 DIM_2 FACTORS)")
    allocate.add_argument("--matrices", default="c_fc,c_proj", metavar="NAMES",
                          help="the matrices it may factor, comma-separated (default %(default)s)")
    listing = parser.add_argument_group("--list: every valid shape, from arithmetic alone (no weights, no torch)")
    listing.add_argument("--list", action="store_true", help="list the shapes instead of decomposing")
    listing.add_argument("--target", metavar="SIZE",
                         help="--list: mark the shapes closest to this size without wpe, e.g. 81M, and repeat them at "
                              "the end; --allocate: the size to stay within")
    listing.add_argument("--top", type=int, metavar="N",
                         help="--list --target: only the N closest shapes, closest first")
    listing.add_argument("--matrix", default="mlp", choices=("mlp",) + MATRICES, metavar="NAME",
                         help=f"{', '.join(MATRICES)}, or mlp: c_fc, c_proj its transpose (default %(default)s)")
    listing.add_argument("--factors", dest="factor_counts", default="1", metavar="COUNTS",
                         help="factor counts to list, comma-separated, e.g. 1,2,4 (default %(default)s)")
    listing.add_argument("--n_embd", type=int, default=768, metavar="N", help="model width (default %(default)s)")
    listing.add_argument("--n_layer", type=int, default=12, metavar="N", help="number of blocks (default %(default)s)")
    listing.add_argument("--vocab_size", type=int, default=50257, metavar="N", help="vocabulary (default %(default)s)")
    return parser


@exit_on_usage_error("kron_decompose.py")
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.list:
        print(listing(args))
    else:
        decompose(args, check_args(args))


if __name__ == "__main__":
    main()
