"""
The Kronecker layers: x @ W for W = sum_r A_r (x) B_r without ever building W, and the tied token embedding stored
as its A and B.

This is the one implementation: model.py builds its GPT from it, and `krony_to_gpt.py --keep_factors` ships this
very file (with kron_shapes.py) inside the exported Hugging Face folder, whose modeling_krony.py imports it, so the
exported model computes exactly what ours does.

Names: W is (in_features, out_features), as in x @ W. It is a sum of `factors` terms A_r (x) B_r, with A of shape
(factors, a_rows, a_cols) and B of shape (factors, b_rows, b_cols), and kron's index convention
kron(A_r, B_r)[i*b_rows + k, j*b_cols + l] = A_r[i, j] B_r[k, l].

The general product, two matmuls in either order, comes first, then the layers built on it. The fast paths for one
term whose B is a single row or column (the paper's 81M model), including the fused MLP, are in a section of their
own at the end.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

try:  # in an exported folder transformers imports this file as part of a package (and copies kron_shapes.py)
    from .kron_shapes import kron_flops
except ImportError:  # in the repository it is a top-level module
    from kron_shapes import kron_flops


def kronecker_sum(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Returns W = sum_r kron(A[r], B[r]), materialized in one einsum: for inits, exports and checks, never for a
    forward pass."""
    (_, a_rows, a_cols), (_, b_rows, b_cols) = A.shape, B.shape
    w = torch.einsum("rij,rkl->ikjl", A, B)  # W[i*b_rows + k, j*b_cols + l] = sum_r A[r,i,j] B[r,k,l]
    return w.reshape(a_rows * b_rows, a_cols * b_cols)


def entry_std(std: float, factors: int) -> float:
    """The std of A's and B's entries that gives W entries of std `std`. Each entry of W is a sum of `factors`
    products of two independent N(0, s^2) entries, so its variance is factors * s^4."""
    return math.sqrt(std / math.sqrt(factors))


def kronecker_matmul(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None,
                     a_first: bool) -> torch.Tensor:
    """Returns x (..., in_features) @ sum_r kron(A[r], B[r]) + bias, of shape (..., out_features), without W.
    A and B may be transposed views (KroneckerEmbedding's lm_head). One term whose B is a single row or column
    takes a fast path (below); every other shape is contracted in the order a_first picks."""
    r, a_rows, a_cols = A.shape
    _, b_rows, b_cols = B.shape
    lead_shape = x.shape[:-1]
    x = x.reshape(-1, a_rows * b_rows)
    if r * b_rows == 1:
        y = outer_product_matmul(x, A[0], B.reshape(b_cols), bias)
    elif r * b_cols == 1:
        y = matvec_matmul(x, A[0], B.reshape(b_rows), bias)
    else:
        y = contract(x, A, B, bias, a_first)
    return y.view(*lead_shape, a_cols * b_cols)


def contract(x, A, B, bias, a_first):
    """Returns x (n, a_rows*b_rows) @ sum_r kron(A[r], B[r]) + bias, of shape (n, a_cols*b_cols), in two matmuls.

    Each row of x, viewed as X (a_rows, b_rows), maps to sum_r A_r^T X B_r, computed as (A^T X) B when a_first,
    else as A^T (X B) (kron_flops counts both). Stacking the r terms along one GEMM dimension makes the sum over r
    part of the second matmul, so any number of terms costs two matmuls.
    """
    r, a_rows, a_cols = A.shape
    _, b_rows, b_cols = B.shape
    n, out_features = x.shape[0], a_cols * b_cols
    if a_first:  # (A^T X) B
        t = x.view(n, a_rows, b_rows).transpose(1, 2).reshape(n * b_rows, a_rows)
        t = t @ A.permute(1, 0, 2).reshape(a_rows, r * a_cols)  # (n, b_rows, r, a_cols)
        t = t.view(n, b_rows, r, a_cols).permute(0, 3, 2, 1).reshape(n * a_cols, r * b_rows)
        y = (t @ B.reshape(r * b_rows, b_cols)).view(n, out_features)
    else:  # A^T (X B)
        t = x.reshape(n * a_rows, b_rows) @ B.permute(1, 0, 2).reshape(b_rows, r * b_cols)
        t = t.view(n, a_rows, r, b_cols).permute(0, 3, 2, 1).reshape(n * b_cols, r * a_rows)
        Am = A.reshape(r * a_rows, a_cols)
        if b_cols == 1 and bias is not None:  # the GEMM's output is y itself: fuse the bias, as nn.Linear
            return torch.addmm(bias, t, Am)
        y = (t @ Am).view(n, b_cols, a_cols).transpose(1, 2).reshape(n, out_features)
    if bias is not None:
        y = y + bias.to(y.dtype)  # under autocast, stay in the matmul's precision as nn.Linear does
    return y


