"""
KronyForCausalLM: Hugging Face's own GPT-2 with some weight matrices kept as Kronecker factors.

Self-contained "remote code" (imports only torch, transformers and the standard library): copied next to
config.json and model.safetensors, it lets `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`
load a model whose factored matrices W = sum_r kron(A[r], B[r]) are never materialised.

The model is transformers' GPT2LMHeadModel and GPT2Model (their forward passes, KV cache, attention masks,
generate()); only the modules that the config's plan factors are swapped, before weights are initialised:

- a block's Conv1D (c_fc, c_proj, c_attn, attn.c_proj) becomes a KroneckerLinear: y = x @ W + bias, as Conv1D;
- the token embedding becomes a KroneckerEmbedding (rows looked up from the factors) and lm_head a
  KroneckerLMHead computing h @ W^T from the same factors, so no vocab x n_embd tensor exists anywhere.

State dict keys: transformer.h.1.mlp.c_fc.A / .B / .bias, transformer.wte.A / .B; no lm_head.weight when
wte is factored. Weights whose shapes or names disagree with the config's plan are refused with a ValueError
naming each tensor and both shapes.
"""

import math

import torch
import torch.nn as nn
from transformers import GPT2LMHeadModel, GPT2Model, GPT2PreTrainedModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2MLP

from .configuration_krony import BLOCK_MATRICES, KronyConfig, normalize_plan

try:  # transformers >= 5: init functions that leave loaded (flagged) parameters alone
    from transformers import initialization as hf_init
except ImportError:  # pragma: no cover - older transformers
    hf_init = nn.init


def kron_flops(in_features, out_features, a_rows, a_cols, factors):
    """Multiply-adds per input row of x @ sum_r A_r (x) B_r for the two contraction orders.

    With x reshaped to X (a_rows x b_rows), y = sum_r A_r^T X B_r is computed either as (A^T X) B
    ("a_first") or as A^T (X B) ("b_first"). A dense x @ W costs in_features * out_features.
    """
    b_rows, b_cols = in_features // a_rows, out_features // a_cols
    a_first = factors * a_cols * b_rows * (a_rows + b_cols)
    b_first = factors * a_rows * b_cols * (b_rows + a_cols)
    return a_first, b_first


def kronecker_sum(A, B):
    """sum_r kron(A[r], B[r]) for A (r, a_rows, a_cols), B (r, b_rows, b_cols), in one einsum."""
    (_, a_rows, a_cols), (_, b_rows, b_cols) = A.shape, B.shape
    w = torch.einsum("rij,rkl->ikjl", A, B)  # W[i*b_rows + k, j*b_cols + l] = sum_r A[r,i,j] B[r,k,l]
    return w.reshape(a_rows * b_rows, a_cols * b_cols)


def kronecker_matmul(x, A, B, bias, a_first):
    """x @ sum_r kron(A[r], B[r]) + bias without building the sum: KroneckerLinear's forward pass, also used
    with transposed factors by KroneckerLMHead. x: (..., a_rows * b_rows); A, B need not be contiguous."""
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


def factor_std(std, factors):
    """The std of both factors' entries that gives W = sum_r A_r (x) B_r entries of std `std`: each entry of W
    is a sum of r products of independent N(0, s^2), so var = r * s^4."""
    return math.sqrt(std / math.sqrt(factors))


class KroneckerLinear(nn.Module):
    """y = x @ W + b with W = sum_r kron(A[r], B[r]) of shape (in_features, out_features).

    A: (factors, a_rows, a_cols), B: (factors, in_features/a_rows, out_features/a_cols).
    The forward pass never builds W: x is viewed as (a_rows, b_rows) and contracted with the factors
    in whichever order is cheaper for this shape. Stacking the r factors along one GEMM dimension
    turns the sum over r into part of the second matmul, so any r costs two matmuls. A matmul that
    degenerates to an outer product or a matrix-vector product (B a single row or column)
    takes OuterProduct or MatVec instead, which run at memory speed.
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


class OuterProduct(torch.autograd.Function):
    """y[n, i*c + j] = t[n, i] * b[j] + bias[i*c + j]: a matmul whose contraction has length 1, as one broadcast
    multiply-add. As a GEMM it runs far below memory speed, and autograd's backward of a broadcast reduces
    slowly; this backward is two matrix-vector products and a sum. Under autocast the result keeps t's
    precision, as a matmul's would."""

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
    """x (m, k) @ w (k,), whose backward writes grad_x = grad w^T as a broadcast multiply rather than as a GEMM
    with a contraction of length 1, which runs far below memory speed."""

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


