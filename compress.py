"""
A and B from dense weights: how kron_decompose.py and train.py initialise a compressed GPT.

compress(teacher, plan, init) is the one way to make a compressed student: a GPT with the teacher's architecture
and the plan's factored matrices (a kron_shapes.Plan), every factored matrix initialised from the teacher's W by
`init` and every other weight copied. materialize(model) multiplies every A and B out: a dense GPT computing the
same function. keep_blocks(teacher, blocks) makes DistilGPT2's kind of student: some of the teacher's blocks,
copied.

Each decomposition takes W (in, out), as in x @ W (wte: vocab x n_embd), and returns A (factors, a_rows,
a_cols) and B (factors, b_rows, b_cols) with kron's index convention
kron(A, B)[i*b_rows + k, j*b_cols + l] = A[i,j] B[k,l]. A Monarch matrix's (monarch.py) vl is its own projection,
monarch.nearest_monarch, and act starts it at the projection of the whitened W (whitened_monarch).
"""

import math
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn as nn
from torch.nn import functional as F
from tqdm import tqdm

from common import ACT_LR, ACT_STEPS, ACT_SWEEPS, INIT_NAMES
from kron_shapes import Plan, allocate, divisors, monarch_params
from kronecker import KroneckerEmbedding, KroneckerLinear, kronecker_sum
from model import GPT, factorable_matrices, weight_of
from monarch import MonarchLinear, middle_routes, monarch_weight, nearest_monarch


def rearrange(W, a_rows, a_cols):
    """Van Loan's rearrangement: row i*a_cols + j is vec(block (i, j) of W), so that sum_r A_r (x) B_r becomes
    sum_r vec(A_r) vec(B_r)^T and the nearest Kronecker sum of W is a truncated SVD of this matrix."""
    b_rows, b_cols = W.shape[0] // a_rows, W.shape[1] // a_cols
    return W.reshape(a_rows, b_rows, a_cols, b_cols).permute(0, 2, 1, 3).reshape(a_rows * a_cols, b_rows * b_cols)


def nearest_kronecker(W, a_rows, a_cols, factors):
    """vl: returns the (A, B) minimising ||W - sum_r A_r (x) B_r||_F (Van Loan-Pitsianis, optimal by
    Eckart-Young), from the top singular triplets (s, u, v) of rearrange(W): A_r = sqrt(s) u, B_r = sqrt(s) v. The
    SVD runs in float64 on the CPU, and each term's sign is fixed so that the largest-magnitude entry of u is
    positive, so that the result is the same across LAPACKs."""
    b_rows, b_cols = W.shape[0] // a_rows, W.shape[1] // a_cols
    U, S, Vh = torch.linalg.svd(rearrange(W.detach().to("cpu", torch.float64), a_rows, a_cols), full_matrices=False)
    U, S, Vh = U[:, :factors], S[:factors], Vh[:factors]
    sign = torch.where(U.gather(0, U.abs().argmax(dim=0, keepdim=True)) < 0, -1.0, 1.0).to(U.dtype)
    U, Vh = U * sign, Vh * sign.T
    A = (U * S.sqrt()).T.reshape(factors, a_rows, a_cols)
    B = (Vh * S.sqrt()[:, None]).reshape(factors, b_rows, b_cols)
    return A.to(W.device, W.dtype), B.to(W.device, W.dtype)


def normalized_kronecker(W, a_rows, a_cols, factors):
    """vl_norm, the paper's modified Van Loan: vl's A and B both scaled by sqrt(c), c = ||W||_F / ||W_vl||_F,
    so that ||W_hat||_F = ||W||_F. The Van Loan terms are orthogonal, so c = sqrt(sum_i s_i^2 / sum_{r<R} s_r^2)
    over the singular values s of rearrange(W): the discarded tail's energy is put back along the kept terms."""
    A, B = nearest_kronecker(W, a_rows, a_cols, factors)
    approx_norm = kronecker_sum(A.double(), B.double()).norm().item()
    if approx_norm == 0:
        return A, B
    root_c = math.sqrt(W.double().norm().item() / approx_norm)
    return A * root_c, B * root_c


def pruned_kronecker(W, a_rows, a_cols, factors):
    """prune, the paper's pruning init, for shapes where B is a single column or row of length k: B_r is the
    one-hot e_r and A_r keeps the rows (B a column) or columns (B a row) r, r+k, r+2k, ... of W, so W_hat is W
    with the other rows or columns zeroed (factors = k keeps them all). The 95M model's c_fc gets
    A = W[0::2, :], B = [[1], [0]]; its c_proj A = W[:, 0::2], B = [[1, 0]]."""
    b_rows, b_cols = W.shape[0] // a_rows, W.shape[1] // a_cols
    if b_rows != 1 and b_cols != 1:
        raise ValueError(f"prune needs B to be a single row or column, got {b_rows}x{b_cols}")
    A = torch.empty(factors, a_rows, a_cols, dtype=W.dtype)
    B = torch.zeros(factors, b_rows, b_cols, dtype=W.dtype)
    for r in range(factors):
        if b_cols == 1:  # kron(A, e_r)[i*b_rows + k, j] = A[i, j] if k == r
            A[r], B[r, r, 0] = W[r::b_rows, :], 1.0
        else:  # kron(A, e_r^T)[i, j*b_cols + l] = A[i, j] if l == r
            A[r], B[r, 0, r] = W[:, r::b_cols], 1.0
    return A, B


