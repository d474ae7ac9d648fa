"""
GPT-2 with Kronecker-factored weight matrices, in one file.

The dense model is nanoGPT's GPT with GPT-2's exact numerics (tanh GELU, LayerNorm eps 1e-5, tied
wte/lm_head, learned positions), so `GPT.from_pretrained("gpt2")` scores exactly like Hugging Face's.
A plan in GPTConfig (kron_shapes.py has its arithmetic) replaces chosen matrices by sums of Kronecker products
W = sum_r A_r (x) B_r, never materialized in the forward pass: the MLP's c_fc and c_proj, attention's c_attn
and attn_proj (attn.c_proj) in all or some blocks, and the tied token embedding wte.

Also here, because every script needs them: checkpoint save/load (atomic writes, weights_only loads),
`load_model`, which opens any model source (our checkpoint, a Hugging Face directory, a hub name), and the
device and precision set-up. The initialisations from a teacher are in compress.py.
"""

import json
import math
import os
import pickle
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from common import one_line
from kron_shapes import kron_flops, resolve_plan

# Hugging Face's GPT-2 stores these as Conv1D weights, (in, out); our nn.Linear weights are (out, in).
HF_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORE_INDEX = -1  # a target that is not scored, in GPT.forward's loss and in perplexity.py


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in Linears and LayerNorms
    # The Kronecker plan (kron_shapes.py). kron: {matrix: (a_rows, a_cols, factors)}, A in x @ W orientation,
    # for any of wte, c_attn, attn_proj, c_fc, c_proj; kron_layers: the blocks it applies to (all, odd, even,
    # "0,2,4"). dim_1, dim_2, factors: the MLP shorthand, c_fc's A dim_1 x dim_2 and c_proj's its transpose.
    dim_1: int | None = None
    dim_2: int | None = None
    factors: int | None = None
    kron: dict | None = None
    kron_layers: str | tuple = "all"

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if isinstance(self.kron, dict):  # JSON and config files give lists
            self.kron = {name: tuple(shape) if isinstance(shape, list) else shape for name, shape in self.kron.items()}
        if isinstance(self.kron_layers, list):
            self.kron_layers = tuple(self.kron_layers)
        # not dataclass fields: derived, so asdict() and checkpoints keep the plan as the user wrote it
        self.plan, self.factored_layers = resolve_plan(self.n_embd, self.n_layer, self.vocab_size, self.dim_1,
                                                       self.dim_2, self.factors, self.kron, self.kron_layers)

    @property
    def is_kronecker(self):
        return bool(self.plan)

    def factored(self, name, layer=None):
        """(a_rows, a_cols, factors) if the plan factors matrix `name` (in block `layer`), else None."""
        if layer is not None and layer not in self.factored_layers:
            return None
        return self.plan.get(name)


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
    if a_first:  # (A^T X) B
        t = x.view(n, a_rows, b_rows).transpose(1, 2).reshape(n * b_rows, a_rows)
        t = t @ A.permute(1, 0, 2).reshape(a_rows, r * a_cols)  # (n, b_rows, r, a_cols)
        t = t.view(n, b_rows, r, a_cols).permute(0, 3, 2, 1).reshape(n * a_cols, r * b_rows)
        if r * b_rows == 1:  # B is one row: the second contraction has length 1
            return OuterProduct.apply(t.view(n, a_cols), B.reshape(b_cols), bias).view(*lead_shape, out_features)
        y = (t @ B.reshape(r * b_rows, b_cols)).view(n, out_features)
    else:  # A^T (X B)
        x_rows, Bm = x.reshape(n * a_rows, b_rows), B.permute(1, 0, 2).reshape(b_rows, r * b_cols)
        t = MatVec.apply(x_rows, Bm.reshape(b_rows)) if r * b_cols == 1 else x_rows @ Bm  # B one column, or not
        t = t.view(n, a_rows, r, b_cols).permute(0, 3, 2, 1).reshape(n * b_cols, r * a_rows)
        Am = A.reshape(r * a_rows, a_cols)
        if b_cols == 1 and bias is not None:  # the GEMM's output is y itself: fuse the bias, as nn.Linear
            return torch.addmm(bias, t, Am).view(*lead_shape, out_features)
        y = (t @ Am).view(n, b_cols, a_cols).transpose(1, 2).reshape(n, out_features)
    if bias is not None:
        y = y + bias.to(y.dtype)  # under autocast, stay in the matmul's precision as nn.Linear does
    return y.view(*lead_shape, out_features)