class KroneckerLinear(nn.Module):
    """y = x @ W + b, W = sum_r kron(A[r], B[r]) of shape (in_features, out_features): nn.Linear's job with
    factors * (a_rows*a_cols + b_rows*b_cols) weights instead of in_features * out_features. A is
    (factors, a_rows, a_cols), B (factors, in_features/a_rows, out_features/a_cols); x is contracted with them in
    whichever order costs fewer multiply-adds for this shape (a_first)."""

    def __init__(self, in_features: int, out_features: int, a_rows: int, a_cols: int, factors: int = 1,
                 bias: bool = True):
        super().__init__()
        if in_features % a_rows or out_features % a_cols:
            raise ValueError(f"A of shape {a_rows}x{a_cols} must divide W of shape {in_features}x{out_features}")
        self.in_features, self.out_features = in_features, out_features
        b_rows, b_cols = in_features // a_rows, out_features // a_cols
        self.A = nn.Parameter(torch.empty(factors, a_rows, a_cols))
        self.B = nn.Parameter(torch.empty(factors, b_rows, b_cols))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        a_first, b_first = kron_flops(in_features, out_features, a_rows, a_cols, factors)
        self.a_first = a_first <= b_first
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Random A and B whose W has entries of std `std`, as GPT-2 draws its dense matrices; a zero bias."""
        nn.init.normal_(self.A, mean=0.0, std=entry_std(std, self.A.shape[0]))
        nn.init.normal_(self.B, mean=0.0, std=entry_std(std, self.A.shape[0]))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kronecker_matmul(x, self.A, self.B, self.bias, self.a_first)

    def dense_weight(self) -> torch.Tensor:
        """W, materialized: the (in_features, out_features) matrix that x is multiplied by."""
        return kronecker_sum(self.A, self.B)

    def extra_repr(self):
        (r, a_rows, a_cols), (_, b_rows, b_cols) = self.A.shape, self.B.shape
        order = "(A^T X) B" if self.a_first else "A^T (X B)"
        return (f"in={self.in_features}, out={self.out_features}, factors={r}, A={a_rows}x{a_cols}, "
                f"B={b_rows}x{b_cols}, bias={self.bias is not None}, order={order}")


class KroneckerEmbedding(nn.Module):
    """The tied token embedding W (vocab_size, n_embd) = sum_r kron(A[r], B[r]), as a lookup and as lm_head.

    Token t = i*b_rows + k has the row sum_r A[r, i, :] (x) B[r, k, :]: two small gathers and an outer product,
    never the whole matrix. lm_head's logits h @ W^T contract h with A and B transposed
    (W^T = sum_r A_r^T (x) B_r^T), in the cheaper order, as KroneckerLinear does.
    """

    def __init__(self, vocab_size: int, n_embd: int, a_rows: int, a_cols: int, factors: int = 1):
        super().__init__()
        if vocab_size % a_rows or n_embd % a_cols:
            raise ValueError(f"A of shape {a_rows}x{a_cols} must divide wte of shape {vocab_size}x{n_embd}")
        self.vocab_size, self.n_embd = vocab_size, n_embd
        self.A = nn.Parameter(torch.empty(factors, a_rows, a_cols))
        self.B = nn.Parameter(torch.empty(factors, vocab_size // a_rows, n_embd // a_cols))
        a_first, b_first = kron_flops(n_embd, vocab_size, a_cols, a_rows, factors)  # lm_head's W^T
        self.a_first = a_first <= b_first
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Random A and B whose W has entries of std `std`, as GPT-2 draws its embedding."""
        nn.init.normal_(self.A, mean=0.0, std=entry_std(std, self.A.shape[0]))
        nn.init.normal_(self.B, mean=0.0, std=entry_std(std, self.A.shape[0]))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        r, a_rows, a_cols = self.A.shape
        _, b_rows, b_cols = self.B.shape
        a = F.embedding(idx // b_rows, self.A.permute(1, 0, 2).reshape(a_rows, r * a_cols))
        b = F.embedding(idx % b_rows, self.B.permute(1, 0, 2).reshape(b_rows, r * b_cols))
        rows = torch.einsum("...rj,...rl->...jl", a.unflatten(-1, (r, a_cols)), b.unflatten(-1, (r, b_cols)))
        return rows.flatten(-2)

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """The logits h @ W^T, of shape (..., vocab_size)."""
        return kronecker_matmul(h, self.A.transpose(1, 2), self.B.transpose(1, 2), None, self.a_first)

    def dense_weight(self) -> torch.Tensor:
        """W, materialized: the (vocab_size, n_embd) matrix whose row t embeds token t."""
        return kronecker_sum(self.A, self.B)

    def extra_repr(self):
        (r, a_rows, a_cols), (_, b_rows, b_cols) = self.A.shape, self.B.shape
        return f"vocab={self.vocab_size}, n_embd={self.n_embd}, factors={r}, A={a_rows}x{a_cols}, B={b_rows}x{b_cols}"


# ----------------------------------------------------------------------------------------------------
# Fast paths for one term whose B is a single row or column (the paper's 81M model: B is 1x4 in c_fc, 4x1 in
# c_proj). One of the two matmuls then has a contraction of length 1, which as a GEMM runs far below memory
# speed; it is done as a broadcast product instead, after the one real matmul with A, whatever a_first says, and
# with no reshapes between, since decoding one token runs these few ops per layer and nothing else. The fused MLP
# goes one step further: c_fc's outer product, the GELU and c_proj's matrix-vector product in one pass, without
# the 4*n_embd hidden layer.

def apply_or_compute(function, *args):
    """function.apply(*args), which autograd records, where a gradient may be asked for, else the plain
    function.compute(*args): applying an autograd Function costs more than the few ops it wraps when decoding one
    token."""
    return function.apply(*args) if torch.is_grad_enabled() else function.compute(*args)


def outer_product_matmul(x, A, b, bias):
    """Returns x (n, in_features) @ kron(A, b) + bias for one term whose B is the row b: (x A) (x) b, an outer
    product of each row of x A with b."""
    return apply_or_compute(OuterProduct, x @ A, b, bias)


def matvec_matmul(x, A, b, bias):
    """Returns x (n, in_features) @ kron(A, b) + bias for one term whose B is the column b: each row of x, viewed
    as X (a_rows, len(b)), maps to (X b) A, a matrix-vector product, then a GEMM with A that adds the bias."""
    t = apply_or_compute(MatVec, x.reshape(-1, len(b)), b).view(x.shape[0], -1)
    return t @ A if bias is None else torch.addmm(bias, t, A)


class OuterProduct(torch.autograd.Function):
    """y[n, i*c + j] = t[n, i] * b[j] + bias[i*c + j]: a matmul whose contraction has length 1 (the 81M model's
    c_fc), as one broadcast multiply-add. As a GEMM it runs far below memory speed, and autograd's backward of
    a broadcast reduces slowly; this backward is two matrix-vector products and a sum. Under autocast the
    result keeps t's precision, as a matmul's would."""

    @staticmethod
    def compute(t, b, bias):
        column, row = t.unsqueeze(-1), b.to(t.dtype)
        if bias is None:
            return (column * row).view(t.shape[0], -1)
        return torch.addcmul(bias.to(t.dtype).view(t.shape[1], -1), column, row).view(t.shape[0], -1)

    @staticmethod
    def forward(ctx, t, b, bias):
        ctx.save_for_backward(t, b)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return OuterProduct.compute(t, b, bias)

    @staticmethod
    def backward(ctx, grad):
        t, b = ctx.saved_tensors
        grad = grad.reshape(-1, b.numel())  # (n * t.shape[1], len(b))
        grad_t = (grad @ b.to(grad.dtype)).view_as(t)
        grad_b = (t.reshape(1, -1).to(grad.dtype) @ grad).view_as(b).to(b.dtype)
        grad_bias = None if ctx.bias_dtype is None else grad.view(t.shape[0], -1).sum(0).to(ctx.bias_dtype)
        return grad_t, grad_b, grad_bias


class MatVec(torch.autograd.Function):
    """x (m, k) @ w (k,) (the 81M model's c_proj), whose backward writes grad_x = grad w^T as a broadcast
    multiply rather than as a GEMM with a contraction of length 1, which runs far below memory speed."""

    @staticmethod
    def compute(x, w):
        return x @ w.to(x.dtype)

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return MatVec.compute(x, w)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = (grad.unsqueeze(1) * w.to(grad.dtype)).to(x.dtype)
        grad_w = (grad @ x.to(grad.dtype)).to(w.dtype)
        return grad_x, grad_w


def fuses_mlp(c_fc: nn.Module, c_proj: nn.Module) -> bool:
    """Whether kronecker_mlp computes c_proj(gelu(c_fc(x))) for this pair of layers: one term each, c_fc's B a row
    of c values and c_proj's B a column of as many (the paper's 81M model: B 1x4 and 4x1), so that hidden unit
    i*c + j of c_fc is c_proj's input i*c + j."""
    return (isinstance(c_fc, KroneckerLinear) and isinstance(c_proj, KroneckerLinear) and c_fc.bias is not None
            and c_fc.A.shape[0] == c_proj.A.shape[0] == 1 and c_fc.B.shape[1] == c_proj.B.shape[2] == 1
            and c_fc.B.shape[2] == c_proj.B.shape[1])


def kronecker_mlp(x: torch.Tensor, c_fc: KroneckerLinear, c_proj: KroneckerLinear) -> torch.Tensor:
    """Returns c_proj(gelu(c_fc(x))) (tanh GELU) for a pair that fuses_mlp accepts, without the 4*n_embd hidden
    layer: c_fc's outer product, the GELU and c_proj's matrix-vector product collapse into GeluContract, between
    x @ A_fc and the GEMM with A_proj. That is two GEMMs of a quarter of the dense MLP's FLOPs and one pass over
    the hidden values."""
    lead_shape = x.shape[:-1]
    t = x.reshape(-1, c_fc.in_features) @ c_fc.A[0]
    s = apply_or_compute(GeluContract, t, c_fc.B.reshape(-1), c_fc.bias.view(t.shape[1], -1), c_proj.B.reshape(-1))
    y = s @ c_proj.A[0] if c_proj.bias is None else torch.addmm(c_proj.bias, s, c_proj.A[0])  # autocast casts
    return y.view(*lead_shape, c_proj.out_features)


class GeluContract(torch.autograd.Function):
    """s[n, i] = sum_j w[j] gelu(t[n, i] b[j] + bias[i, j]) for t (n, a), b and w (c,), bias (a, c): kronecker_mlp's
    middle. The forward is three ops on an (n, a, c) grid (few ops: decoding one token runs them). The backward
    recomputes the grid column by column, j = 0..c-1: elementwise work over (n, a) and sums over tokens first, which
    vectorise along a (torch.compile's kernels for a trailing dimension of c = 4 run several times slower) and
    keep only t for backward. Under autocast everything runs in t's precision, as a matmul's output would."""

    @staticmethod
    def compute(t, b, bias, w):
        u = torch.addcmul(bias.to(t.dtype), t.unsqueeze(-1), b.to(t.dtype))
        return (F.gelu(u, approximate="tanh").view(-1, w.numel()) @ w.to(t.dtype)).view_as(t)

    @staticmethod
    def forward(ctx, t, b, bias, w):
        ctx.save_for_backward(t, b, bias, w)
        return GeluContract.compute(t, b, bias, w)

    @staticmethod
    def backward(ctx, grad):
        t, b, bias, w = ctx.saved_tensors
        grad = grad.to(t.dtype)
        grad_t, grad_b, grad_bias, grad_w = torch.zeros_like(t), [], [], []
        for j in range(b.numel()):
            u = torch.addcmul(bias[:, j].to(t.dtype), t, b[j].to(t.dtype))
            grad_w.append((grad * F.gelu(u, approximate="tanh")).sum(0).sum())
            grad_u = torch.ops.aten.gelu_backward(grad * w[j].to(t.dtype), u, approximate="tanh")
            grad_bias.append(grad_u.sum(0))
            grad_b.append((grad_u * t).sum(0).sum())
            grad_t = torch.addcmul(grad_t, grad_u, b[j].to(t.dtype))
        return (grad_t, torch.stack(grad_b).to(b.dtype), torch.stack(grad_bias, 1).to(bias.dtype),
                torch.stack(grad_w).to(w.dtype))