DECOMPOSITIONS = {"vl": nearest_kronecker, "vl_norm": normalized_kronecker, "prune": pruned_kronecker}
# Every init by name (common.INIT_NAMES), with the decomposition of W it starts from; None for the two that have
# none: random keeps GPT's own init (W_hat entries of std 0.02, c_proj scaled as GPT-2), and act fits A and B to
# the teacher's outputs on calibration windows (fit_to_calibration, below).
INITS = {name: DECOMPOSITIONS.get(name) for name in INIT_NAMES}
ACT_BATCH_TOKENS = 2048  # per Adam step of init act's fit: as good as 8,192 at a quarter of the cost (progress.md)
CHUNK_TOKENS = 8192  # per chunk of the forward passes over the calibration tokens
MOMENT_TOKENS = 2**15  # of the calibration tokens, for the closed-form start's second moments (Adam uses them all)
SENSITIVITY_TOKENS = 2**14  # of the calibration tokens, for each matrix's cost to the loss (calibrated_options)


def check_act_device(device):
    """Raises ValueError unless init act can fit on `device`: cpu or cuda (mps has no float64 for the whitening)."""
    if torch.device(device).type not in ("cpu", "cuda"):
        raise ValueError(f"init act fits on cpu or cuda, not {device}: its whitening needs float64")


@torch.no_grad()
def compress(teacher: GPT, plan: Plan, init: str = "vl", progress: bool = False,
             calibration: torch.Tensor | None = None, act_steps: int = ACT_STEPS, act_lr: float = ACT_LR,
             act_sweeps: int = ACT_SWEEPS, act_device: str = "cpu") -> GPT:
    """Returns the student, on the CPU in float32: a GPT with the teacher's architecture and the plan's factored
    matrices, each initialised from the teacher's W (dense or itself factored) by `init`. Every matrix the plan
    leaves dense is the teacher's W and every other weight is copied, so an empty plan gives a dense copy.

    init act fits A and B to the teacher's outputs on `calibration`, token windows (n, t) from
    common.read_calibration, with act_steps, act_lr and act_sweeps (fit_to_calibration), on act_device; init
    random draws from torch's global RNG. A plan, init or device that cannot be used raises ValueError before any
    work."""
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {', '.join(INITS)}")
    if init == "act" and calibration is None:
        raise ValueError("init=act fits the factors to the teacher's outputs: it needs calibration tokens")
    if init == "act":
        check_act_device(act_device)
    plan.check_init(init)
    student = GPT(teacher.config.with_plan(plan))
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for name, tensor in student_state.items():  # LayerNorms, biases, wpe and dense weights; factors come below
        if name in teacher_state and not name.endswith((".A", ".B", ".in_factor", ".out_factor")):
            tensor.copy_(teacher_state[name])
    pairs = list(zip(factorable_matrices(teacher), factorable_matrices(student)))
    for (_, _, source), (_, _, target) in tqdm(pairs, desc=f"{init} {plan}", unit="matrix", disable=not progress):
        if type(source) is type(target) and not isinstance(target, (KroneckerLinear, KroneckerEmbedding,
                                                                    MonarchLinear)):
            continue  # dense in both: copied above
        W = weight_of(source).detach().to("cpu", torch.float32)
        if isinstance(target, nn.Linear):
            target.weight.copy_(W.t())
        elif isinstance(target, nn.Embedding):
            target.weight.copy_(W)
        elif isinstance(target, MonarchLinear):
            if init == "vl":  # act starts from its own closed form, random keeps GPT's init
                in_factor, out_factor = nearest_monarch(W, target.nblocks)
                target.in_factor.copy_(in_factor)
                target.out_factor.copy_(out_factor)
        elif INITS[init] is not None:
            A, B = INITS[init](W, target.A.shape[1], target.A.shape[2], target.A.shape[0])
            target.A.copy_(A)
            target.B.copy_(B)
    if init == "act":
        fit_to_calibration(teacher, student, calibration, act_steps, act_lr, act_sweeps, progress, act_device)
    return student


