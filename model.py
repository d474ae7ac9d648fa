"""
GPT-2 with Kronecker-factored weight matrices: the architecture, in one file.

The dense model is nanoGPT's GPT with GPT-2's exact numerics (tanh GELU, LayerNorm eps 1e-5, tied
wte/lm_head, learned positions), so `GPT.from_pretrained("gpt2")` scores exactly like Hugging Face's.
GPTConfig's plan (a kron_shapes.Plan) replaces chosen matrices by sums of Kronecker products
W = sum_r A_r (x) B_r (kronecker.py), never materialized in the forward pass: the MLP's c_fc and c_proj,
attention's c_attn and attn_proj (attn.c_proj), block by block, and the tied token embedding wte. The plan may
instead make a block's matrix a Monarch matrix (monarch.py), also never materialized.

Opening and saving models is checkpoints.py; the initialisations from a teacher are compress.py.
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch.nn import functional as F

from common import EOT, first_of
from kron_shapes import Plan
from kronecker import KroneckerEmbedding, KroneckerLinear, fuses_mlp, kronecker_mlp
from monarch import MonarchLinear

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# Hugging Face's GPT-2 stores these as Conv1D weights, (in, out); our nn.Linear weights are (out, in).
HF_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORE_INDEX = -1  # a target that is not scored, in GPT.forward's loss and in perplexity.py


@dataclass
class GPTConfig:
    """A GPT's shape, GPT-2 small's by default, and its plan. Every written form of a plan (train.py's settings, a
    checkpoint's model_args, a Hugging Face config) becomes a Plan in from_settings, from_args or from_hf."""
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in Linears and LayerNorms
    plan: Plan | None = None  # which matrices are Kronecker-factored; None: the dense plan of this shape
    # The teacher's blocks this model's blocks were copied from, in order (kron_decompose.py --keep_blocks); None
    # for a model of all its teacher's blocks.
    teacher_blocks: list[int] | None = None

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if self.plan is None:
            self.plan = Plan(self.n_embd, self.n_layer, self.vocab_size)
        plan = self.plan
        if (plan.n_embd, plan.n_layer, plan.vocab_size) != (self.n_embd, self.n_layer, self.vocab_size):
            raise ValueError(f"a plan for n_embd={plan.n_embd}, n_layer={plan.n_layer}, vocab_size={plan.vocab_size} "
                             f"does not fit a model with {self.n_embd}, {self.n_layer}, {self.vocab_size}")

    def with_plan(self, plan: Plan) -> "GPTConfig":
        """Returns this config with another plan, one for the same n_embd, n_layer and vocab_size."""
        return replace(self, plan=plan)

    def to_args(self) -> dict:
        """Returns the config as plain values, what a checkpoint stores: the plan as its kron dict, None for none,
        and its monarch dict where it has Monarch matrices (GPTConfig.from_args reads it back)."""
        args = asdict(self)
        plan = args.pop("plan")
        args["kron"] = plan.to_kron() or None
        if plan.monarch:
            args["monarch"] = plan.to_monarch()
        return args

    @classmethod
    def from_settings(cls, *, dim_1: int | None = None, dim_2: int | None = None, factors: int | None = None,
                      kron: dict | None = None, kron_layers: str | list[int] | tuple[int, ...] = "all",
                      rank: dict[str, int] | None = None, monarch: dict[str, int] | None = None,
                      **model_settings) -> "GPTConfig":
        """A GPTConfig from train.py's settings: the model's, and the plan in any of its settings forms
        (kron_shapes.Plan.from_settings)."""
        config = cls(**model_settings)
        return config.with_plan(Plan.from_settings(config.n_embd, config.n_layer, config.vocab_size, dim_1=dim_1,
                                                   dim_2=dim_2, factors=factors, kron=kron, kron_layers=kron_layers,
                                                   rank=rank, monarch=monarch))

    @classmethod
    def from_args(cls, args: dict) -> "GPTConfig":
        """A GPTConfig from a checkpoint's model_args, also those written before plans were per block (the MLP
        shorthand dim_1, dim_2, factors and kron_layers were fields of their own)."""
        return cls.from_settings(**{key: value for key, value in args.items() if value is not None})

    @classmethod
    def from_hf(cls, hf: "Mapping | PretrainedConfig") -> "GPTConfig":
        """A GPTConfig from a Hugging Face config, or its config.json as a dict: GPT-2's, dense, or an export's
        (model_type krony) with its plan, older exports' forms too (Plan.from_hf). What a config.json does not say
        of our model takes its default: dropout 0 (its *_pdrop are training settings), biases, teacher_blocks."""
        hf = hf if isinstance(hf, Mapping) else hf.to_dict()
        config = cls(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], n_embd=hf["n_embd"])
        return config.with_plan(Plan.from_hf(hf)) if hf.get("model_type") == "krony" else config

    def to_hf(self) -> dict:
        """The fields of this config's Hugging Face config: GPT2Config's (GPT-2's defaults, gelu_new, eps 1e-5, tied
        embeddings, are ours too), and for a factored plan model_type krony, its kron and any monarch
        (KronyConfig's)."""
        # GPT-2's <|endoftext|> (its default bos and eos) lies outside a smaller vocabulary, a character model's
        no_eot = {} if self.vocab_size > EOT else dict(bos_token_id=None, eos_token_id=None)
        fields = dict(vocab_size=self.vocab_size, n_positions=self.block_size, n_embd=self.n_embd,
                      n_layer=self.n_layer, n_head=self.n_head, embd_pdrop=self.dropout, attn_pdrop=self.dropout,
                      resid_pdrop=self.dropout, **no_eot)
        if not self.plan:
            return fields
        monarch = {"monarch": self.plan.to_monarch()} if self.plan.monarch else {}
        return {**fields, "model_type": "krony", "kron": self.plan.to_kron(), **monarch}


