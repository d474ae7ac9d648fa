"""
Kronecker factors from dense weights: how kron_decompose.py and train.py initialise a compressed GPT.

compress(teacher, plan, init) is the one way to make a compressed student: a GPT with the teacher's architecture
and the plan's factored matrices (a kron_shapes.Plan), every factored matrix initialised from the teacher's W by
`init` and every other weight copied. materialize(model) multiplies every factor out: a dense GPT computing the
same function.

Each decomposition takes W (in, out), as in x @ W (wte: vocab x n_embd), and returns A (factors, a_rows,
a_cols) and B (factors, b_rows, b_cols) with kron's index convention
kron(A, B)[i*b_rows + k, j*b_cols + l] = A[i,j] B[k,l].
"""

import math

import torch
import torch.nn as nn
from tqdm import tqdm

from kron_shapes import INIT_NAMES, Plan
from kronecker import KroneckerEmbedding, KroneckerLinear, kronecker_sum
from model import GPT, factorable_matrices, weight_of


def rearrange(W, a_rows, a_cols):
    """Van Loan's rearrangement: row i*a_cols + j is vec(block (i, j) of W), so that sum_r A_r (x) B_r becomes
    sum_r vec(A_r) vec(B_r)^T and the nearest Kronecker sum of W is a truncated SVD of this matrix."""
    b_rows, b_cols = W.shape[0] // a_rows, W.shape[1] // a_cols
    return W.reshape(a_rows, b_rows, a_cols, b_cols).permute(0, 2, 1, 3).reshape(a_rows * a_cols, b_rows * b_cols)


def nearest_kronecker(W, a_rows, a_cols, factors):
    """vl: (A, B) minimising ||W - sum_r A_r (x) B_r||_F (Van Loan-Pitsianis, optimal by Eckart-Young): the top
    singular triplets (s, u, v) of rearrange(W), A_r = sqrt(s) u, B_r = sqrt(s) v. A float64 SVD on the CPU, each
    pair's sign fixed so that the largest-magnitude entry of u is positive: deterministic across LAPACKs."""
    b_rows, b_cols = W.shape[0] // a_rows, W.shape[1] // a_cols
    U, S, Vh = torch.linalg.svd(rearrange(W.detach().to("cpu", torch.float64), a_rows, a_cols), full_matrices=False)
    U, S, Vh = U[:, :factors], S[:factors], Vh[:factors]
    sign = torch.where(U.gather(0, U.abs().argmax(dim=0, keepdim=True)) < 0, -1.0, 1.0).to(U.dtype)
    U, Vh = U * sign, Vh * sign.T
    A = (U * S.sqrt()).T.reshape(factors, a_rows, a_cols)
    B = (Vh * S.sqrt()[:, None]).reshape(factors, b_rows, b_cols)
    return A.to(W.dtype), B.to(W.dtype)


def normalized_kronecker(W, a_rows, a_cols, factors):
    """vl_norm, the paper's modified Van Loan: the vl factors both scaled by sqrt(c), c = ||W||_F / ||W_vl||_F,
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


INITS = {  # name -> decomposition; `random` keeps GPT's own init (W_hat entries of std 0.02, c_proj scaled as GPT-2)
    "vl": nearest_kronecker,
    "vl_norm": normalized_kronecker,
    "prune": pruned_kronecker,
    "random": None,
}
assert tuple(INITS) == INIT_NAMES, "kron_shapes.INIT_NAMES lists the inits for --list, which needs no torch"


@torch.no_grad()
def compress(teacher, plan, init="vl", progress=False):
    """A GPT with the teacher's architecture and `plan` (a Plan for the teacher's shape; an empty one gives a dense
    GPT): every factored matrix initialised from the teacher's W (dense or itself factored) by `init`, every matrix
    the plan leaves dense set to the teacher's W, every other weight copied. On the CPU in float32; `random` draws
    from torch's global RNG. Raises ValueError on a plan or init that cannot be used, before any work."""
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {', '.join(INITS)}")
    plan.check_init(init)
    student = GPT(teacher.config.with_plan(plan))
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for name, tensor in student_state.items():  # LayerNorms, biases, wpe and dense weights; factors come below
        if name in teacher_state and not name.endswith((".A", ".B")):
            tensor.copy_(teacher_state[name])
    pairs = list(zip(factorable_matrices(teacher), factorable_matrices(student)))
    for (_, _, source), (_, _, target) in tqdm(pairs, desc=f"{init} {plan}", unit="matrix", disable=not progress):
        if type(source) is type(target) and not isinstance(target, (KroneckerLinear, KroneckerEmbedding)):
            continue  # dense in both: copied above
        W = weight_of(source).detach().to("cpu", torch.float32)
        if isinstance(target, nn.Linear):
            target.weight.copy_(W.t())
        elif isinstance(target, nn.Embedding):
            target.weight.copy_(W)
        elif INITS[init] is not None:
            A, B = INITS[init](W, target.A.shape[1], target.A.shape[2], target.A.shape[0])
            target.A.copy_(A)
            target.B.copy_(B)
    return student


def materialize(model):
    """A dense GPT computing the same function: every Kronecker factor multiplied out."""
    config = model.config
    return compress(model, Plan(config.n_embd, config.n_layer, config.vocab_size))


@torch.no_grad()
def weight_errors(teacher, student):
    """{"wte" or "h.<block>.<matrix>": ||W - W_hat||_F / ||W||_F} of every matrix the student factors."""
    errors = {}
    for (name, block, source), (_, _, target) in zip(factorable_matrices(teacher), factorable_matrices(student)):
        if student.config.plan.shape(name, block):
            W = weight_of(source).double()
            errors[name if block is None else f"h.{block}.{name}"] = \
                ((W - weight_of(target).double()).norm() / W.norm()).item()
    return errors