@torch.no_grad()
def keep_blocks(teacher, blocks):
    """Returns a GPT of the teacher's blocks `blocks` only (teacher block indices, in that order, renumbered
    0..k-1), with every weight copied exactly, the embeddings and the final norm too, and each kept block's plan.
    Its config's teacher_blocks records the indices, in the numbering of the teacher's own teacher when the teacher
    was itself such a student."""
    config = teacher.config
    shapes = {(name, None if block is None else blocks.index(block)): shape
              for (name, block), shape in config.plan.shapes.items() if block is None or block in blocks}
    monarch = {(name, blocks.index(block)): n for (name, block), n in config.plan.monarch.items() if block in blocks}
    plan = Plan(config.n_embd, len(blocks), config.vocab_size, shapes, monarch)
    held = [config.teacher_blocks[b] for b in blocks] if config.teacher_blocks else list(blocks)
    student = GPT(replace(config, n_layer=len(blocks), plan=plan, teacher_blocks=held))
    teacher_state = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        source = key
        if key.startswith("transformer.h."):
            index, rest = key[len("transformer.h."):].split(".", 1)
            source = f"transformer.h.{blocks[int(index)]}.{rest}"
        state[key] = teacher_state[source]
    student.load_state_dict(state, strict=True)
    return student


def materialize(model):
    """Returns a dense GPT computing the same function: every sum of Kronecker products multiplied out."""
    config = model.config
    return compress(model, Plan(config.n_embd, config.n_layer, config.vocab_size))


@torch.no_grad()
def weight_errors(teacher, student):
    """Returns the relative weight error ||W - W_hat||_F / ||W||_F of every matrix the student factors, keyed "wte"
    or "h.<block>.<matrix>"."""
    errors = {}
    for (name, block, source), (_, _, target) in zip(factorable_matrices(teacher), factorable_matrices(student)):
        if student.config.plan.factored(name, block):
            W = weight_of(source).double()
            errors[name if block is None else f"h.{block}.{name}"] = \
                ((W - weight_of(target).double()).norm() / W.norm()).item()
    return errors


# ----------------------------------------------------------------------------------------------------
# Output-aware fitting, the core of init act: A and B that minimise the error of what the layer computes on
# calibration inputs x of second moment C = E[x x^T], E||x W - x W_hat||^2 = tr((W - W_hat)^T C (W - W_hat)),
# rather than ||W - W_hat||_F.
# x's index i*b_rows + k runs over A's rows i and B's rows k, so C = C4[i, k, i', k'] viewed as a matrix.

def output_error(W, A, B, C):
    """Returns tr((W - W_hat)^T C (W - W_hat)) in float64: the mean squared output error over inputs of second
    moment C."""
    D = W.double() - kronecker_sum(A.double(), B.double())
    return (D * (C.double() @ D)).sum().item()


def symmetric_root(M, floor):
    """Returns (M^(1/2), M^(-1/2)) of a symmetric matrix M, its eigenvalues raised to at least `floor`, so that it
    never gives a NaN where a Cholesky factor of a nearly singular M would fail."""
    values, vectors = torch.linalg.eigh((M + M.T) / 2)
    values = values.clamp_min(floor)
    return (vectors * values.sqrt()) @ vectors.T, (vectors / values.sqrt()) @ vectors.T


def kronecker_moment(C, a_rows):
    """Returns (C1, C2), symmetric a_rows x a_rows and b_rows x b_rows matrices whose C1 (x) C2 is nearest C: Van
    Loan's rank 1 of C's rearrangement. For a positive semidefinite C both are too, up to a common sign, which is
    fixed here."""
    b_rows = C.shape[0] // a_rows
    U, S, Vh = torch.linalg.svd(rearrange(C, a_rows, a_rows), full_matrices=False)
    C1, C2 = (U[:, 0] * S[0].sqrt()).reshape(a_rows, a_rows), (Vh[0] * S[0].sqrt()).reshape(b_rows, b_rows)
    if C1.trace() < 0:
        C1, C2 = -C1, -C2
    return (C1 + C1.T) / 2, (C2 + C2.T) / 2


def whiten(W, C, a_rows, ridge=1e-6):
    """Returns (S W, S1^-1, S2^-1) in float64, with S = S1 (x) S2 = C1^(1/2) (x) C2^(1/2) and C1 (x) C2 nearest C.
    ||S D||_F^2 approximates tr(D^T C D), and S (A (x) B) = (S1 A) (x) (S2 B), so Van Loan's decomposition of S W
    approximately minimises the output error."""
    W, C = W.double(), C.double()
    b_rows = W.shape[0] // a_rows
    C1, C2 = kronecker_moment(C, a_rows)
    # a ridge relative to each factor's mean eigenvalue: directions the inputs never take still cost a little
    (S1, S1_inv), (S2, S2_inv) = [symmetric_root(M, ridge * M.trace().clamp_min(1e-300) / len(M)) for M in (C1, C2)]
    return torch.einsum("ia,kb,abo->iko", S1, S2, W.reshape(a_rows, b_rows, -1)).reshape(W.shape), S1_inv, S2_inv