def linear(config, name, in_features, out_features, layer):
    """Returns an nn.Linear, or a KroneckerLinear or MonarchLinear where the plan replaces matrix `name` in block
    `layer`."""
    shape, nblocks = config.plan.shape(name, layer), config.plan.nblocks(name, layer)
    if nblocks is not None:
        return MonarchLinear(in_features, out_features, nblocks, bias=config.bias)
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
        # Plans name this matrix attn_proj, since c_proj names the MLP's second one; the module keeps GPT-2's name,
        # so that checkpoint and Hugging Face keys stay GPT-2's (h.<block>.attn.c_proj.weight).
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
        self.fused = fuses_mlp(self.c_fc, self.c_proj)  # the 81M model's pair: no 4*n_embd hidden layer at all

    def forward(self, x):
        if self.fused:
            return self.dropout(kronecker_mlp(x, self.c_fc, self.c_proj))
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
        wte_shape = config.plan.shape("wte")
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
                if isinstance(module, (KroneckerLinear, MonarchLinear)):
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
        elif isinstance(module, (KroneckerLinear, KroneckerEmbedding, MonarchLinear)):
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

    def crop_block_size(self, block_size):
        """Keep the first block_size position embeddings, as nanoGPT does to fine-tune on shorter windows; returns
        the model, with a config of its own (the old one may be another model's too)."""
        self.config = replace(self.config, block_size=block_size)
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].clone())
        return self

    def with_dropout(self, dropout):
        """This model with another dropout: itself when it has that dropout already, else a copy rebuilt with it
        (a loaded model keeps the dropout it was saved with)."""
        if self.config.dropout == dropout:
            return self
        rebuilt = GPT(replace(self.config, dropout=dropout))
        rebuilt.load_state_dict(self.state_dict())
        return rebuilt

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # Decay every tensor of 2 or more dimensions: matmul weights, embeddings and the Kronecker layers' A and B;
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
        hf_model, loading = GPT2LMHeadModel.from_pretrained(name_or_dir, dtype=torch.float32,
                                                            output_loading_info=True)
        hf = hf_model.config
        if hf.model_type != "gpt2":
            raise ValueError(f"{name_or_dir} holds a {hf.model_type!r} model, not GPT-2")
        # transformers fills a missing weight with a random init and drops an unexpected one: neither is a GPT-2
        wrong = [f"{key} is missing" for key in loading["missing_keys"]] + \
            [f"{key} is not GPT-2's" for key in loading["unexpected_keys"]] + \
            [f"{key} has shape {tuple(got)}, not {tuple(want)}" for key, got, want in loading["mismatched_keys"]]
        if wrong:
            raise ValueError(f"{name_or_dir}: not a GPT-2 checkpoint: {first_of(wrong)}")
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
        model = cls(replace(GPTConfig.from_hf(hf), dropout=dropout))
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
    """Yields (name, layer, module) of every matrix a plan can factor: ("wte", None, wte), then per block
    ("c_attn", i, ...), ("attn_proj", i, ...), ("c_fc", i, ...), ("c_proj", i, ...); dense or factored."""
    yield "wte", None, model.transformer.wte
    for i, block in enumerate(model.transformer.h):
        yield "c_attn", i, block.attn.c_attn
        yield "attn_proj", i, block.attn.c_proj
        yield "c_fc", i, block.mlp.c_fc
        yield "c_proj", i, block.mlp.c_proj


def weight_of(module):
    """Returns W of a factorable matrix in the plan's orientation: (in, out) as in x @ W, wte (vocab, n_embd)."""
    if isinstance(module, (KroneckerLinear, KroneckerEmbedding, MonarchLinear)):
        return module.dense_weight()
    return module.weight if isinstance(module, nn.Embedding) else module.weight.t()