class KroneckerEmbedding(nn.Module):
    """A token embedding whose (num_embeddings x embedding_dim) table is W = sum_r kron(A[r], B[r]).

    A: (factors, a_rows, a_cols), B: (factors, num_embeddings/a_rows, embedding_dim/a_cols). Token
    t = i * b_rows + k has the row sum_r outer(A[r, i, :], B[r, k, :]).flatten(), looked up from the factors
    without building W. `logits(h)` is h @ W^T, the tied output layer, also without building W.
    """

    def __init__(self, num_embeddings, embedding_dim, a_rows, a_cols, factors=1):
        super().__init__()
        if num_embeddings % a_rows or embedding_dim % a_cols:
            raise ValueError(f"A of shape {a_rows}x{a_cols} must divide the embedding table of shape "
                             f"{num_embeddings}x{embedding_dim}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        b_rows, b_cols = num_embeddings // a_rows, embedding_dim // a_cols
        self.A = nn.Parameter(torch.empty(factors, a_rows, a_cols))
        self.B = nn.Parameter(torch.empty(factors, b_rows, b_cols))
        # h @ W^T with W^T = sum_r kron(A_r^T, B_r^T): a KroneckerLinear (embedding_dim -> num_embeddings) with
        # A^T of shape a_cols x a_rows; this picks its cheaper contraction order
        a_first, b_first = kron_flops(embedding_dim, num_embeddings, a_cols, a_rows, factors)
        self.logits_a_first = a_first <= b_first
        self.reset_parameters()

    def reset_parameters(self, std=0.02):
        nn.init.normal_(self.A, mean=0.0, std=factor_std(std, self.A.shape[0]))
        nn.init.normal_(self.B, mean=0.0, std=factor_std(std, self.A.shape[0]))

    def forward(self, input_ids):
        r, a_rows, a_cols = self.A.shape
        _, b_rows, b_cols = self.B.shape
        ids = input_ids.reshape(-1)
        # token t = i * b_rows + k: the rows A[:, i, :] and B[:, k, :] of every factor, (r, n, a_cols) and
        # (r, n, b_cols). An id outside 0..num_embeddings-1 has i outside 0..a_rows-1, refused by index_select.
        a = torch.index_select(self.A, 1, torch.div(ids, b_rows, rounding_mode="floor"))
        b = torch.index_select(self.B, 1, ids % b_rows)
        if r == 1:  # one outer product per token
            rows = a[0].unsqueeze(2) * b[0].unsqueeze(1)
        else:  # sum_r outer(a_r, b_r) = (a_cols x r) @ (r x b_cols) per token
            rows = torch.bmm(a.permute(1, 2, 0), b.transpose(0, 1))
        return rows.reshape(*input_ids.shape, self.embedding_dim)

    def logits(self, hidden_states):
        """hidden_states @ W^T, shape (..., num_embeddings), from the factors."""
        return kronecker_matmul(hidden_states, self.A.transpose(1, 2), self.B.transpose(1, 2), None,
                                self.logits_a_first)

    def dense_weight(self):
        """The materialized table W, (num_embeddings, embedding_dim): for checks, never used by the model."""
        return kronecker_sum(self.A, self.B)

    def extra_repr(self):
        (r, a_rows, a_cols), (_, b_rows, b_cols) = self.A.shape, self.B.shape
        return (f"{self.num_embeddings}, {self.embedding_dim}, factors={r}, A={a_rows}x{a_cols}, "
                f"B={b_rows}x{b_cols}")


class KroneckerLMHead(nn.Module):
    """The output layer tied to a KroneckerEmbedding: logits = h @ W^T from the embedding's factors. It owns no
    parameters (the embedding is referenced, not registered), so the factors are stored once."""

    def __init__(self, embedding):
        super().__init__()
        self.__dict__["embedding"] = embedding  # not a submodule: no second copy in state_dict or parameters()
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings

    def forward(self, hidden_states):
        return self.embedding.logits(hidden_states)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, tied to the factored wte"


def _init_factors(module, std):
    """Initialise a KroneckerLinear or KroneckerEmbedding as GPT-2 would its dense matrix: entries of W with
    std `std`, zero bias; parameters already loaded by from_pretrained are left alone."""
    s = factor_std(std, module.A.shape[0])
    hf_init.normal_(module.A, mean=0.0, std=s)
    hf_init.normal_(module.B, mean=0.0, std=s)
    if getattr(module, "bias", None) is not None:
        hf_init.zeros_(module.bias)


def _plan_text(config):
    return f"kron={config.kron}, kron_layers={config.kron_layers}"


class KronyPreTrainedModel(GPT2PreTrainedModel):
    config_class = KronyConfig

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (KroneckerLinear, KroneckerEmbedding)):
            _init_factors(module, std)
        elif isinstance(module, (GPT2Attention, GPT2MLP)) and isinstance(module.c_proj, KroneckerLinear):
            # GPT-2's scaled init of the projections into the residual stream (GPT2PreTrainedModel's, for factors)
            _init_factors(module.c_proj, std / math.sqrt(2 * self.config.n_layer))
        else:
            super()._init_weights(module)

    def _initialize_weights(self, module, is_custom_code=False):
        # transformers skips modules without parameters of their own (GPT2MLP, GPT2Attention) in custom code, which
        # would drop GPT-2's scaled c_proj init; _init_weights only uses the flag-respecting init functions
        super()._initialize_weights(module, is_custom_code=False)

    @staticmethod
    def _finalize_model_loading(model, load_config, loading_info):
        """Refuse weights that do not fit the config's plan, naming each tensor, rather than re-initialising them."""
        mismatched = sorted(loading_info.mismatched_keys, key=lambda k: k[0])
        if mismatched and not load_config.ignore_mismatched_sizes:
            lines = [f"{key}: shape {tuple(ckpt)} in the checkpoint, {tuple(expected)} from the config"
                     for key, ckpt, expected in mismatched]
            raise ValueError(f"{load_config.pretrained_model_name_or_path}: the weights do not match the config's "
                             f"Kronecker plan ({_plan_text(model.config)}):\n  " + "\n  ".join(lines))
        loading_info = GPT2PreTrainedModel._finalize_model_loading(model, load_config, loading_info)
        missing, unexpected = sorted(loading_info.missing_keys), sorted(loading_info.unexpected_keys)
        if missing or unexpected:
            lines = [f"{key}: expected by the config, absent from the checkpoint" for key in missing]
            lines += [f"{key}: in the checkpoint, not part of the config's model" for key in unexpected]
            raise ValueError(f"{load_config.pretrained_model_name_or_path}: the weights do not match the config's "
                             f"Kronecker plan ({_plan_text(model.config)}):\n  " + "\n  ".join(lines))
        return loading_info