def whitened_kronecker(W, C, a_rows, a_cols, factors, ridge=1e-6):
    """The closed form: Van Loan's decomposition of the whitened S W (see whiten), un-whitened. Exact when C is a
    Kronecker product C1 (x) C2, since then tr(D^T C D) = ||S D||_F^2; with C = I it is Van Loan's W_hat."""
    whitened, S1_inv, S2_inv = whiten(W, C, a_rows, ridge)
    A, B = nearest_kronecker(whitened, a_rows, a_cols, factors)
    return torch.einsum("ia,raj->rij", S1_inv, A), torch.einsum("kb,rbl->rkl", S2_inv, B)


def whitened_monarch(W, C, nblocks, ridge=1e-6):
    """The closed form of init act for a Monarch matrix: nearest_monarch of S W, S = diag(S_k) whitening each input
    block by the root of its own second moment C_kk, un-whitened by in_factor[k] = S_k^-1 in_factor[k] (the first
    factor is block-diagonal over the same input blocks). Exact when C is block-diagonal; with C = I it is vl."""
    W, C = W.double(), C.double()
    in_block = W.shape[0] // nblocks
    roots = [symmetric_root(M, ridge * M.trace().clamp_min(1e-300) / len(M))
             for M in (C[k * in_block:(k + 1) * in_block, k * in_block:(k + 1) * in_block] for k in range(nblocks))]
    whitened = torch.cat([S @ W[k * in_block:(k + 1) * in_block] for k, (S, _) in enumerate(roots)])
    in_factor, out_factor = nearest_monarch(whitened, nblocks)
    return torch.stack([S_inv @ in_factor[k] for k, (_, S_inv) in enumerate(roots)]), out_factor


@torch.no_grad()
def balance_monarch(module, per_entry=False):
    """balance_factors for a MonarchLinear: each middle feature's column of in_factor and row of out_factor
    rescaled, (c u) (x) (v / c), so that the function is unchanged, to equal norms (or, with per_entry, entries of
    equal root mean square)."""
    nblocks, in_block, mid_block = module.in_factor.shape
    l, r, _ = middle_routes(nblocks, mid_block)
    in_norms = module.in_factor.norm(dim=1)  # (k, j)
    out_norms = module.out_factor.norm(dim=2)[l, r]  # the row each middle feature (k, j) goes to
    if per_entry:
        in_norms, out_norms = in_norms / in_block ** 0.5, out_norms / module.out_factor.shape[2] ** 0.5
    scale = torch.where((in_norms > 0) & (out_norms > 0), (out_norms / in_norms).sqrt(), torch.ones_like(in_norms))
    module.in_factor.mul_(scale[:, None, :])
    module.out_factor[l, r] = module.out_factor[l, r] / scale[..., None]


def frequency_kronecker(W, counts, a_rows, a_cols, factors, ridge=1e-6):
    """whitened_kronecker for an embedding's rows, whose one-hot inputs have the diagonal second moment C = diag(p),
    p the tokens' calibration frequencies: C1 (x) C2 = diag(p1 (x) p2) from the rank-1 SVD of p as an
    a_rows x b_rows matrix, and the whitening is a scaling of rows (no vocab x vocab matrix is ever built). A row
    never seen costs the ridge, not nothing."""
    W, p = W.double(), counts.double() / counts.sum()
    b_rows = W.shape[0] // a_rows
    U, S, Vh = torch.linalg.svd(p.reshape(a_rows, b_rows), full_matrices=False)
    p1, p2 = (U[:, 0] * S[0].sqrt()).abs(), (Vh[0] * S[0].sqrt()).abs()
    r1, r2 = [q.clamp_min(ridge * q.mean().clamp_min(1e-300)).sqrt() for q in (p1, p2)]
    whitened = (r1[:, None, None] * r2[None, :, None] * W.reshape(a_rows, b_rows, -1)).reshape(W.shape)
    A, B = nearest_kronecker(whitened, a_rows, a_cols, factors)
    return A / r1[None, :, None], B / r2[None, :, None]


def fit_a(W, C, B, a_rows, ridge=1e-9):
    """The A minimising tr((W - sum_r A_r (x) B_r)^T C (...)) for fixed B: a linear least-squares problem whose
    normal equations G vec(A) = h are built from C and W alone (no calibration data kept)."""
    r, b_rows, b_cols = B.shape
    a_cols = W.shape[1] // b_cols
    C4 = C.reshape(a_rows, b_rows, a_rows, b_rows)
    P = (C @ W).reshape(a_rows, b_rows, a_cols, b_cols)  # E[x y^T]
    G = torch.einsum("rskm,ikjm->risj", torch.einsum("rkl,sml->rskm", B, B), C4).reshape(r * a_rows, r * a_rows)
    h = torch.einsum("rkl,ikjl->rij", B, P).reshape(r * a_rows, a_cols)
    G = G + ridge * G.trace() / len(G) * torch.eye(len(G), dtype=G.dtype, device=G.device)
    return torch.linalg.solve(G, h).reshape(r, a_rows, a_cols)


