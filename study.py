"""
Answer compression questions with paired runs of the real pipeline, and write tables and plots.

    python study.py config/study_smoke.py                  # two variants, one seed, a tiny teacher: ~2 minutes
    python study.py config/study_paper_questions.py        # the paper's open questions on Shakespeare

Seed noise is larger than the differences between compression choices, so the design is paired: for each
seed every variant is fine-tuned on exactly the same batches in the same order (train.py's seed), and every
model is scored by perplexity.py on the same fixed held-out tokens (the first eval_tokens of val.bin). Each
variant is reported as its paired differences to a baseline, seed by seed, with their mean and range, and to the
control: the teacher itself fine-tuned with the same settings and seeds, which every study runs, so that what the
compression costs is told apart from what the fine-tuning alone does.

A study config is plain Python, like train.py's (see STUDY_SETTINGS below): a teacher (a model source, or
teacher_config, a train.py config trained first into out_dir/teacher), train.py settings shared by every fine-tuning
run, seeds, variants {name: {"plan": train.py's plan settings (dim_1, dim_2, factors, kron, kron_layers), "init":
vl|vl_norm|prune|random|act, "act": init act's calibration_tokens, act_steps, act_lr, act_sweeps (calibrated on
data_dir's train.bin), "distill": train.py distill_* settings, "finetune": train.py settings for this variant
only}}, and questions {title: (baseline variant, [variants])}. For each variant: the student is made once, in this
process, as kron_decompose.py makes it (compress.compress), then for each seed train.py and perplexity.py run (the
control's runs in out_dir/control). A run whose result.json exists is skipped, so a study can be stopped and
restarted at any point (a teacher whose training did not finish goes on from its last evaluation, as train.py's
resume does; a different teacher needs a new out_dir); a run that fails is reported as failed with its log's last
line and the others go on. Writes out_dir/results.json, results.md, val_loss.png (val loss against iteration, mean
over seeds, a panel per question) and frontier.png (fine-tuned perplexity against parameters, every point labelled,
with the Pareto front, the teacher and the control; for a frontier of families, four panels: against parameters,
weight multiply-adds per token, train step time and decode time, each with its Pareto front)."""

import functools
import json
import os
import subprocess
import sys
import time

from common import (ACT_LR, ACT_STEPS, CALIBRATION_TOKENS, INIT_NAMES, UsageError, exit_on_usage_error, one_line,
                    read_calibration, read_vocab, usage_errors, write_json)
from configurator import ConfigError, checked, load_config
from kron_shapes import (BLOCK_MATRICES, PLAN_SETTINGS, Plan, divisors, is_outer_product, max_factors, parse_blocks,
                         written)
from plot import plot_family_frontier, plot_frontier, plot_loss_panels, read_metrics

STUDY_SETTINGS = dict(  # key=(default, type)
    out_dir=("studies/study", str),
    teacher=("", str),  # a model source; empty: train teacher_config into out_dir/teacher
    teacher_config=("", str),
    teacher_overrides=({}, dict),  # train.py settings on top of teacher_config
    data_dir=("data/shakespeare", str),
    eval_tokens=(100_000, int),  # the held-out prefix of val.bin every model is scored on
    seeds=([1, 2, 3], list),
    finetune=({}, dict),  # train.py settings shared by every variant's fine-tuning
    variants=({}, dict),
    questions=({}, dict),
    # the frontier: each of `families` matched to each budget, a fraction of the teacher's parameters without wpe
    budgets=([], list),
    families=({}, dict),  # {name: {"family": one of FAMILIES, ... (see match_family)}}
    device=("cpu", str),
    timing_rounds=(9, int),  # rounds of the timing phase, every model once per round
)
VARIANT_KEYS = ("family", "plan", "keep_blocks", "dense", "init", "act", "distill", "finetune", "budget", "candidates",
                "allocate")
BUDGET_TOLERANCE = 0.03  # a frontier variant's parameters are within 3% of its budget (see tolerance)
DECODE_TOKENS = 64  # the timing phase's greedy decode: batch 1, the KV cache, this many new tokens (fewer where
PROMPT_TOKENS = 16  # the prompt and they would not fit the model's context)
# init act's settings (train.py's), calibrated on data_dir/train.bin
ACT_KEYS = ("calibration_tokens", "act_steps", "act_lr", "act_sweeps")
DISTILL_KEYS = ("distill_alpha", "distill_temperature", "distill_hidden")
RUN_OWNED = ("out_dir", "init_from", "seed", "teacher", "overwrite", "data_dir", "device") + \
    tuple(PLAN_SETTINGS) + DISTILL_KEYS
CONTROL = "control (teacher fine-tuned)"


def read_json(path):
    with open(path) as f:
        return json.load(f)


def run_step(args, log_path):
    """`python args...` from the repository root, output to log_path; None on success, else the log's last line."""
    with open(log_path, "w") as log:
        status = subprocess.run([sys.executable, *args], cwd=os.path.dirname(os.path.abspath(__file__)),
                                stdout=log, stderr=subprocess.STDOUT).returncode
    if status == 0:
        return None
    with open(log_path) as f:
        lines = [line.strip() for line in f if line.strip()]
    return f"{args[0]} exited {status}: {lines[-1] if lines else 'no output'}"


def settings_args(settings):
    """train.py's --key=value arguments for a settings dict."""
    return [f"--{k}={v}" if isinstance(v, str) else f"--{k}={v!r}" for k, v in settings.items()]


# ----------------------------------------------------------------------------------------------------
# Checking a study before its first run

