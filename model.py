"""
GPT-2 with Kronecker-factored MLPs, in one file.

The dense model is nanoGPT's GPT with GPT-2's exact numerics (tanh GELU, LayerNorm eps 1e-5, tied
wte/lm_head, learned positions), so `GPT.from_pretrained("gpt2")` scores exactly like Hugging Face's.
Setting `dim_1`, `dim_2` and `factors` in GPTConfig replaces every block's c_fc and c_proj by a
KroneckerLinear: W = sum_r A_r (x) B_r, never materialized in the forward pass.

Also here, because several scripts need them: `compress`, which initialises a Kronecker GPT from a dense
(or Kronecker) one by Van Loan's nearest Kronecker sum, its norm-preserving variant or pruning; checkpoint
save/load (atomic writes, weights_only loads); and `load_model`, which opens any model source (our
checkpoint, a Hugging Face directory, a hub name).
"""

import math
import os
import pickle
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F
from tqdm import tqdm

from kron_shapes import check_shape, kron_flops

# Hugging Face's GPT-2 stores these as Conv1D weights, (in, out); our nn.Linear weights are (out, in).
HF_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def default_device():
    """cuda, then mps, then cpu: the fastest device this PyTorch can use."""
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in Linears and LayerNorms
    # Kronecker-factored MLP; all None means a dense MLP. In x @ W orientation:
    # c_fc  (n_embd x 4n_embd): A_r (dim_1 x dim_2), B_r (n_embd/dim_1 x 4n_embd/dim_2)
    # c_proj (4n_embd x n_embd): A_r (dim_2 x dim_1), B_r (4n_embd/dim_2 x n_embd/dim_1)
    dim_1: int | None = None
    dim_2: int | None = None
    factors: int | None = None

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        kron = (self.dim_1, self.dim_2, self.factors)
        if all(v is None for v in kron):
            return
        if any(v is None for v in kron):
            raise ValueError(f"dim_1, dim_2 and factors must be set together or not at all, got {kron}")
        check_shape(self.n_embd, self.dim_1, self.dim_2, self.factors)

    @property
    def is_kronecker(self):
        return self.factors is not None