def fit_b(W, C, A, b_rows, ridge=1e-9):
    """The B minimising the same objective for fixed A (fit_a's mirror)."""
    r, a_rows, a_cols = A.shape
    b_cols = W.shape[1] // a_cols
    C4 = C.reshape(a_rows, b_rows, a_rows, b_rows)
    P = (C @ W).reshape(a_rows, b_rows, a_cols, b_cols)
    G = torch.einsum("rsim,ikmn->rksn", torch.einsum("rij,smj->rsim", A, A), C4).reshape(r * b_rows, r * b_rows)
    h = torch.einsum("rij,ikjl->rkl", A, P).reshape(r * b_rows, b_cols)
    G = G + ridge * G.trace() / len(G) * torch.eye(len(G), dtype=G.dtype, device=G.device)
    return torch.linalg.solve(G, h).reshape(r, b_rows, b_cols)


def alternating_least_squares(W, C, A, B, sweeps, ridge=1e-9):
    """Returns (A, B, objectives) after `sweeps` rounds of fit_a then fit_b from (A, B), in float64. The objective
    is checked after every sweep and never increases: a sweep that would raise it (round-off, the ridge) is undone,
    and the refinement stops there. objectives[0] is the start's."""
    W, C, A, B = W.double(), C.double(), A.double(), B.double()
    objectives = [output_error(W, A, B, C)]
    for _ in range(sweeps):
        new_A = fit_a(W, C, B, A.shape[1], ridge)
        new_B = fit_b(W, C, new_A, B.shape[1], ridge)
        objective = output_error(W, new_A, new_B, C)
        if not objective <= objectives[-1]:
            break
        A, B = new_A, new_B
        objectives.append(objective)
    return A, B, objectives


# ----------------------------------------------------------------------------------------------------
# init act: A and B fitted to what the blocks compute on calibration inputs, not to the weights (progress.md
# compares the variants). Each factored matrix starts at whitened_kronecker of the inputs it sees, then Adam fits
# the whole sublayer (the MLP with its GELU, or attention with its causal mask) to the teacher's outputs, from A
# and B balanced entry by entry; they end balanced as vl's are. Sequential, as GPTQ: block b is fitted on inputs
# computed by the already compressed blocks 0..b-1, so each fit also absorbs the error of the blocks before it.

def in_chunks(function, x, size):
    return torch.cat([function(x[i:i + size]) for i in range(0, len(x), size)])