class KronyModel(KronyPreTrainedModel, GPT2Model):
    """transformers' GPT2Model with the planned matrices factored (swapped in before weights are initialised)."""

    def post_init(self):
        self._factorize()
        super().post_init()

    def _factorize(self):
        config = self.config
        # checked again: the plan may have been edited since the config was built
        config.kron, config.kron_layers = normalize_plan(getattr(config, "kron", None),
                                                         getattr(config, "kron_layers", None), config)
        spec = config.kron.get("wte")
        if spec is not None and not isinstance(self.wte, KroneckerEmbedding):
            self.wte = KroneckerEmbedding(config.vocab_size, config.n_embd, *spec)
        for i in config.kron_layers:
            block = self.h[i]
            for name in BLOCK_MATRICES:
                spec = config.kron.get(name)
                if spec is None:
                    continue
                parent = block.mlp if name in ("c_fc", "c_proj") else block.attn
                attr = "c_proj" if name == "attn_proj" else name
                dense = getattr(parent, attr)
                if isinstance(dense, KroneckerLinear):
                    continue
                in_features, out_features = dense.weight.shape  # Conv1D: (nx, nf), y = x @ weight + bias
                setattr(parent, attr, KroneckerLinear(in_features, out_features, *spec,
                                                      bias=dense.bias is not None))

    def resize_token_embeddings(self, *args, **kwargs):
        if isinstance(self.wte, KroneckerEmbedding):
            raise NotImplementedError("resize_token_embeddings: the token embedding is Kronecker-factored; "
                                      "a factored vocabulary cannot be resized")
        return super().resize_token_embeddings(*args, **kwargs)


class KronyForCausalLM(KronyPreTrainedModel, GPT2LMHeadModel):
    """transformers' GPT2LMHeadModel over a KronyModel: GPT-2's forward, cache and generate(), with the planned
    matrices kept as Kronecker factors. With wte factored, lm_head is a KroneckerLMHead computing logits from
    wte's factors (the tie) and owns no parameter."""

    def __init__(self, config):
        # GPT2LMHeadModel.__init__, with KronyModel as the body and, for a factored wte, its tied output layer
        GPT2PreTrainedModel.__init__(self, config)
        self.transformer = KronyModel(config)
        if isinstance(self.transformer.wte, KroneckerEmbedding):
            self.lm_head = KroneckerLMHead(self.transformer.wte)
        else:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    @property
    def factored_embedding(self):
        return isinstance(self.transformer.wte, KroneckerEmbedding)

    def get_expanded_tied_weights_keys(self, all_submodels=False):
        # a factored wte is tied by construction (lm_head reads its factors); there is no lm_head.weight to tie
        if self.factored_embedding:
            return {}
        return super().get_expanded_tied_weights_keys(all_submodels=all_submodels)

    def get_output_embeddings(self):
        # None: no output matrix exists to resize or tie when wte is factored
        return None if self.factored_embedding else super().get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        if self.factored_embedding:
            raise NotImplementedError("lm_head is tied to the Kronecker-factored wte and cannot be replaced")
        return super().set_output_embeddings(new_embeddings)

    def resize_token_embeddings(self, *args, **kwargs):
        if self.factored_embedding:
            raise NotImplementedError("resize_token_embeddings: the token embedding (and the tied lm_head) is "
                                      "Kronecker-factored; a factored vocabulary cannot be resized")
        return super().resize_token_embeddings(*args, **kwargs)


KronyForCausalLM.register_for_auto_class("AutoModelForCausalLM")
