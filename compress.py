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