class KroneckerLinear(nn.Module):
    """y = x @ W + b with W = sum_r kron(A[r], B[r]) of shape (in_features, out_features).

    A: (factors, a_rows, a_cols), B: (factors, in_features/a_rows, out_features/a_cols).
    The forward pass never builds W: x is viewed as (a_rows, b_rows) and contracted with the factors
    in whichever order is cheaper for this shape. Stacking the r factors along one GEMM dimension
    turns the sum over r into part of the second matmul, so any r costs two matmuls. A matmul that
    degenerates to an outer product or a matrix-vector product (B a single row or column, as in the
    paper's 81M model) takes OuterProduct or MatVec instead, which run at memory speed.
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
        # Both factors get the same std s, chosen so that W = sum_r A_r (x) B_r has entries of std `std`:
        # each entry of W is a sum of r products of independent N(0, s^2), so var = r * s^4.
        factor_std = math.sqrt(std / math.sqrt(self.A.shape[0]))
        nn.init.normal_(self.A, mean=0.0, std=factor_std)
        nn.init.normal_(self.B, mean=0.0, std=factor_std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        lead_shape = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        n = x.shape[0]
        r, a_rows, a_cols = self.A.shape
        _, b_rows, b_cols = self.B.shape
        if self.a_first:  # (A^T X) B
            t = x.view(n, a_rows, b_rows).transpose(1, 2).reshape(n * b_rows, a_rows)
            t = t @ self.A.permute(1, 0, 2).reshape(a_rows, r * a_cols)  # (n, b_rows, r, a_cols)
            t = t.view(n, b_rows, r, a_cols).permute(0, 3, 2, 1).reshape(n * a_cols, r * b_rows)
            if r * b_rows == 1:  # B is one row: the second contraction has length 1
                return OuterProduct.apply(t.view(n, a_cols), self.B.view(b_cols), self.bias).view(
                    *lead_shape, self.out_features)
            y = (t @ self.B.reshape(r * b_rows, b_cols)).view(n, self.out_features)
        else:  # A^T (X B)
            x_rows, B = x.reshape(n * a_rows, b_rows), self.B.permute(1, 0, 2).reshape(b_rows, r * b_cols)
            t = MatVec.apply(x_rows, B.view(b_rows)) if r * b_cols == 1 else x_rows @ B  # B one column, or not
            t = t.view(n, a_rows, r, b_cols).permute(0, 3, 2, 1).reshape(n * b_cols, r * a_rows)
            A = self.A.reshape(r * a_rows, a_cols)
            if b_cols == 1 and self.bias is not None:  # the GEMM's output is y itself: fuse the bias, as nn.Linear
                return torch.addmm(self.bias, t, A).view(*lead_shape, self.out_features)
            y = (t @ A).view(n, b_cols, a_cols).transpose(1, 2).reshape(n, self.out_features)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)  # under autocast, stay in the matmul's precision as nn.Linear does
        return y.view(*lead_shape, self.out_features)

    def dense_weight(self):
        """The materialized W, shape (in_features, out_features): what x is multiplied by."""
        return kronecker_sum(self.A, self.B)

    def extra_repr(self):
        (r, a_rows, a_cols), (_, b_rows, b_cols) = self.A.shape, self.B.shape
        order = "(A^T X) B" if self.a_first else "A^T (X B)"
        return (f"in={self.in_features}, out={self.out_features}, factors={r}, A={a_rows}x{a_cols}, "
                f"B={b_rows}x{b_cols}, bias={self.bias is not None}, order={order}")


def kronecker_sum(A, B):
    """sum_r kron(A[r], B[r]) for A (r, a_rows, a_cols), B (r, b_rows, b_cols), in one einsum."""
    (_, a_rows, a_cols), (_, b_rows, b_cols) = A.shape, B.shape
    w = torch.einsum("rij,rkl->ikjl", A, B)  # W[i*b_rows + k, j*b_cols + l] = sum_r A[r,i,j] B[r,k,l]
    return w.reshape(a_rows * b_rows, a_cols * b_cols)


class OuterProduct(torch.autograd.Function):
    """y[n, i*c + j] = t[n, i] * b[j] + bias[i*c + j]: a matmul whose contraction has length 1 (the 81M model's
    c_fc), as one broadcast multiply-add. As a GEMM it runs far below memory speed, and autograd's backward of
    a broadcast reduces slowly; this backward is two matrix-vector products and a sum. Under autocast the
    result keeps t's precision, as a matmul's would."""

    @staticmethod
    def forward(ctx, t, b, bias):
        ctx.save_for_backward(t, b)
        ctx.bias_dtype = None if bias is None else bias.dtype
        column, row = t.unsqueeze(-1), b.to(t.dtype)
        if bias is None:
            return (column * row).view(t.shape[0], -1)
        return torch.addcmul(bias.to(t.dtype).view(t.shape[1], -1), column, row).view(t.shape[0], -1)

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
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = (grad.unsqueeze(1) * w.to(grad.dtype)).to(x.dtype)
        grad_w = (grad @ x.to(grad.dtype)).to(w.dtype)
        return grad_x, grad_w


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1); eps 1e-5 as GPT-2."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        hidden = 4 * config.n_embd
        if config.is_kronecker:
            self.c_fc = KroneckerLinear(config.n_embd, hidden, config.dim_1, config.dim_2,
                                        config.factors, config.bias)
            self.c_proj = KroneckerLinear(hidden, config.n_embd, config.dim_2, config.dim_1,
                                          config.factors, config.bias)
        else:
            self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
            self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream
        proj_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, module in self.named_modules():
            if name.endswith("c_proj"):
                if isinstance(module, KroneckerLinear):
                    module.reset_parameters(std=proj_std)
                else:
                    nn.init.normal_(module.weight, mean=0.0, std=proj_std)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, KroneckerLinear):
            module.reset_parameters(std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameters, the tied wte/lm_head counted once; non_embedding drops the position embeddings."""
        n_params = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def get_num_mlp_params(self):
        return sum(p.numel() for block in self.transformer.h for p in block.mlp.parameters())

    def forward(self, idx, targets=None):
        """Logits for every position; with targets (already shifted, -1 = ignore) also the mean loss."""
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"sequence of length {t} exceeds block_size={self.config.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # Decay every tensor of 2 or more dimensions: matmul weights, embeddings and Kronecker factors;
        # biases and LayerNorm gains are left alone.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type == "cuda"
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Sample max_new_tokens continuations of idx (b, t); temperature 0 means greedy."""
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size:]
            logits = self(idx_cond)[0][:, -1, :]
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits.float(), dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """A dense GPT from any Hugging Face GPT-2 checkpoint: a hub name or a local directory."""
        from transformers import GPT2LMHeadModel
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir, dtype=torch.float32)
        hf = hf_model.config
        unsupported = {
            "activation_function": (hf.activation_function, "gelu_new"),
            "layer_norm_epsilon": (hf.layer_norm_epsilon, 1e-5),
            "scale_attn_weights": (hf.scale_attn_weights, True),
            "scale_attn_by_inverse_layer_idx": (hf.scale_attn_by_inverse_layer_idx, False),
            "n_inner": (hf.n_inner or 4 * hf.n_embd, 4 * hf.n_embd),
        }
        for key, (got, want) in unsupported.items():
            if got != want:
                raise ValueError(f"{name_or_dir}: {key}={got!r} is not supported (GPT-2 uses {want!r})")
        config = GPTConfig(block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer,
                           n_head=hf.n_head, n_embd=hf.n_embd, dropout=dropout, bias=True)
        model = cls(config)
        sd = model.state_dict()
        sd_hf = {k: v for k, v in hf_model.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        if set(sd) != set(sd_hf):
            raise ValueError(f"{name_or_dir}: unexpected GPT-2 state dict keys "
                             f"{sorted(set(sd) ^ set(sd_hf))[:5]}")
        with torch.no_grad():
            for k, v in sd_hf.items():
                sd[k].copy_(v.t() if k.endswith(HF_CONV1D_WEIGHTS) else v)
        return model


# ----------------------------------------------------------------------------------------------------
# Kronecker factors from dense weights: how kron_decompose.py and train.py initialise a compressed GPT.
# Each function takes W (in, out), as in x @ W, and returns A (factors, a_rows, a_cols) and
# B (factors, b_rows, b_cols) with kron's index convention kron(A, B)[i*b_rows + k, j*b_cols + l] = A[i,j] B[k,l].

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


# `random` keeps GPT's own init: W_hat entries of std 0.02, c_proj scaled as in GPT-2.
INITS = {"vl": nearest_kronecker, "vl_norm": normalized_kronecker, "prune": pruned_kronecker, "random": None}


def mlp_layers(model):
    """("h.0.c_fc", module), ("h.0.c_proj", module), ("h.1.c_fc", module), ... for every MLP matrix."""
    for i, block in enumerate(model.transformer.h):
        yield f"h.{i}.c_fc", block.mlp.c_fc
        yield f"h.{i}.c_proj", block.mlp.c_proj


def weight_of(linear):
    """W in x @ W orientation, (in, out), of an nn.Linear or a KroneckerLinear."""
    return linear.dense_weight() if isinstance(linear, KroneckerLinear) else linear.weight.t()


@torch.no_grad()
def compress(teacher, dim_1, dim_2, factors, init="vl", progress=False):
    """A Kronecker GPT with the teacher's architecture: every MLP matrix (dense or Kronecker) initialised by
    `init`, every other weight copied. On the CPU in float32; `random` draws from torch's global RNG."""
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {', '.join(INITS)}")
    config = replace(teacher.config, dim_1=dim_1, dim_2=dim_2, factors=factors)  # validates the shape
    hidden = 4 * config.n_embd
    if init == "prune" and dim_1 != config.n_embd and dim_2 != hidden:
        raise ValueError(f"init=prune needs B to be a single row or column: dim_1={config.n_embd} (keeps every "
                         f"k-th hidden unit) or dim_2={hidden} (keeps every k-th embedding dimension); got "
                         f"{dim_1} {dim_2}: use vl, vl_norm or random")
    student = GPT(config)
    teacher_state = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        if not name.endswith((".A", ".B")):
            tensor.copy_(teacher_state[name])
    if INITS[init] is not None:
        pairs = list(zip(mlp_layers(teacher), mlp_layers(student)))
        for (_, source), (_, target) in tqdm(pairs, desc=f"{init} {dim_1} {dim_2} {factors}", unit="matrix",
                                             disable=not progress):
            W = weight_of(source).detach().to("cpu", torch.float32)
            A, B = INITS[init](W, target.A.shape[1], target.A.shape[2], factors)
            target.A.copy_(A)
            target.B.copy_(B)
    return student


