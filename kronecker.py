"""
The Kronecker layers: x @ sum_r A_r (x) B_r without ever building the sum, and the tied embedding as factors.

This is the one implementation. model.py builds its GPT from it, and `krony_to_gpt.py --keep_factors` ships this
very file (with kron_shapes.py) inside the exported Hugging Face folder, whose modeling_krony.py imports it: the
exported model computes exactly what ours does.

Index convention: kron(A, B)[i*b_rows + k, j*b_cols + l] = A[i, j] B[k, l]; W is (in_features, out_features) as
in x @ W; A (factors, a_rows, a_cols), B (factors, b_rows, b_cols).
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

try:  # in an exported folder transformers imports this file as part of a package (and copies kron_shapes.py)
    from .kron_shapes import kron_flops
except ImportError:  # in the repository it is a top-level module
    from kron_shapes import kron_flops


def kronecker_matmul(x, A, B, bias, a_first):
    """x (..., in) @ sum_r kron(A[r], B[r]) + bias without building W (in, out); A (r, a_rows, a_cols), B (r, b_rows,
    b_cols), either possibly transposed views (KroneckerEmbedding's lm_head).

    x is viewed as (a_rows, b_rows) per row and contracted with the factors in the order a_first chooses:
    (A^T X) B or A^T (X B). Stacking the r factors along one GEMM dimension turns the sum over r into part of the
    second matmul, so any r costs two matmuls. A matmul that degenerates to an outer product or a matrix-vector
    product (B a single row or column, as in the paper's 81M model) takes OuterProduct or MatVec instead, which
    run at memory speed.
    """
    r, a_rows, a_cols = A.shape
    _, b_rows, b_cols = B.shape
    in_features, out_features = a_rows * b_rows, a_cols * b_cols
    lead_shape = x.shape[:-1]
    x = x.reshape(-1, in_features)
    n = x.shape[0]
    # One factor pair whose B is a single row or column (the paper's 81M model): one matmul with A and one
    # memory-speed product with B, in the cheaper order whatever a_first says, with no reshapes between (decoding
    # one token runs these few ops per layer and nothing else).
    if r * b_rows == 1:  # (x A) (x) b: an outer product with B's row
        return apply(OuterProduct, x @ A[0], B.reshape(b_cols), bias).view(*lead_shape, out_features)
    if r * b_cols == 1:  # (X b) A: a matrix-vector product with B's column, then A with the bias fused
        t = apply(MatVec, x.reshape(n * a_rows, b_rows), B.reshape(b_rows)).view(n, a_rows)
        y = t @ A[0] if bias is None else torch.addmm(bias, t, A[0])
        return y.view(*lead_shape, out_features)
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
            return torch.addmm(bias, t, Am).view(*lead_shape, out_features)
        y = (t @ Am).view(n, b_cols, a_cols).transpose(1, 2).reshape(n, out_features)
    if bias is not None:
        y = y + bias.to(y.dtype)  # under autocast, stay in the matmul's precision as nn.Linear does
    return y.view(*lead_shape, out_features)


def apply(function, *args):
    """function's result, through its autograd machinery only where a gradient may be asked for: applying an
    autograd Function costs more than the few ops it wraps when decoding one token."""
    return function.apply(*args) if torch.is_grad_enabled() else function.compute(*args)


def fuses_mlp(c_fc, c_proj):
    """Whether kronecker_mlp computes c_proj(gelu(c_fc(x))) for this pair: one factor pair each, c_fc's B a row of
    c values and c_proj's B a column of as many (the paper's 81M model: B 1x4 and 4x1), so that hidden unit
    i*c + j of c_fc is c_proj's input i*c + j."""
    return (isinstance(c_fc, KroneckerLinear) and isinstance(c_proj, KroneckerLinear) and c_fc.bias is not None
            and c_fc.A.shape[0] == c_proj.A.shape[0] == 1 and c_fc.B.shape[1] == c_proj.B.shape[2] == 1
            and c_fc.B.shape[2] == c_proj.B.shape[1])


def kronecker_mlp(x, c_fc, c_proj):
    """c_proj(gelu(c_fc(x))) (tanh GELU) for a pair that fuses_mlp accepts, without the 4*n_embd hidden layer:
    c_fc's outer product, the GELU and c_proj's matrix-vector product collapse into GeluContract, between x @ A_fc
    and the GEMM with A_proj. Two GEMMs of a quarter of the dense MLP's FLOPs and one pass over the hidden values."""
    lead_shape = x.shape[:-1]
    t = x.reshape(-1, c_fc.in_features) @ c_fc.A[0]
    s = apply(GeluContract, t, c_fc.B.reshape(-1), c_fc.bias.view(t.shape[1], -1), c_proj.B.reshape(-1))
    y = s @ c_proj.A[0] if c_proj.bias is None else torch.addmm(c_proj.bias, s, c_proj.A[0])  # autocast casts
    return y.view(*lead_shape, c_proj.out_features)


def kronecker_sum(A, B):
    """sum_r kron(A[r], B[r]) for A (r, a_rows, a_cols), B (r, b_rows, b_cols), in one einsum."""
    (_, a_rows, a_cols), (_, b_rows, b_cols) = A.shape, B.shape
    w = torch.einsum("rij,rkl->ikjl", A, B)  # W[i*b_rows + k, j*b_cols + l] = sum_r A[r,i,j] B[r,k,l]
    return w.reshape(a_rows * b_rows, a_cols * b_cols)


def factor_std(std, factors):
    """The std of both factors' entries that gives W = sum_r A_r (x) B_r entries of std `std`: each entry of W is
    a sum of r products of independent N(0, s^2), so var = r * s^4."""
    return math.sqrt(std / math.sqrt(factors))


class KroneckerLinear(nn.Module):
    """y = x @ W + b with W = sum_r kron(A[r], B[r]) of shape (in_features, out_features).

    A: (factors, a_rows, a_cols), B: (factors, in_features/a_rows, out_features/a_cols); kronecker_matmul
    contracts x with them in whichever order is cheaper for this shape.
    """

    def __init__(self, in_features, out_features, a_rows, a_cols, factors=1, bias=True):
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

    def reset_parameters(self, std=0.02):
        nn.init.normal_(self.A, mean=0.0, std=factor_std(std, self.A.shape[0]))
        nn.init.normal_(self.B, mean=0.0, std=factor_std(std, self.A.shape[0]))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        return kronecker_matmul(x, self.A, self.B, self.bias, self.a_first)

    def dense_weight(self):
        """The materialized W, shape (in_features, out_features): what x is multiplied by."""
        return kronecker_sum(self.A, self.B)

    def extra_repr(self):
        (r, a_rows, a_cols), (_, b_rows, b_cols) = self.A.shape, self.B.shape
        order = "(A^T X) B" if self.a_first else "A^T (X B)"
        return (f"in={self.in_features}, out={self.out_features}, factors={r}, A={a_rows}x{a_cols}, "
                f"B={b_rows}x{b_cols}, bias={self.bias is not None}, order={order}")


class KroneckerEmbedding(nn.Module):
    """The tied token embedding W (vocab x n_embd) = sum_r kron(A[r], B[r]), as a lookup and as lm_head.

    Token t = i*b_rows + k has the row sum_r A[r, i, :] (x) B[r, k, :]: two small gathers and an outer product,
    never the whole matrix. lm_head's logits h @ W^T contract h with the transposed factors
    (W^T = sum_r A_r^T (x) B_r^T) in the cheaper order, as KroneckerLinear does.
    """

    def __init__(self, vocab_size, n_embd, a_rows, a_cols, factors=1):
        super().__init__()
        if vocab_size % a_rows or n_embd % a_cols:
            raise ValueError(f"A of shape {a_rows}x{a_cols} must divide wte of shape {vocab_size}x{n_embd}")
        self.vocab_size, self.n_embd = vocab_size, n_embd
        self.A = nn.Parameter(torch.empty(factors, a_rows, a_cols))
        self.B = nn.Parameter(torch.empty(factors, vocab_size // a_rows, n_embd // a_cols))
        a_first, b_first = kron_flops(n_embd, vocab_size, a_cols, a_rows, factors)  # lm_head's W^T
        self.a_first = a_first <= b_first
        self.reset_parameters()

    def reset_parameters(self, std=0.02):
        nn.init.normal_(self.A, mean=0.0, std=factor_std(std, self.A.shape[0]))
        nn.init.normal_(self.B, mean=0.0, std=factor_std(std, self.A.shape[0]))

    def forward(self, idx):
        r, a_rows, a_cols = self.A.shape
        _, b_rows, b_cols = self.B.shape
        a = F.embedding(idx // b_rows, self.A.permute(1, 0, 2).reshape(a_rows, r * a_cols))
        b = F.embedding(idx % b_rows, self.B.permute(1, 0, 2).reshape(b_rows, r * b_cols))
        rows = torch.einsum("...rj,...rl->...jl", a.unflatten(-1, (r, a_cols)), b.unflatten(-1, (r, b_cols)))
        return rows.flatten(-2)

    def unembed(self, h):
        """Logits h @ W^T, shape (..., vocab_size)."""
        return kronecker_matmul(h, self.A.transpose(1, 2), self.B.transpose(1, 2), None, self.a_first)

    def dense_weight(self):
        """The materialized W, shape (vocab_size, n_embd): row t embeds token t."""
        return kronecker_sum(self.A, self.B)

    def extra_repr(self):
        (r, a_rows, a_cols), (_, b_rows, b_cols) = self.A.shape, self.B.shape
        return f"vocab={self.vocab_size}, n_embd={self.n_embd}, factors={r}, A={a_rows}x{a_cols}, B={b_rows}x{b_cols}"


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