# ----------------------------------------------------------------------------------------------------
# Output-aware fitting, the core of the data-aware init (issue 21; calibration and the `act` init build on it):
# factors that minimise the error of what the layer computes on calibration inputs x of second moment
# C = E[x x^T], E||x W - x W_hat||^2 = tr((W - W_hat)^T C (W - W_hat)), rather than ||W - W_hat||_F.
# x's index i*b_rows + k runs over A's rows i and B's rows k, so C = C4[i, k, i', k'] viewed as a matrix.

def output_error(W, A, B, C):
    """tr((W - W_hat)^T C (W - W_hat)) in float64: the mean squared output error over inputs of second moment C."""
    D = W.double() - kronecker_sum(A.double(), B.double())
    return (D * (C.double() @ D)).sum().item()


def symmetric_root(M, floor):
    """(M^(1/2), M^(-1/2)) of a symmetric matrix, its eigenvalues raised to at least `floor`: never a NaN, where a
    Cholesky factor of a nearly singular M would fail."""
    values, vectors = torch.linalg.eigh((M + M.T) / 2)
    values = values.clamp_min(floor)
    return (vectors * values.sqrt()) @ vectors.T, (vectors / values.sqrt()) @ vectors.T


def kronecker_moment(C, a_rows):
    """(C1, C2): a_rows x a_rows and b_rows x b_rows symmetric factors with C1 (x) C2 nearest C (Van Loan's rank 1
    of C's rearrangement; for a positive semidefinite C both are, up to a common sign, which is fixed here)."""
    b_rows = C.shape[0] // a_rows
    U, S, Vh = torch.linalg.svd(rearrange(C, a_rows, a_rows), full_matrices=False)
    C1, C2 = (U[:, 0] * S[0].sqrt()).reshape(a_rows, a_rows), (Vh[0] * S[0].sqrt()).reshape(b_rows, b_rows)
    if C1.trace() < 0:
        C1, C2 = -C1, -C2
    return (C1 + C1.T) / 2, (C2 + C2.T) / 2


def whitened_kronecker(W, C, a_rows, a_cols, factors, ridge=1e-6):
    """The closed form: with C ~ C1 (x) C2 and S = C^(1/2) = C1^(1/2) (x) C2^(1/2), tr(D^T C D) = ||S D||_F^2 and
    S (A (x) B) = (C1^(1/2) A) (x) (C2^(1/2) B): Van Loan's decomposition of the whitened S W, un-whitened. Exact
    when C is a Kronecker product; with C = I it is Van Loan's W_hat. float64."""
    W, C = W.double(), C.double()
    b_rows = W.shape[0] // a_rows
    C1, C2 = kronecker_moment(C, a_rows)
    # a ridge relative to each factor's mean eigenvalue: directions the inputs never take still cost a little
    (S1, S1_inv), (S2, S2_inv) = [symmetric_root(M, ridge * M.trace().clamp_min(1e-300) / len(M)) for M in (C1, C2)]
    whitened = torch.einsum("ia,kb,abo->iko", S1, S2, W.reshape(a_rows, b_rows, -1)).reshape(W.shape)
    A, B = nearest_kronecker(whitened, a_rows, a_cols, factors)
    return torch.einsum("ia,raj->rij", S1_inv, A), torch.einsum("kb,rbl->rkl", S2_inv, B)


def fit_a(W, C, B, a_rows, ridge=1e-9):
    """The A minimising tr((W - sum_r A_r (x) B_r)^T C (...)) for fixed B: a linear least-squares problem whose
    normal equations G vec(A) = h are built from C and W alone (no calibration data kept)."""
    r, b_rows, b_cols = B.shape
    a_cols = W.shape[1] // b_cols
    C4 = C.reshape(a_rows, b_rows, a_rows, b_rows)
    P = (C @ W).reshape(a_rows, b_rows, a_cols, b_cols)  # E[x y^T]
    G = torch.einsum("rskm,ikjm->risj", torch.einsum("rkl,sml->rskm", B, B), C4).reshape(r * a_rows, r * a_rows)
    h = torch.einsum("rkl,ikjl->rij", B, P).reshape(r * a_rows, a_cols)
    G = G + ridge * G.trace() / len(G) * torch.eye(len(G), dtype=G.dtype)
    return torch.linalg.solve(G, h).reshape(r, a_rows, a_cols)


def fit_b(W, C, A, b_rows, ridge=1e-9):
    """The B minimising the same objective for fixed A (fit_a's mirror)."""
    r, a_rows, a_cols = A.shape
    b_cols = W.shape[1] // a_cols
    C4 = C.reshape(a_rows, b_rows, a_rows, b_rows)
    P = (C @ W).reshape(a_rows, b_rows, a_cols, b_cols)
    G = torch.einsum("rsim,ikmn->rksn", torch.einsum("rij,smj->rsim", A, A), C4).reshape(r * b_rows, r * b_rows)
    h = torch.einsum("rij,ikjl->rkl", A, P).reshape(r * b_rows, b_cols)
    G = G + ridge * G.trace() / len(G) * torch.eye(len(G), dtype=G.dtype)
    return torch.linalg.solve(G, h).reshape(r, b_rows, b_cols)


def alternating_least_squares(W, C, A, B, sweeps, ridge=1e-9):
    """(A, B, objectives): `sweeps` rounds of fit_a then fit_b from (A, B), float64. The objective is checked after
    every sweep and never increases: a sweep that would raise it (round-off, the ridge) is undone, and the
    refinement stops there. objectives[0] is the start's."""
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