def check_study(s, train_settings):
    """Fail, naming the variant, on anything that would fail later: before any run starts."""
    if not s["variants"] and not s["families"]:
        raise UsageError("the study has no variants nor families")
    if CONTROL in s["variants"]:
        raise UsageError(f"{CONTROL!r} is the study's own control: give the variant another name")
    if not s["seeds"] or not all(isinstance(seed, int) for seed in s["seeds"]):
        raise UsageError(f"seeds must be a list of integers, got {s['seeds']!r}")
    if s["eval_tokens"] < 2:
        raise UsageError("eval_tokens must be at least 2")
    val_path = os.path.join(s["data_dir"], "val.bin")
    if not os.path.isfile(val_path):
        raise UsageError(f"{val_path} not found: run data/shakespeare/prepare.py (or set data_dir)")
    shape = teacher_shape(s, train_settings)
    check_train_settings(s["finetune"], train_settings, "finetune")
    s["variants"] = {**s["variants"], **frontier_variants(s, shape)}
    s["questions"] = {**s["questions"], **frontier_questions(s, shape)}
    for name, variant in s["variants"].items():
        where = f"variant {name!r}"
        if not isinstance(variant, dict) or set(variant) - set(VARIANT_KEYS):
            raise UsageError(f"{where}: expected a dict with keys among {', '.join(VARIANT_KEYS)}, got {variant!r}")
        if variant.get("family", "kronecker") not in FAMILIES:
            raise UsageError(f"{where}: family={variant['family']!r} is not one of {', '.join(FAMILIES)}")
        check_student(where, variant, shape)
        if variant.get("init", "vl") not in INIT_NAMES:
            raise UsageError(f"{where}: init={variant['init']!r} is not one of {', '.join(INIT_NAMES)}")
        if set(variant.get("act", {})) - set(ACT_KEYS):
            raise UsageError(f"{where}: act takes {', '.join(ACT_KEYS)}, got {sorted(variant['act'])}")
        distill = variant.get("distill", {})
        if set(distill) - set(DISTILL_KEYS):
            raise UsageError(f"{where}: distill takes {', '.join(DISTILL_KEYS)}, got {sorted(distill)}")
        check_train_settings({**distill, **variant.get("finetune", {})}, train_settings, where, allow=DISTILL_KEYS)
    for title, (baseline, names) in s["questions"].items():
        for name in [baseline, *names]:
            if name not in s["variants"]:
                raise UsageError(f"question {title!r} names the unknown variant {name!r}")


def check_student(where, variant, shape):
    """The variant's student can be made from a teacher of this shape: its plan (after keep_blocks), or its dense
    shape."""
    from model import GPTConfig
    plan = variant.get("plan", {})
    student_made_otherwise = bool(set(variant) & {"keep_blocks", "dense", "candidates", "allocate"})
    if not isinstance(plan, dict) or set(plan) - {*PLAN_SETTINGS, "rank"} or \
            (not student_made_otherwise and not set(plan) - {"kron_layers"}):
        raise UsageError(f"{where}: plan must name matrices with the settings {', '.join(PLAN_SETTINGS)}, rank, got "
                         f"{plan!r}")
    if "dense" in variant:
        if set(variant) & {"plan", "keep_blocks", "init", "act"}:
            raise UsageError(f"{where}: a dense student starts from scratch: it takes no plan, keep_blocks, init nor "
                             f"act")
        try:
            GPTConfig(block_size=shape.block_size, vocab_size=shape.vocab_size, **variant["dense"])
        except (TypeError, ValueError) as e:
            raise UsageError(f"{where}: dense={variant['dense']!r}: {one_line(e)}") from None
        return
    n_layer = shape.n_layer
    with usage_errors(where):
        if "keep_blocks" in variant:
            n_layer = len(parse_blocks(",".join(map(str, variant["keep_blocks"])), shape.n_layer))
        Plan.from_settings(shape.n_embd, n_layer, shape.vocab_size, **plan).check_init(variant.get("init", "vl"))


def check_train_settings(settings, train_settings, where, allow=()):
    for key, value in settings.items():
        if key in RUN_OWNED and key not in allow:
            raise UsageError(f"{where}: {key} is set by study.py for every run")
        try:
            checked(key, value, train_settings, where)
        except ConfigError as e:
            raise UsageError(str(e)) from None