# ----------------------------------------------------------------------------------------------------
# Checkpoints: one format for kron_decompose.py, train.py, krony_to_gpt.py, perplexity.py and sample.py.
# A checkpoint is a dict with at least "model" (state dict) and "model_args" (GPTConfig fields);
# train.py adds "optimizer", "iter_num", "best_val_loss", "config" and RNG states.

def save_checkpoint(checkpoint, path):
    """torch.save to a temporary file renamed into place, so a crash never leaves a truncated file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(checkpoint, tmp_path)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def clean_state_dict(state_dict):
    """Strip the prefixes DDP ("module.") and torch.compile ("_orig_mod.") add to parameter names."""
    cleaned = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        cleaned[k] = v
    return cleaned


def load_checkpoint(path, map_location="cpu"):
    """(model, checkpoint) from one of our checkpoints; never unpickles anything but tensors and literals."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        raise ValueError(f"{path} is not a readable krony checkpoint: not a torch file of tensors and plain values "
                         f"(it is loaded with weights_only=True, which never runs pickled code)") from None
    except Exception as e:
        raise ValueError(f"{path} is not a readable krony checkpoint ({type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0]})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "model_args" not in checkpoint:
        raise ValueError(f"{path} is not a krony checkpoint (expected a dict with 'model' and 'model_args')")
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(clean_state_dict(checkpoint["model"]))
    return model, checkpoint


def make_checkpoint(model, **extra):
    """The minimal checkpoint of a model, plus any extra entries (iteration, optimizer, ...)."""
    for wrapper_attr in ("module", "_orig_mod"):  # DDP(torch.compile(model)) unwraps in this order
        model = getattr(model, wrapper_attr, model)
    return {"model": model.state_dict(), "model_args": asdict(model.config), **extra}


def load_model(source, map_location="cpu"):
    """A GPT from a krony checkpoint file, a Hugging Face GPT-2 directory, or a hub name like "gpt2".

    Exported directories of Kronecker models load as dense GPTs: that is what export produces.
    """
    if os.path.isfile(source):
        return load_checkpoint(source, map_location)[0]
    looks_like_path = source.startswith(("/", "./", "../", "~")) or source.endswith((".pt", ".pth"))
    if looks_like_path and not os.path.exists(source):
        raise FileNotFoundError(f"no such file or directory: {source}")
    return GPT.from_pretrained(source).to(map_location)