@contextmanager
def input_moments(modules):
    """Within the with-block, accumulate E[x x^T] of the inputs each of `modules` ({name: module}) sees; the dict
    yielded is filled with them (float64) on exit."""
    sums, counts, moments = {}, {}, {}

    def accumulate(name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + (x.T @ x).double()
            counts[name] = counts.get(name, 0) + len(x)
        return hook

    handles = [module.register_forward_pre_hook(accumulate(name)) for name, module in modules.items()]
    try:
        yield moments
    finally:
        for handle in handles:
            handle.remove()
    moments.update({name: sums[name] / counts[name] for name in sums})


@torch.no_grad()
def teacher_input_moments(teacher, modules, calibration):
    """Returns {name: E[x x^T]} of the inputs each of `modules` (the teacher's own, {name: module}) sees while the
    teacher, in eval mode, runs over the calibration windows (n, t) in chunks; the teacher's mode is restored."""
    was_training = teacher.training
    teacher.eval()
    chunk = max(1, CHUNK_TOKENS // calibration.shape[1])
    with input_moments(modules) as moments:
        for i in range(0, len(calibration), chunk):
            teacher.residual_stream(calibration[i:i + chunk])
    teacher.train(was_training)
    return moments


def relative_output_error(outputs, targets):
    """Returns sum ||y_hat - y||^2 / sum ||y||^2."""
    return ((outputs - targets).square().sum() / targets.square().sum()).item()


@torch.no_grad()
def balance_factors(module, per_entry=False):
    """Rescale each term of a KroneckerLinear or KroneckerEmbedding, A_r (x) B_r = (c A_r) (x) (B_r / c), so that
    the function is unchanged: to ||A_r||_F = ||B_r||_F, vl's balance, or with per_entry to entries of equal root
    mean square, so that a step of Adam (about the same size on every entry) changes A_r and B_r by the same
    fraction. The whitening and Adam leave A_r several times B_r's norm, and such terms fit and fine-tune worse
    (progress.md)."""
    a_norms, b_norms = module.A.flatten(1).norm(dim=1), module.B.flatten(1).norm(dim=1)
    if per_entry:
        a_norms, b_norms = a_norms / module.A[0].numel() ** 0.5, b_norms / module.B[0].numel() ** 0.5
    scale = torch.where((a_norms > 0) & (b_norms > 0), (b_norms / a_norms).sqrt(), torch.ones_like(a_norms))
    module.A.mul_(scale[:, None, None])
    module.B.div_(scale[:, None, None])


def fit_sublayer(teacher_part, student_part, inputs, steps, lr, sweeps, batch, chunk, generator, desc, progress):
    """Fit student_part (the block's attention or MLP, with its factored matrices) to teacher_part's outputs on
    `inputs` (n, t, n_embd). Every factored matrix starts at whitened_kronecker of what the teacher's matrix sees
    on the first MOMENT_TOKENS, refined by `sweeps` of alternating_least_squares (common.ACT_SWEEPS says why none
    by default), with A and B balanced entry by entry; then `steps` of Adam on all of student_part's parameters
    minimise the mean squared error, `batch` sequences per step (forward passes in chunks of `chunk`). Adam's
    result is kept only if it beats the start. Returns the relative output errors (start, end) and student_part's
    outputs on `inputs`. A Monarch matrix starts at whitened_monarch instead, without sweeps."""
    teacher_modules = dict(teacher_part.named_modules())
    factored = {name: m for name, m in student_part.named_modules() if isinstance(m, (KroneckerLinear, MonarchLinear))}
    moment_rows = max(1, MOMENT_TOKENS // inputs.shape[1])  # the second moments of 3072-wide inputs cost the most
    with input_moments({name: teacher_modules[name] for name in factored}) as moments:
        targets = in_chunks(teacher_part, inputs[:moment_rows], chunk)
    if moment_rows < len(inputs):
        targets = torch.cat([targets, in_chunks(teacher_part, inputs[moment_rows:], chunk)])
    for name, target in factored.items():
        W = weight_of(teacher_modules[name])
        if isinstance(target, MonarchLinear):
            in_factor, out_factor = whitened_monarch(W, moments[name], target.nblocks)
            target.in_factor.copy_(in_factor)
            target.out_factor.copy_(out_factor)
            balance_monarch(target, per_entry=True)
            continue
        A, B = whitened_kronecker(W, moments[name], *target.A.shape[1:], target.A.shape[0])
        A, B, _ = alternating_least_squares(W, moments[name], A, B, sweeps)
        target.A.copy_(A)
        target.B.copy_(B)
        balance_factors(target, per_entry=True)
    start_outputs = in_chunks(student_part, inputs, chunk)
    start = relative_output_error(start_outputs, targets)
    start_state = {key: value.clone() for key, value in student_part.state_dict().items()}
    with torch.enable_grad():
        optimizer = torch.optim.Adam(student_part.parameters(), lr=lr)
        for step in tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False):
            for group in optimizer.param_groups:  # cosine from lr to lr / 10
                group["lr"] = lr * (0.55 + 0.45 * math.cos(math.pi * step / steps))
            rows = torch.randint(len(inputs), (batch,), generator=generator).to(inputs.device)
            loss = F.mse_loss(student_part(inputs[rows]), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    outputs = in_chunks(student_part, inputs, chunk)
    end = relative_output_error(outputs, targets)
    if not end < start:  # an exact start (a full-rank plan) or a rate too large: keep the start
        student_part.load_state_dict(start_state)
        return start, start, start_outputs
    return start, end, outputs


@torch.no_grad()
def fit_to_calibration(teacher, student, calibration, steps=ACT_STEPS, lr=ACT_LR, sweeps=ACT_SWEEPS,
                       progress=False, device="cpu"):
    """Runs init act on a student whose unfactored weights are the teacher's (compress does this): a factored wte by
    frequency_kronecker, then block by block each factored sublayer by fit_sublayer, on the calibration windows
    (n, t) run through the student as compressed so far; every term is balanced at the end (balance_factors).
    On `device`; the student comes back on the CPU, the teacher where it was. Returns {"h.<block>.attn" or ".mlp":
    (start, end)}."""
    n, t = calibration.shape
    teacher_device = next(teacher.parameters()).device
    teacher.to(device), student.to(device)
    calibration = calibration.to(device)
    batch, chunk = max(1, ACT_BATCH_TOKENS // t), max(1, CHUNK_TOKENS // t)
    generator = torch.Generator().manual_seed(0)
    modes = teacher.training, student.training
    teacher.eval(), student.eval()  # no dropout in the targets nor in the fit
    wte = student.transformer.wte
    if isinstance(wte, KroneckerEmbedding):
        counts = torch.bincount(calibration.flatten(), minlength=student.config.vocab_size)
        A, B = frequency_kronecker(weight_of(teacher.transformer.wte), counts, *wte.A.shape[1:], wte.A.shape[0])
        wte.A.copy_(A)
        wte.B.copy_(B)
    positions = student.transformer.wpe(torch.arange(t, device=device))
    x = in_chunks(lambda ids: wte(ids) + positions, calibration, chunk)
    errors = {}
    blocks = zip(teacher.transformer.h, student.transformer.h)
    for b, (teacher_block, student_block) in enumerate(tqdm(blocks, total=student.config.n_layer, desc="act",
                                                              unit="block", disable=not progress)):
        for part, norm in (("attn", student_block.ln_1), ("mlp", student_block.ln_2)):
            student_part = getattr(student_block, part)
            inputs = in_chunks(norm, x, chunk)
            if any(isinstance(m, (KroneckerLinear, MonarchLinear)) for m in student_part.modules()):
                start, end, outputs = fit_sublayer(getattr(teacher_block, part), student_part, inputs, steps, lr,
                                                   sweeps, batch, chunk, generator, f"act: block {b} {part}", progress)
                errors[f"h.{b}.{part}"] = start, end
            else:
                outputs = in_chunks(student_part, inputs, chunk)
            x = x + outputs
    for module in student.modules():
        if isinstance(module, (KroneckerLinear, KroneckerEmbedding)):
            balance_factors(module)
        elif isinstance(module, MonarchLinear):
            balance_monarch(module)
    teacher.train(modes[0]), student.train(modes[1])
    teacher.to(teacher_device), student.to("cpu")
    return errors


@torch.no_grad()
def output_errors(teacher, student, calibration):
    """Returns tr(D^T C D) / tr(W^T C W) of every matrix the student factors, keyed "wte" or
    "h.<block>.<matrix>", with D = W - W_hat and C the second moment of the inputs the teacher's matrix sees on the
    calibration windows (for wte the tokens' frequencies): the relative error of what the matrix computes, where
    weight_errors weighs every direction alike."""
    modules = {f"h.{block}.{name}": (source, target) for (name, block, source), (_, _, target)
               in zip(factorable_matrices(teacher), factorable_matrices(student))
               if block is not None and student.config.plan.factored(name, block)}
    moments = teacher_input_moments(teacher, {key: source for key, (source, _) in modules.items()}, calibration)
    errors = {}
    if student.config.plan.shape("wte"):
        p = torch.bincount(calibration.flatten(), minlength=student.config.vocab_size).double()
        W = weight_of(teacher.transformer.wte).double()
        D = W - weight_of(student.transformer.wte).double()
        errors["wte"] = ((p @ D.square().sum(1)) / (p @ W.square().sum(1))).item()
    for key, (source, target) in modules.items():
        W, C = weight_of(source).double(), moments[key]
        D = W - weight_of(target).double()
        errors[key] = (D * (C @ D)).sum().item() / (W * (C @ W)).sum().item()
    return errors


# ----------------------------------------------------------------------------------------------------
# A budget allocated across blocks (kron_decompose.py --allocate): every candidate shape and factor count of every
# matrix priced by the error its decomposition leaves, and kron_shapes.allocate choosing within the budget.

MONARCH = "monarch"  # an allocation option's choice ("monarch", nblocks): a Monarch matrix of nblocks blocks


def monarch_error(W, nblocks, C=None):
    """The squared relative error of a Monarch matrix's closed form of W: of its weights, ||W - W_hat||_F^2 /
    ||W||_F^2 for nearest_monarch (exact per pair of blocks), or given C of its outputs, tr(D^T C D) / tr(W^T C W)
    for whitened_monarch, init act's start."""
    W = W.double()
    if C is None:
        D = W - monarch_weight(*nearest_monarch(W, nblocks))
        return (D.square().sum() / W.square().sum()).item()
    C = C.double()
    D = W - monarch_weight(*whitened_monarch(W, C, nblocks))
    return ((D * (C @ D)).sum() / (W * (C @ W)).sum()).item()


@torch.no_grad()
def allocation_options(teacher, names, calibration=None):
    """Returns {(name, block): [(parameters, error, choice)]} for every block's matrices in `names`, the choice
    (a_rows, a_cols, factors), ("monarch", nblocks) or None (W itself): each valid A shape and factor count with
    fewer parameters than W, priced by the relative error of Van Loan's decomposition, the tail of the squared
    singular values of W's rearrangement over their sum (with calibration, of the whitened W of
    whitened_kronecker: the output error under C ~ C1 (x) C2); each Monarch matrix with fewer parameters than W,
    priced by monarch_error (with calibration, its output error); and W itself (its parameters, error 0)."""
    modules = {(name, block): module for name, block, module in factorable_matrices(teacher)
               if block is not None and name in names}
    moments = teacher_input_moments(teacher, modules, calibration) if calibration is not None else {}
    options = {}
    for (name, block), module in modules.items():
        W = weight_of(module).detach().double()
        in_features, out_features = W.shape
        options[name, block] = [(in_features * out_features, 0.0, None)]
        for a_rows in divisors(in_features):
            whitened = whiten(W, moments[name, block], a_rows)[0] if moments else W
            for a_cols in divisors(out_features):
                b_rows, b_cols = in_features // a_rows, out_features // a_cols
                per_factor = a_rows * a_cols + b_rows * b_cols
                energy = torch.linalg.svdvals(rearrange(whitened, a_rows, a_cols)).square()
                tail = (energy.sum() - energy.cumsum(0)) / energy.sum()
                for factors in range(1, min(len(energy), (in_features * out_features - 1) // per_factor) + 1):
                    options[name, block].append((factors * per_factor, tail[factors - 1].item(),
                                                 (a_rows, a_cols, factors)))
        for nblocks in divisors(math.gcd(in_features, out_features)):
            params = monarch_params(name, nblocks, teacher.config.n_embd, teacher.config.vocab_size)
            if params < in_features * out_features:
                options[name, block].append((params, monarch_error(W, nblocks, moments.get((name, block))),
                                             (MONARCH, nblocks)))
    return options


def allocation_plan(config, chosen):
    """The Plan of an allocation's choices {(name, block): (a_rows, a_cols, factors), ("monarch", nblocks) or
    None (dense)}."""
    shapes = {place: shape for place, shape in chosen.items() if shape is not None and shape[0] != MONARCH}
    monarch = {place: shape[1] for place, shape in chosen.items() if shape is not None and shape[0] == MONARCH}
    return Plan(config.n_embd, config.n_layer, config.vocab_size, shapes, monarch)


@torch.no_grad()
def calibration_loss(model, windows, chunk=1024):
    """The model's mean next-token loss over calibration windows (n, t), `chunk` tokens at a time (a GPT-2
    vocabulary's logits are large)."""
    rows = max(1, chunk // windows.shape[1])
    losses = [model(windows[i:i + rows, :-1], windows[i:i + rows, 1:])[1] * len(windows[i:i + rows])
              for i in range(0, len(windows), rows)]
    return (sum(losses) / len(windows)).item()


@torch.no_grad()
def calibrated_options(teacher, names, calibration):
    """allocation_options(teacher, names, calibration), each matrix's proxies scaled to what they cost the model:
    by the rise of the teacher's loss on SENSITIVITY_TOKENS of the calibration windows when that matrix alone is
    replaced by its closed-form rank-r factors of half its weights, over that option's proxy. The proxy alone
    weighs every matrix alike, a matrix whose error the rest of the model absorbs as much as one whose error it
    does not. A rise is floored at 1% of the largest, so that no matrix is priced free. A dense teacher's matrices
    only."""
    options = allocation_options(teacher, names, calibration)
    modules = {(name, block): module for name, block, module in factorable_matrices(teacher)
               if block is not None and name in names}
    if not all(type(module) is nn.Linear for module in modules.values()):
        raise ValueError(f"the loss-calibrated allocation prices a dense teacher's {', '.join(names)}")
    moments = teacher_input_moments(teacher, modules, calibration)
    windows = calibration[:max(1, SENSITIVITY_TOKENS // calibration.shape[1])]
    was_training = teacher.training
    teacher.eval()
    base = calibration_loss(teacher, windows)
    rises, references = {}, {}
    for place, module in modules.items():
        W = weight_of(module).detach().double()
        in_features, out_features = W.shape
        rank = max(1, in_features * out_features // (2 * (in_features + out_features)))
        references[place] = next(error for _, error, shape in options[place] if shape == (in_features, 1, rank))
        A, B = whitened_kronecker(W, moments[place], in_features, 1, rank)
        saved = module.weight.detach().clone()
        module.weight.copy_(kronecker_sum(A, B).t())
        rises[place] = calibration_loss(teacher, windows) - base
        module.weight.copy_(saved)
    teacher.train(was_training)
    floor = 0.01 * max(max(rises.values()), 1e-12)
    return {place: [(params, error * max(rises[place], floor) / max(references[place], 1e-12), shape)
                    for params, error, shape in opts] for place, opts in options.items()}


def allocated_plan(teacher, names, params_no_wpe, calibration=None):
    """The plan of least total price (with calibration calibrated_options, else allocation_options' weight error)
    whose model has at most params_no_wpe parameters without wpe, choosing for every block's `names` matrices
    among every valid Kronecker shape and factor count (rank-r factors, the outer-product shapes, included), every
    Monarch matrix and W itself; None when even the smallest plan is larger."""
    config = teacher.config
    options = calibrated_options(teacher, names, calibration) if calibration is not None else \
        allocation_options(teacher, names)
    parts = Plan(config.n_embd, config.n_layer, config.vocab_size).count_parts(config.block_size, config.bias)
    fixed = sum(parts.values()) - parts["position"] - sum(opts[0][0] for opts in options.values())
    chosen = allocate(options, params_no_wpe - fixed)
    if chosen is None:
        return None
    return allocation_plan(config, chosen)