def teacher_shape(s, train_settings):
    """The teacher's GPTConfig, from its checkpoint or config.json, or from teacher_config's settings."""
    from checkpoints import load_model_config
    from model import GPTConfig
    if s["teacher"]:
        return load_model_config(s["teacher"], what=f"teacher={s['teacher']!r}")
    if not s["teacher_config"]:
        raise UsageError("set teacher (a model source) or teacher_config (a train.py config to train it)")
    try:
        c = load_config(train_settings, [s["teacher_config"], *settings_args(s["teacher_overrides"])])
    except ConfigError as e:
        raise UsageError(f"teacher_config: {e}") from None
    itos = read_vocab(s["data_dir"])  # the teacher is trained on the study's data: its characters, if any
    return GPTConfig(**{k: c[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias")},
                     vocab_size=len(itos) if itos else c["vocab_size"])


# ----------------------------------------------------------------------------------------------------
# The frontier: each family matched to each budget
#
# A family is a way to spend a budget of parameters (without wpe) that a user would pick instead of another:
#   kronecker    the MLPs factored in one shape in every block (c_fc's A dim_1 x dim_2, c_proj's its transpose):
#                of the shapes within the budget (outer products excluded: they are lowrank), the one of least
#                summed error proxy over the teacher's MLPs (compress.allocation_options): the output error on
#                the calibration tokens for init act, the Van Loan error of the weights otherwise (the paper's);
#                init vl, vl_norm, prune or act
#   lowrank      rank-r factors of both MLP matrices in every block: the truncated SVD (init vl), or act's fit
#                from the whitened SVD
#   monarch      both MLP matrices Monarch matrices in every block (monarch.py), c_fc of b_fc blocks and c_proj
#                of b_proj (any two divisors of n_embd; between two sizes the first blocks of the larger, so that
#                budgets between powers of two are met): their projection (init vl), or act's fit from the
#                projection of the whitened W
#   allocated    every block's four matrices (MLP and attention) each in its own Kronecker shape, rank or dense,
#                the least total error proxy within the budget (kron_decompose.py --allocate; priced as kronecker)
#   drop_blocks  k of the teacher's blocks, spread evenly (DistilGPT2's every other block), copied; no init
#   dense        a smaller GPT from scratch: narrower (vary="width"; as many of the teacher's heads as divide the
#                width) or shallower (vary="depth")
# Each family's spec takes the variant keys init, act, distill and finetune (dense: no init nor act), `at`, the
# budgets it runs at (default: all), and the keys of its row in FAMILY_KEYS. A family's sizes function gives
# [(parameters without wpe, what makes the student)], or [(None, ...)] for a student chosen from the teacher's
# weights when it is made (make_student).

def dense_params(n_embd, n_layer, shape):
    """Parameters without wpe of a dense GPT of the teacher's vocabulary and bias."""
    parts = Plan(n_embd, n_layer, shape.vocab_size).count_parts(shape.block_size, shape.bias)
    return sum(parts.values()) - parts["position"]


def spread_blocks(n_layer, k):
    """k of n_layer blocks spread evenly from the first: half of them is every other one (0, 2, 4, ...)."""
    return [i * n_layer // k for i in range(k)]


def tolerance(budget, shape):
    """How far a variant may be from its budget: BUDGET_TOLERANCE of the budget's parameters outside the token
    embedding, which no family but a narrower dense one changes (all but 2% of the char teacher's parameters; a
    small GPT-2-token teacher's embedding is most of its own, and 3% of it would be more than a block)."""
    return BUDGET_TOLERANCE * (budget - shape.vocab_size * shape.n_embd)


def kronecker_candidates(shape, budget):
    """[(dim_1, dim_2, factors)] of every MLP shape, outer products excluded, within the budget's tolerance."""
    n, n_layer = shape.n_embd, shape.n_layer
    rest = dense_params(n, n_layer, shape) - n_layer * 8 * n * n  # everything but the MLPs' weights
    found = []
    for dim_1 in divisors(n):
        for dim_2 in divisors(4 * n):
            if is_outer_product("c_fc", (dim_1, dim_2, 1), n, shape.vocab_size):
                continue
            per_factor = 2 * n_layer * (dim_1 * dim_2 + (n // dim_1) * (4 * n // dim_2))  # c_fc's and c_proj's
            for factors in range(1, max_factors(n, 4 * n, dim_1, dim_2) + 1):
                if abs(rest + factors * per_factor - budget) <= tolerance(budget, shape):
                    found.append((dim_1, dim_2, factors))
    return found


def kronecker_sizes(shape, budget, spec):
    candidates = kronecker_candidates(shape, budget)
    return [(None, {"candidates": candidates})] if candidates else []


def lowrank_sizes(shape, budget, spec):
    n, n_layer = shape.n_embd, shape.n_layer
    rest = dense_params(n, n_layer, shape) - n_layer * 8 * n * n
    return [(rest + 10 * n * r * n_layer, {"plan": {"rank": {"c_fc": r, "c_proj": r}}}) for r in range(1, n + 1)]


def monarch_sizes(shape, budget, spec):
    """Every block's MLP of one pair of block counts at most a factor of two apart, and, between two such sizes next
    to each other, the first k blocks of the larger pair and the rest of the smaller (the budgets between them in
    steps of a block). A matrix of one block stays dense: dense holds every matrix, in fewer weights."""
    n, n_layer = shape.n_embd, shape.n_layer
    rest = dense_params(n, n_layer, shape) - n_layer * 8 * n * n

    def weights(nblocks):  # c_fc's or c_proj's: a Monarch matrix has min(n, 4n) * (n + 4n) / nblocks
        return 4 * n * n if nblocks == 1 else 5 * n * n // nblocks
    per_block = {weights(b_fc) + weights(b_proj): (b_fc, b_proj)  # of two pairs of one size, the later
                 for b_fc in divisors(n) for b_proj in divisors(n) if max(b_fc, b_proj) <= 2 * min(b_fc, b_proj)}
    sizes = sorted(per_block)

    def setting(pairs):  # train.py's monarch setting of each block's (c_fc, c_proj) counts, a count of 1 left dense
        return {"plan": {"monarch": written({(name, layer): count for layer, pair in enumerate(pairs)
                                             for name, count in zip(("c_fc", "c_proj"), pair) if count > 1},
                                            n_layer)}}
    found = [(rest + n_layer * size, setting([per_block[size]] * n_layer))
             for size in sizes if per_block[size] != (1, 1)]
    for small, large in zip(sizes, sizes[1:]):
        for k in range(1, n_layer):
            pairs = [per_block[large]] * k + [per_block[small]] * (n_layer - k)
            found.append((rest + k * large + (n_layer - k) * small, setting(pairs)))
    return found


def allocated_sizes(shape, budget, spec):
    return [(None, {"allocate": list(BLOCK_MATRICES)})]


def drop_blocks_sizes(shape, budget, spec):
    return [(dense_params(shape.n_embd, k, shape), {"keep_blocks": spread_blocks(shape.n_layer, k)})
            for k in range(1, shape.n_layer)]


def dense_sizes(shape, budget, spec):
    n, n_layer = shape.n_embd, shape.n_layer
    vary = spec.get("vary", "width")
    if vary == "depth":
        return [(dense_params(n, k, shape), {"dense": {"n_layer": k, "n_head": shape.n_head, "n_embd": n}})
                for k in range(1, n_layer)]
    if vary != "width":
        raise ValueError(f"vary={vary!r} is not width or depth")
    heads = {w: max(h for h in divisors(w) if h <= shape.n_head) for w in range(1, n)}  # heads that divide w
    return [(dense_params(w, n_layer, shape), {"dense": {"n_layer": n_layer, "n_embd": w, "n_head": heads[w]}})
            for w in range(1, n)]


FAMILIES = {  # name: (its sizes, the spec keys it takes beyond the common ones)
    "kronecker": (kronecker_sizes, ()),
    "lowrank": (lowrank_sizes, ()),
    "drop_blocks": (drop_blocks_sizes, ()),
    "dense": (dense_sizes, ("vary",)),
    "allocated": (allocated_sizes, ()),
    "monarch": (monarch_sizes, ()),
}
FAMILY_SPEC_KEYS = ("family", "at", "init", "act", "distill", "finetune")


def match_family(name, spec, budget, shape):
    """The variant of family spec whose parameters without wpe are nearest `budget`, with the size it has; a
    UsageError when none is within BUDGET_TOLERANCE. A student chosen from the teacher's weights is matched when
    it is made (budget's "matched" is None)."""
    family = spec.get("family")
    if family not in FAMILIES:
        raise UsageError(f"family {name!r}: family={family!r} is not one of {', '.join(FAMILIES)}")
    sizes, own_keys = FAMILIES[family]
    if set(spec) - {*FAMILY_SPEC_KEYS, *own_keys}:
        raise UsageError(f"family {name!r}: takes {', '.join((*FAMILY_SPEC_KEYS, *own_keys))}; got {sorted(spec)}")
    common = {key: spec[key] for key in ("init", "act", "distill", "finetune") if key in spec}
    with usage_errors(f"family {name!r}"):
        sized = sizes(shape, budget, spec)
    if sized and sized[0][0] is None:
        return {"family": family, **common, **sized[0][1], "budget": {"params_no_wpe": budget, "matched": None}}
    if not sized or min(abs(p - budget) for p, _ in sized) > tolerance(budget, shape):
        nearest = f"; its nearest size is {min(sized, key=lambda c: abs(c[0] - budget))[0]:,}" if sized else ""
        raise UsageError(f"family {name!r} ({family}) has no variant within {tolerance(budget, shape):,.0f} "
                         f"parameters ({BUDGET_TOLERANCE:.0%} of those outside wte) of the budget of {budget:,} "
                         f"parameters without wpe{nearest}")
    params, student = min(sized, key=lambda c: abs(c[0] - budget))
    return {"family": family, **common, **student, "budget": {"params_no_wpe": budget, "matched": params}}


def teacher_params_no_wpe(shape):
    parts = shape.plan.count_parts(shape.block_size, shape.bias)
    return sum(parts.values()) - parts["position"]


def budget_name(fraction):
    return f"{100 * fraction:.1f}".rstrip("0").rstrip(".") + "%"


def frontier_variants(s, shape):
    """{name @ budget: variant} of every family at every budget, each printed with the budget it was matched to."""
    if bool(s["budgets"]) != bool(s["families"]):
        raise UsageError("a frontier needs both budgets (fractions of the teacher's parameters without wpe) and "
                         "families")
    if not all(isinstance(b, (int, float)) and 0 < b < 1 for b in s["budgets"]):
        raise UsageError(f"budgets must be fractions between 0 and 1 of the teacher's parameters, got {s['budgets']}")
    total, embedding = teacher_params_no_wpe(shape), shape.vocab_size * shape.n_embd
    smallest = min(s["budgets"], default=1)
    if smallest * total <= embedding:
        raise UsageError(f"budget {smallest} is {round(smallest * total):,} parameters without wpe, no more than the "
                         f"teacher's token embedding alone ({embedding:,})")
    variants = {}
    for name, spec in s["families"].items():
        if not set(spec.get("at", [])) <= set(s["budgets"]):
            raise UsageError(f"family {name!r}: at={spec['at']} names a budget not in budgets={s['budgets']}")
    for fraction in s["budgets"]:
        for name, spec in s["families"].items():
            if fraction not in spec.get("at", s["budgets"]):
                continue
            variant = match_family(name, spec, round(fraction * total), shape)
            variants[f"{name} @{budget_name(fraction)}"] = variant
    for name, variant in variants.items():
        budget = variant["budget"]
        matched = f"matched with {budget['matched']:,} ({budget['matched'] / budget['params_no_wpe'] - 1:+.1%})" \
            if budget["matched"] is not None else f"{pricing(variant)}, chosen from the teacher's weights: " + \
            (f"of {len(variant['candidates'])} shapes within {tolerance(budget['params_no_wpe'], shape):,.0f}"
             if "candidates" in variant else f"every shape and rank of {', '.join(variant['allocate'])} within it")
        print(f"{name}: budget {budget['params_no_wpe']:,} parameters without wpe, {matched}", flush=True)
    return variants


def frontier_questions(s, shape):
    """A question per budget: every family there against the first."""
    total = teacher_params_no_wpe(shape)
    names = list(s["families"])
    return {f"At {budget_name(f)} of the teacher's parameters ({round(f * total):,} without wpe)":
            (f"{names[0]} @{budget_name(f)}", [f"{name} @{budget_name(f)}" for name in names[1:]
                                               if f in s["families"][name].get("at", s["budgets"])])
            for f in s["budgets"]}


def pricing(variant):
    """What a student chosen from the teacher's weights is chosen by: what it computes for init act, else its
    weights."""
    return "the least output error on the calibration tokens, scaled to the loss" if variant.get("init") == "act" else \
        "the least Van Loan error of the weights"


def least_error_shape(teacher, candidates, calibration=None):
    """Of the MLP shapes (dim_1, dim_2, factors), the plan of least summed price over the teacher's c_fc and c_proj,
    the allocator's: the squared relative error of the closed form, with calibration of the matrix's outputs
    scaled to what each matrix costs the loss (compress.calibrated_options), else of its weights."""
    from compress import allocation_options, calibrated_options
    config = teacher.config
    options = calibrated_options(teacher, ["c_fc", "c_proj"], calibration) if calibration is not None else \
        allocation_options(teacher, ["c_fc", "c_proj"])
    error = {place: {shape: e for _, e, shape in opts} for place, opts in options.items()}

    def total(shape):
        a, b, f = shape
        return sum(error["c_fc", block][a, b, f] + error["c_proj", block][b, a, f] for block in range(config.n_layer))
    dim_1, dim_2, factors = min(candidates, key=total)
    return Plan.from_settings(config.n_embd, config.n_layer, config.vocab_size, dim_1=dim_1, dim_2=dim_2,
                              factors=factors)


# ----------------------------------------------------------------------------------------------------
# Runs

def score(model_path, s, out_path, log_path):
    """perplexity.py on the held-out prefix: (perplexity, None) or (None, the failure)."""
    if not os.path.exists(out_path):
        error = run_step(["perplexity.py", model_path, os.path.join(s["data_dir"], "val.bin"),
                          f"--max_tokens={s['eval_tokens']}", f"--device={s['device']}", "--out", out_path], log_path)
        if error:
            return None, error
    return next(iter(read_json(out_path)["datasets"].values()))["perplexity"], None


def make_student(variant, teacher_model, teacher, init_path, data_dir, device="cpu", rivals=None):
    """The variant's student, made as kron_decompose.py makes it (the same seed for init random; init act
    calibrated on data_dir's train.bin, fitted on `device`), saved at init_path; None on success, else why it
    failed. An allocated student is checked against `rivals`, {family: its student's init.pt} (rival_students):
    the one of least loss on the calibration windows is kept (least_loss_student), and what each scored is written
    beside init_path in allocation.json."""
    import torch
    from checkpoints import load_model, load_vocab, make_checkpoint, save_checkpoint
    from compress import compress, keep_blocks
    from devices import setup_device
    from model import GPT, GPTConfig
    init = variant.get("init", "vl")
    act = {"calibration_tokens": CALIBRATION_TOKENS, "act_steps": ACT_STEPS, "act_lr": ACT_LR, "act_sweeps": 0,
           **variant.get("act", {})}
    family = {key: variant[key] for key in ("family", "keep_blocks", "dense", "budget") if key in variant}
    if "dense" in variant:  # from scratch: GPT's own init, the same for every seed
        torch.manual_seed(1337)
        t = teacher_model.config
        student = GPT(GPTConfig(block_size=t.block_size, vocab_size=t.vocab_size, bias=t.bias, **variant["dense"]))
        save_checkpoint(make_checkpoint(student, load_vocab(teacher), init={"teacher": teacher, "method": "scratch",
                                                                            **family}), init_path)
        return None
    if "keep_blocks" in variant:
        teacher_model = keep_blocks(teacher_model, list(variant["keep_blocks"]))
    config = teacher_model.config
    try:
        calibration = None
        if init == "act" or "allocate" in variant:  # the allocated student is checked on them whatever its init
            calibration = torch.from_numpy(read_calibration(os.path.join(data_dir, "train.bin"),
                                                            act["calibration_tokens"], config.block_size,
                                                            config.vocab_size))
        plan = chosen_plan(variant, teacher_model, calibration if init == "act" else None)
        torch.manual_seed(1337)
        t0 = time.time()
        student = compress(teacher_model, plan, init, calibration=calibration, act_steps=act["act_steps"],
                           act_lr=act["act_lr"], act_sweeps=act["act_sweeps"],
                           act_device=setup_device(device) if init == "act" else "cpu")
        chosen_by = {"chosen_by": pricing(variant)} if set(variant) & {"candidates", "allocate"} else {}
        if "allocate" in variant:
            candidates = {"allocated": student, **{family: load_model(path) for family, path in (rivals or {}).items()}}
            won, student, losses = least_loss_student(candidates, calibration)
            plan = student.config.plan
            chosen_by["allocation"] = {"won": won, "calibration_loss": losses}
            write_json(chosen_by["allocation"], os.path.join(os.path.dirname(init_path), "allocation.json"))
        info = {"teacher": teacher, "method": init, "kron": plan.to_kron(), "seconds": time.time() - t0,
                **chosen_by, **(act if init == "act" else {}), **family}
        # the teacher's characters, if any: train.py refuses a model whose characters are not the dataset's
        save_checkpoint(make_checkpoint(student, load_vocab(teacher), init=info), init_path)
    except (ValueError, OSError) as e:
        return f"making the student failed: {one_line(e)}"
    return None


def least_loss_student(students, calibration):
    """(name, student, {name: loss}) of the student of least mean loss on the calibration windows (train.bin's,
    never the held-out tokens) among {name: student}, the first on a tie: the allocated family's knapsack prices
    each matrix by a proxy, so its plan is kept only where it starts at least as well as each family's best."""
    from compress import calibration_loss
    losses = {name: calibration_loss(student.eval(), calibration) for name, student in students.items()}
    won = min(losses, key=losses.get)
    return won, students[won], losses


RIVAL_FAMILIES = ("kronecker", "lowrank", "monarch")


def rival_students(name, variant, s, teacher, open_teacher):
    """{family: init.pt} of each of RIVAL_FAMILIES at the allocated variant's budget with its init and act, made
    first where not yet: the study's own variant of that family, budget, init and act where it has one (its
    student is the same), else one matched here (match_family) and made in the variant's folder; a family with no
    size within the budget's tolerance has none. A string when one fails to be made: why."""
    budget = variant["budget"]["params_no_wpe"]
    same = {key: variant[key] for key in ("init", "act") if key in variant}
    paths = {}
    for family in RIVAL_FAMILIES:
        sibling = next((other for other, v in s["variants"].items() if v.get("family") == family
                        and v.get("budget", {}).get("params_no_wpe") == budget
                        and (v.get("init", "vl"), v.get("act", {})) == (same.get("init", "vl"), same.get("act", {}))),
                       None)
        if sibling is not None:
            rival, path = s["variants"][sibling], os.path.join(s["out_dir"], "runs", sibling, "init.pt")
        else:
            try:
                rival = match_family(f"{name}'s rival", {"family": family, **same}, budget, open_teacher().config)
            except UsageError:
                continue
            path = os.path.join(s["out_dir"], "runs", name, f"rival {family}.pt")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            error = make_student(rival, open_teacher(), teacher, path, s["data_dir"], s["device"])
            if error is not None:
                return f"its {family} rival: {error}"
        paths[family] = path
    return paths


def chosen_plan(variant, teacher_model, calibration):
    """The variant's plan: its own, or chosen from the teacher's weights (priced with calibration, if any)."""
    from compress import allocated_plan
    config = teacher_model.config
    if "candidates" in variant:
        return least_error_shape(teacher_model, variant["candidates"], calibration)
    if "allocate" in variant:
        budget = variant["budget"]["params_no_wpe"]
        plan = allocated_plan(teacher_model, variant["allocate"], budget, calibration)
        if plan is None:
            raise ValueError(f"no plan of {', '.join(variant['allocate'])} fits {budget:,} parameters without wpe")
        return plan
    return Plan.from_settings(config.n_embd, config.n_layer, config.vocab_size, **variant.get("plan", {}))


def run_variant(name, variant, s, teacher, open_teacher):
    """Make the student once, score the init, then fine-tune and score each seed; returns the variant's results.
    open_teacher() gives the teacher model (opened once, only if some student is still to be made)."""
    folder = os.path.join(s["out_dir"], "runs", name)
    os.makedirs(folder, exist_ok=True)
    init_path = os.path.join(folder, "init.pt")
    result = {"variant": name, "family": variant.get("family", "kronecker"), "runs": {},
              **({"budget": variant["budget"]} if "budget" in variant else {})}
    error = None
    if not os.path.exists(init_path):
        rivals = rival_students(name, variant, s, teacher, open_teacher) if "allocate" in variant else None
        error = rivals if isinstance(rivals, str) else \
            make_student(variant, open_teacher(), teacher, init_path, s["data_dir"], s["device"], rivals)
    allocation_path = os.path.join(folder, "allocation.json")
    if error is None and os.path.exists(allocation_path):
        result["allocation"] = read_json(allocation_path)
    if error is None:
        result["init_perplexity"], error = score(init_path, s, os.path.join(folder, "init_ppl.json"),
                                                 os.path.join(folder, "init_ppl.log"))
    if error is not None:
        return {**result, "error": error}
    result.update(model_size(init_path))
    for seed in s["seeds"]:
        result["runs"][seed] = run_seed(folder, init_path, variant, seed, s, teacher)
    result["perplexity_per_seed"] = finetuned(result)
    return result


def run_control(s, teacher, teacher_perplexity):
    """The teacher fine-tuned with the study's settings and seeds (the same batches as every variant), no variant's
    own settings: what fine-tuning alone does to a model, with nothing compressed."""
    result = {"variant": CONTROL, "family": "control", "init_perplexity": teacher_perplexity, **model_size(teacher),
              "runs": {}}
    for seed in s["seeds"]:
        result["runs"][seed] = run_seed(os.path.join(s["out_dir"], "control"), teacher, {}, seed, s, teacher)
    result["perplexity_per_seed"] = finetuned(result)
    return result


def model_size(source):
    """The parameters of a model source, in all and of its MLPs, attention and embedding, and the multiply-adds per
    token of its weight matrices (every block's and lm_head's, each factored one in the order its layer runs:
    Plan.flops)."""
    from checkpoints import load_model_config
    config = load_model_config(source)
    parts = config.plan.count_parts(config.block_size, config.bias)
    shapes = {place: shape for place, shape in config.plan.shapes.items() if place[1] is not None}  # not wte
    rank = sum(is_outer_product(name, shape, config.n_embd, config.vocab_size) for (name, _), shape in shapes.items())
    factored = {"rank": rank, "kronecker": len(shapes) - rank, "monarch": len(config.plan.monarch)}
    return {"parameters": sum(parts.values()), "params_no_wpe": sum(parts.values()) - parts["position"],
            "plan": str(config.plan), "n_layer": config.n_layer, "n_embd": config.n_embd,
            "macs_per_token": config.plan.flops(), "factored": factored,
            **{f"{part}_parameters": parts[part] for part in ("mlp", "attention", "embedding")}}


def run_seed(folder, init_from, variant, seed, s, teacher):
    """One fine-tuning run and its score, or the result.json it left when it finished before."""
    run_dir = os.path.join(folder, f"seed{seed}")
    result_path = os.path.join(run_dir, "result.json")
    if os.path.exists(result_path):
        return read_json(result_path)
    os.makedirs(run_dir, exist_ok=True)
    distill = variant.get("distill", {})
    settings = {**s["finetune"], **variant.get("finetune", {}), **distill,
                "teacher": teacher if distill else "", "init_from": init_from, "out_dir": run_dir, "seed": seed,
                "data_dir": s["data_dir"], "device": s["device"], "overwrite": True}
    error = run_step(["train.py", *settings_args(settings)], os.path.join(run_dir, "train.log"))
    perplexity = None
    if error is None:
        perplexity, error = score(os.path.join(run_dir, "ckpt.pt"), s, os.path.join(run_dir, "ppl.json"),
                                  os.path.join(run_dir, "ppl.log"))
    if error is not None:
        return {"status": "failed", "error": error}  # not saved: a restart tries it again
    records = read_metrics(run_dir)
    ms = [r["ms_per_iter"] for r in records if "ms_per_iter" in r]
    result = {"status": "ok", "perplexity": perplexity, "ms_per_iter": sum(ms) / len(ms) if ms else None,
              "val_loss": [[r["iter"], r["val_loss"]] for r in records if "val_loss" in r]}
    write_json(result, result_path)
    return result


# ----------------------------------------------------------------------------------------------------
# Timing: every model in this one process, in turns, so that the ratios hold whatever the machine's load

def time_models(sources, batch_size, block_size, rounds):
    """{name: {"step_ms", "decode_ms_per_token"}} of each model source: a training step (forward, backward, AdamW)
    on a batch of the fine-tuning's shape, and greedy decoding of DECODE_TOKENS tokens after PROMPT_TOKENS,
    batch 1, with transformers' generate() and its KV cache (the factored export's model for a factored one, the
    dense one otherwise), float32; medians of `rounds` rounds, the models timed in turns."""
    import tempfile

    from bench import median_seconds
    from checkpoints import load_model
    from krony_to_gpt import to_hf, to_hf_factored
    steps, decodes, new_tokens = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, source) in enumerate(sources.items()):
            model = load_model(source)
            vocab_size, context = model.config.vocab_size, min(block_size, model.config.block_size)
            folder = os.path.join(tmp, str(i))
            os.makedirs(folder)
            hf_model = to_hf_factored(model, folder) if model.config.plan else to_hf(model)
            new_tokens[name] = min(DECODE_TOKENS, model.config.block_size - PROMPT_TOKENS)  # within the context
            steps[name] = train_step(model.train(), vocab_size, batch_size, context)
            decodes[name] = decode(hf_model, vocab_size, new_tokens[name])
        step_s = median_seconds(steps, "cpu", rounds, 1)
        decode_s = median_seconds(decodes, "cpu", rounds, 1)
    return {name: {"step_ms": 1e3 * step_s[name], "decode_ms_per_token": 1e3 * decode_s[name] / new_tokens[name],
                   "decode_tokens": new_tokens[name]} for name in sources}


def train_step(model, vocab_size, batch_size, block_size):
    import torch
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, vocab_size, (batch_size, block_size), generator=generator) for _ in range(2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
        optimizer.step()
    return step


def decode(hf_model, vocab_size, new_tokens):
    import torch
    prompt = torch.randint(0, vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(1))

    def run():
        with torch.inference_mode():
            hf_model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              attention_mask=torch.ones_like(prompt), pad_token_id=0)
    return run


# ----------------------------------------------------------------------------------------------------
# Results

def finetuned(variant_result):
    """{seed: perplexity} of the variant's finished runs."""
    return {int(seed): run["perplexity"] for seed, run in variant_result["runs"].items() if run["status"] == "ok"}


def paired_differences(results, baseline, name):
    """[(seed, perplexity of name - perplexity of baseline)] over the seeds both finished."""
    base, other = finetuned(results[baseline]), finetuned(results[name])
    return [(seed, other[seed] - base[seed]) for seed in sorted(base) if seed in other]


def compare(results, baseline, name):
    """name's paired differences to baseline with their mean, range and verdict (a range that includes zero is no
    difference); None where no seed finished for both."""
    diffs = paired_differences(results, baseline, name)
    if not diffs:
        return None
    values = [d for _, d in diffs]
    low, high = min(values), max(values)
    return {"per_seed": dict(diffs), "mean": sum(values) / len(values), "low": low, "high": high,
            "verdict": "no difference" if low <= 0 <= high else "better" if high < 0 else "worse"}


def comparisons(s, results):
    """Every variant against the control, and each question's variants against its baseline."""
    return {"to_control": {name: compare(results, CONTROL, name) for name in s["variants"]},
            "questions": {title: {"baseline": baseline, "to_baseline": {name: compare(results, baseline, name)
                                                                       for name in names}}
                          for title, (baseline, names) in s["questions"].items()}}


def spread(values):
    return f"{sum(values) / len(values):.2f} ({min(values):.2f} to {max(values):.2f})"


def difference_cells(comparison):
    """The per seed, mean, range and verdict cells of a comparison."""
    if comparison is None:
        return "no paired runs | | |"
    return (f"{', '.join(f'{seed}: {d:+.2f}' for seed, d in comparison['per_seed'].items())} "
            f"| {comparison['mean']:+.2f} | {comparison['low']:+.2f} to {comparison['high']:+.2f} "
            f"| {comparison['verdict']}")


def results_markdown(s, results, compared, teacher_perplexity):
    lines = [f"# {os.path.basename(os.path.normpath(s['out_dir']))}: results", "",
             f"Teacher {s['teacher'] or s['teacher_config']}: val perplexity {teacher_perplexity:.2f} on the first "
             f"{s['eval_tokens']:,} tokens of {os.path.join(s['data_dir'], 'val.bin')}; seeds {s['seeds']}. "
             f"Perplexities as mean (min to max) over seeds. The {CONTROL} is the teacher given the same "
             "fine-tuning as every variant.", "",
             "| variant | parameters | MLP | attention | embedding | val ppl at init | val ppl fine-tuned "
             "| / teacher | train ms/step |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    if s["budgets"]:
        lines[4:4] = frontier_markdown(s, results, compared) + [""]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | | |")
            continue
        ppl = list(finetuned(r).values())
        failed = [f"seed {seed} failed: {run['error']}" for seed, run in r["runs"].items() if run["status"] != "ok"]
        ms = [run["ms_per_iter"] for run in r["runs"].values() if run.get("ms_per_iter")]
        finetuned_text = "; ".join(([spread(ppl)] if ppl else []) + failed)
        ratio = f"{sum(ppl) / len(ppl) / teacher_perplexity:.3f}" if ppl else "-"
        lines.append(f"| {name} | {r['parameters']:,} | {r['mlp_parameters']:,} | {r['attention_parameters']:,} "
                     f"| {r['embedding_parameters']:,} | {r['init_perplexity']:.2f} | {finetuned_text} | {ratio} "
                     f"| {f'{sum(ms) / len(ms):.0f}' if ms else '-'} |")
    lines += ["", "## Every variant against the control", "", "Paired differences in fine-tuned val perplexity to "
              f"the {CONTROL}, seed by seed (negative: better than the teacher fine-tuned alike): what the "
              "compression costs once the fine-tuning itself is accounted for.", "",
              "| variant | per seed | mean | range | verdict |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {difference_cells(comparison)} |" for name, comparison in compared["to_control"].items()]
    for title, question in compared["questions"].items():
        lines += ["", f"## {title}", "", f"Paired differences in fine-tuned val perplexity to {question['baseline']}, "
                  "seed by seed (negative: better than the baseline); a range that includes zero is no difference. "
                  "The last column: the same to the control, mean (range).", "",
                  "| variant | per seed | mean | range | verdict | to the control |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, comparison in question["to_baseline"].items():
            to_control = compared["to_control"][name]
            control_cell = f"{to_control['mean']:+.2f} ({to_control['low']:+.2f} to {to_control['high']:+.2f})" \
                if to_control else "no paired runs"
            lines.append(f"| {name} | {difference_cells(comparison)} | {control_cell} |")
    return "\n".join(lines) + "\n"


def student_text(r, variant):
    """What the student is: its plan, the blocks it kept, or its dense shape."""
    if variant.get("family") == "dense":
        return f"{r['n_layer']} blocks, n_embd {r['n_embd']}, from scratch"
    kept = f"blocks {','.join(map(str, variant['keep_blocks']))} of the teacher's" if "keep_blocks" in variant else ""
    plan = "" if r["plan"] == "dense" else allocated_text(r) if "allocate" in variant else r["plan"]
    return " + ".join(part for part in (kept, plan) if part) or "the teacher's"


def allocated_text(r):
    """An allocated plan in a table's cell: how many matrices are rank-r factors, Kronecker products, Monarch
    matrices or dense (the whole plan is in the variant's init.pt), or the rival family whose student started with
    less calibration loss and so was kept in its place."""
    won = r.get("allocation", {}).get("won", "allocated")
    if won != "allocated":
        return f"{won}'s student (less calibration loss than the allocation's): {r['plan']}"
    counts = r["factored"]
    dense = 4 * r["n_layer"] - sum(counts.values())
    return (f"allocated: {counts['kronecker']} Kronecker, {counts['rank']} rank-r, {counts['monarch']} Monarch, "
            f"{dense} dense of {4 * r['n_layer']} matrices")


def frontier_markdown(s, results, compared):
    """The frontier table: each budget's families with their size, perplexity, cost to the control and speed."""
    control = results[CONTROL]
    lines = ["## The frontier", "", f"Each family matched to each budget (parameters without wpe, within "
             f"{BUDGET_TOLERANCE:.0%}), fine-tuned on the same tokens. To the control: paired differences in "
             "fine-tuned perplexity, mean (range over seeds). Step and decode times: medians of rounds in which every "
             f"model ran in turn, in one process (decode: batch 1, KV cache, greedy, {DECODE_TOKENS} new tokens, "
             f"float32), as ratios to the control's (the teacher: {control['step_ms']:.1f} ms/step, "
             f"{control['decode_ms_per_token']:.2f} ms/token). Multiply-adds per token: of every weight matrix "
             "(the blocks' and lm_head; attention's scores, which grow with the context, left out), each factored "
             "one counted in the contraction order its layer runs, and their ratio to the teacher's "
             f"({control['macs_per_token']:,}).", "",
             "| budget | variant | family | student | params without wpe | ppl at init | ppl fine-tuned "
             "| to the control | multiply-adds per token | step (x teacher) | decode (x teacher) |",
             "| --- " * 11 + "|"]
    for name, variant in s["variants"].items():
        if "budget" not in variant:
            continue
        r, budget = results[name], variant["budget"]["params_no_wpe"]
        if "error" in r:
            lines.append(f"| {budget:,} | {name} | {variant['family']} | failed: {r['error']} | | | | | | | |")
            continue
        ppl = list(finetuned(r).values())
        c = compared["to_control"][name]
        to_control = f"{c['mean']:+.2f} ({c['low']:+.2f} to {c['high']:+.2f})" if c else "-"
        step = r["step_ms"] / control["step_ms"]
        decode = r["decode_ms_per_token"] / control["decode_ms_per_token"]
        lines.append(f"| {budget:,} | {name} | {variant['family']} | {student_text(r, variant)} "
                     f"| {r['params_no_wpe']:,} ({r['params_no_wpe'] / budget - 1:+.1%}) | {r['init_perplexity']:.2f} "
                     f"| {spread(ppl) if ppl else '-'} | {to_control} "
                     f"| {r['macs_per_token']:,} ({r['macs_per_token'] / control['macs_per_token']:.2f}) "
                     f"| {step:.2f} | {decode:.2f} |")
    return lines


def plot_results(s, results, teacher_perplexity, teacher_parameters):
    curves = {}
    for name, r in results.items():  # the mean val loss over the seeds at each evaluation
        by_iter = {}
        for run in r.get("runs", {}).values():
            for it, loss in run.get("val_loss", []):
                by_iter.setdefault(it, []).append(loss)
        curves[name] = [(it, sum(v) / len(v)) for it, v in sorted(by_iter.items())]
    panels = {title: {f"{baseline} (baseline)": curves[baseline], **{name: curves[name] for name in names}}
              for title, (baseline, names) in s["questions"].items()}
    if not panels:
        panels["every variant"] = {name: curves[name] for name in s["variants"]}
    for curves_of_a_question in panels.values():
        curves_of_a_question[CONTROL] = curves[CONTROL]
    plot_loss_panels(panels, os.path.join(s["out_dir"], "val_loss.png"),
                     "val loss during fine-tuning (mean over seeds)", reference=CONTROL)
    if s["budgets"]:
        points = [{"family": s["variants"][name]["family"], "parameters": r["params_no_wpe"],
                   "perplexities": list(finetuned(r).values()), "decode_ms": r["decode_ms_per_token"],
                   "step_ms": r["step_ms"], "macs": r["macs_per_token"], "init": s["variants"][name].get("init"),
                   "distilled": bool(s["variants"][name].get("distill", {}).get("distill_alpha"))}
                  for name, r in results.items() if "budget" in s["variants"].get(name, {}) and "error" not in r]
        control = results[CONTROL]
        plot_family_frontier(points, {"parameters": control["params_no_wpe"], "perplexity": teacher_perplexity,
                                      "perplexities": list(finetuned(control).values()),
                                      "decode_ms": control["decode_ms_per_token"], "step_ms": control["step_ms"],
                                      "macs": control["macs_per_token"]},
                             os.path.join(s["out_dir"], "frontier.png"),
                             f"{os.path.basename(os.path.normpath(s['out_dir']))}: families at equal parameters and "
                             "tokens (bars: range over seeds)")
        return
    sizes = {name: (r.get("parameters"), list(finetuned(r).values())) for name, r in results.items()}
    plot_frontier(sizes, (teacher_parameters, teacher_perplexity), os.path.join(s["out_dir"], "frontier.png"),
                  "size against quality (bars: range over seeds)", reference=CONTROL)


@exit_on_usage_error("study.py")
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return
    import train  # its settings table checks the fine-tuning settings
    try:
        s = load_config(STUDY_SETTINGS, argv)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    check_study(s, train.SETTINGS)
    start = time.time()
    os.makedirs(s["out_dir"], exist_ok=True)
    teacher, teacher_seconds = s["teacher"], None
    teacher_score_path = os.path.join(s["out_dir"], "teacher_ppl.json")
    if not teacher:
        teacher_dir = os.path.join(s["out_dir"], "teacher")
        teacher = os.path.join(teacher_dir, "ckpt.pt")
        finished_path = os.path.join(s["out_dir"], "teacher_finished.json")  # train.py saves ckpt.pt at every eval
        if not os.path.exists(finished_path):
            resume = os.path.exists(teacher)  # stopped before its end: hours of training are not thrown away
            print(f"{'resuming' if resume else 'training'} the teacher: {s['teacher_config']} into {teacher_dir}",
                  flush=True)
            error = run_step(["train.py", s["teacher_config"], *settings_args(s["teacher_overrides"]),
                              f"--out_dir={teacher_dir}", f"--device={s['device']}",
                              "--init_from=resume" if resume else "--overwrite=True"],
                             os.path.join(s["out_dir"], "teacher.log"))
            if error:
                raise UsageError(f"the teacher failed: {error}")
            from checkpoints import read_checkpoint
            seconds = read_checkpoint(teacher, mmap=True)["elapsed_s"]  # its training time, stopped runs included
            write_json({"seconds": seconds}, finished_path)
            if os.path.exists(teacher_score_path):  # a score of the teacher trained before
                os.remove(teacher_score_path)
        teacher_seconds = read_json(finished_path)["seconds"]
    teacher_perplexity, error = score(teacher, s, teacher_score_path, os.path.join(s["out_dir"], "teacher_ppl.log"))
    if error:
        raise UsageError(f"scoring the teacher failed: {error}")
    from checkpoints import load_model
    open_teacher = functools.cache(lambda: load_model(teacher, what=f"teacher={teacher!r}"))  # once, if needed
    print(f"{CONTROL}: {len(s['seeds'])} seed(s) ({time.time() - start:.0f} s)", flush=True)
    control = run_control(s, teacher, teacher_perplexity)
    results = {}
    for name, variant in s["variants"].items():
        print(f"{name}: {len(s['seeds'])} seed(s) ({time.time() - start:.0f} s)", flush=True)
        results[name] = run_variant(name, variant, s, teacher, open_teacher)
    rows = {CONTROL: control, **results}  # the control first: every variant is read against it
    sources = {CONTROL: teacher, **{name: os.path.join(s["out_dir"], "runs", name, "init.pt")
                                    for name, r in results.items() if "error" not in r}}
    print(f"timing {len(sources)} models in turns ({time.time() - start:.0f} s)", flush=True)
    settings = {**train.SETTINGS, **{k: (v, None) for k, v in s["finetune"].items()}}
    for name, timing in time_models(sources, settings["batch_size"][0], settings["block_size"][0],
                                     s["timing_rounds"]).items():
        rows[name].update(timing)
    compared = comparisons(s, rows)
    write_json({"study": s, "teacher": teacher, "teacher_perplexity": teacher_perplexity,
                "teacher_parameters": control["parameters"], "teacher_seconds": teacher_seconds,
                "seconds": time.time() - start, "control": control, "variants": results, **compared},
               os.path.join(s["out_dir"], "results.json"))
    markdown = results_markdown(s, rows, compared, teacher_perplexity)
    with open(os.path.join(s["out_dir"], "results.md"), "w") as f:
        f.write(markdown)
    plot_results(s, rows, teacher_perplexity, control["parameters"])
    print(markdown)
    print(f"wrote {s['out_dir']}/results.json, results.md, val_loss.png, frontier.png in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