def kronecker_sum(A, B):
    """sum_r kron(A[r], B[r]) for A (r, a_rows, a_cols), B (r, b_rows, b_cols), in one einsum."""
    (_, a_rows, a_cols), (_, b_rows, b_cols) = A.shape, B.shape
    w = torch.einsum("rij,rkl->ikjl", A, B)  # W[i*b_rows + k, j*b_cols + l] = sum_r A[r,i,j] B[r,k,l]
    return w.reshape(a_rows * b_rows, a_cols * b_cols)


def init_factors(A, B, std):
    """Both factors get the same std s, chosen so that W = sum_r A_r (x) B_r has entries of std `std`:
    each entry of W is a sum of r products of independent N(0, s^2), so var = r * s^4."""
    factor_std = math.sqrt(std / math.sqrt(A.shape[0]))
    nn.init.normal_(A, mean=0.0, std=factor_std)
    nn.init.normal_(B, mean=0.0, std=factor_std)


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
        init_factors(self.A, self.B, std)
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
        init_factors(self.A, self.B, std)

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


def linear(config, name, in_features, out_features, layer):
    """nn.Linear, or a KroneckerLinear where the plan factors matrix `name` in block `layer`."""
    shape = config.factored(name, layer)
    if shape is None:
        return nn.Linear(in_features, out_features, bias=config.bias)
    return KroneckerLinear(in_features, out_features, *shape, bias=config.bias)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1); eps 1e-5 as GPT-2."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.c_attn = linear(config, "c_attn", config.n_embd, 3 * config.n_embd, layer)
        self.c_proj = linear(config, "attn_proj", config.n_embd, config.n_embd, layer)
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

    def __init__(self, config, layer):
        super().__init__()
        self.c_fc = linear(config, "c_fc", config.n_embd, 4 * config.n_embd, layer)
        self.c_proj = linear(config, "c_proj", 4 * config.n_embd, config.n_embd, layer)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config, layer)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        wte_shape = config.factored("wte")
        self.transformer = nn.ModuleDict(dict(
            wte=(nn.Embedding(config.vocab_size, config.n_embd) if wte_shape is None
                 else KroneckerEmbedding(config.vocab_size, config.n_embd, *wte_shape)),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        if wte_shape is None:
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
        elif isinstance(module, (KroneckerLinear, KroneckerEmbedding)):
            module.reset_parameters(std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameters, the tied wte/lm_head counted once; non_embedding drops the position embeddings."""
        n_params = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def get_num_params_by_part(self):
        """{"embedding": wte (tied to lm_head), "attention": every block's attn, "mlp": every block's mlp}."""
        blocks = self.transformer.h
        return {"embedding": sum(p.numel() for p in self.transformer.wte.parameters()),
                "attention": sum(p.numel() for block in blocks for p in block.attn.parameters()),
                "mlp": sum(p.numel() for block in blocks for p in block.mlp.parameters())}

    def residual_stream(self, idx, keep_all=False):
        """ln_f of the last block's output, (b, t, n_embd); with keep_all also the list of residual streams after
        the embedding and after each block (what intermediate-layer distillation matches)."""
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"sequence of length {t} exceeds block_size={self.config.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        states = [x] if keep_all else None
        for block in self.transformer.h:
            x = block(x)
            if keep_all:
                states.append(x)
        return self.transformer.ln_f(x), states

    def unembed(self, x):
        """Logits x @ wte^T: lm_head, or the factored embedding's own product."""
        wte = self.transformer.wte
        return wte.unembed(x) if isinstance(wte, KroneckerEmbedding) else self.lm_head(x)

    def forward(self, idx, targets=None, return_hidden=False):
        """(logits, loss) for every position; with targets (already shifted, IGNORE_INDEX = not scored) the mean
        loss, else None. return_hidden adds the residual streams of residual_stream(keep_all=True)."""
        x, states = self.residual_stream(idx, keep_all=return_hidden)
        logits = self.unembed(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return (logits, loss, states) if return_hidden else (logits, loss)

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
            x, _ = self.residual_stream(idx[:, -self.config.block_size:])
            logits = self.unembed(x[:, -1, :])  # only the last position's: the others are not sampled
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


def factorable_matrices(model):
    """(name, layer, module) of every matrix a plan can factor: ("wte", None, wte), then per block
    ("c_attn", i, ...), ("attn_proj", i, ...), ("c_fc", i, ...), ("c_proj", i, ...); dense or factored."""
    yield "wte", None, model.transformer.wte
    for i, block in enumerate(model.transformer.h):
        yield "c_attn", i, block.attn.c_attn
        yield "attn_proj", i, block.attn.c_proj
        yield "c_fc", i, block.mlp.c_fc
        yield "c_proj", i, block.mlp.c_proj


def weight_of(module):
    """W of a factorable matrix in the plan's orientation: (in, out) as in x @ W, wte (vocab, n_embd)."""
    if isinstance(module, (KroneckerLinear, KroneckerEmbedding)):
        return module.dense_weight()
    return module.weight if isinstance(module, nn.Embedding) else module.weight.t()


# ----------------------------------------------------------------------------------------------------
# Devices and precision: one meaning of --dtype in every script.

def default_device():
    """cuda, then mps, then cpu: the fastest device this PyTorch can use."""
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def setup_device(name="auto"):
    """The torch.device of a name ("auto": default_device()), checked to exist here; TF32 matmuls on CUDA."""
    try:
        device = torch.device(default_device() if name == "auto" else name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but this PyTorch sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r} but MPS is not available here")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def resolve_dtype(dtype, device):
    """"auto": bfloat16 where the GPU supports it, else float16 on CUDA, else float32."""
    if dtype != "auto":
        return dtype
    if device.type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def autocast_context(device, dtype):
    """What --dtype means everywhere: float32 weights, the forward pass under autocast in dtype (none for float32)."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))


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
        raise ValueError(f"{path} is not a readable krony checkpoint ({one_line(e)})") from None
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


def read_hf_config(path):
    """The GPTConfig of a Hugging Face directory's config.json: GPT-2's, or krony's (krony_to_gpt.py
    --keep_factors), whose plan it holds as kron and kron_layers (a list of blocks, empty with no block matrix)."""
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    return GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], n_embd=hf["n_embd"], kron=hf.get("kron") or None,
                     kron_layers=hf.get("kron_layers") or "all")


def load_factored_hf(path, map_location="cpu"):
    """Our GPT from a krony Hugging Face directory, read as data: config.json's plan and model.safetensors'
    tensors, without running the directory's code. Refuses tensors that the plan does not have or shapes it."""
    from safetensors.torch import load_file
    model = GPT(read_hf_config(path))
    stored = load_file(os.path.join(path, "model.safetensors"))
    state, used = {}, set()
    for key, like in model.state_dict().items():
        stored_key = "transformer.wte.weight" if key == "lm_head.weight" else key  # tied: saved once
        if stored_key not in stored:
            raise ValueError(f"{path}: config.json's plan has {key} {tuple(like.shape)}, model.safetensors has not")
        value = stored[stored_key].t() if key.endswith(HF_CONV1D_WEIGHTS) else stored[stored_key]
        if value.shape != like.shape:
            raise ValueError(f"{path}: {key} is {tuple(value.shape)} in model.safetensors but "
                             f"{tuple(like.shape)} by config.json's plan")
        state[key] = value
        used.add(stored_key)
    unused = sorted(set(stored) - used)
    if unused:
        raise ValueError(f"{path}: model.safetensors holds {unused[0]}, which config.json's plan has no place for"
                         + (f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""))
    model.load_state_dict(state)
    return model.to(map_location)


def is_krony_dir(source):
    """A directory written by krony_to_gpt.py --keep_factors: config.json with model_type krony."""
    path = os.path.join(source, "config.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("model_type") == "krony"


def load_model_config(source):
    """The GPTConfig of a model source without its weights: a checkpoint's model_args (memory-mapped, so nothing
    is read but them), or a Hugging Face model's config.json."""
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "config.json")):
        return read_hf_config(source)
    if os.path.isfile(source):
        try:
            checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise ValueError(f"{source} is not a readable krony checkpoint ({one_line(e)})") from None
        if not isinstance(checkpoint, dict) or "model_args" not in checkpoint:
            raise ValueError(f"{source} is not a krony checkpoint (expected a dict with 'model' and 'model_args')")
        return GPTConfig(**checkpoint["model_args"])
    check_source_path(source)
    from transformers import AutoConfig
    hf = AutoConfig.from_pretrained(source)
    return GPTConfig(block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer, n_head=hf.n_head,
                     n_embd=hf.n_embd)


def check_source_path(source):
    """A source that looks like a path must exist: fail fast instead of asking the hub for it."""
    looks_like_path = source.startswith(("/", "./", "../", "~")) or source.endswith((".pt", ".pth"))
    if looks_like_path and not os.path.exists(source):
        raise FileNotFoundError(f"no such file or directory: {source}")


def load_model(source, map_location="cpu"):
    """A GPT from a krony checkpoint file, a Hugging Face directory (GPT-2, or krony's factored export), or a hub
    name like "gpt2". A dense export of a Kronecker model loads as the dense GPT it is.
    """
    if os.path.isfile(source):
        return load_checkpoint(source, map_location)[0]
    if os.path.isdir(source) and is_krony_dir(source):
        return load_factored_hf(source, map_location)
    check_source_path(source)
    return GPT.from_pretrained(source).to(map_location)
