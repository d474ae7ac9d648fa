"""
KronyForCausalLM: Hugging Face's own GPT-2 with some weight matrices kept as Kronecker factors.

Transformers glue only: the Kronecker layers are kronecker.py's, the repository's one implementation, which
`krony_to_gpt.py --keep_factors` ships beside this file (with configuration_krony.py and kron_shapes.py), so that
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` computes exactly what our model does, without
ever materialising a factored matrix W = sum_r kron(A[r], B[r]).

The model is transformers' GPT2LMHeadModel and GPT2Model (their forward passes, KV cache, attention masks,
generate()); only the modules that the config's plan factors are swapped, block by block, before weights are
initialised:

- a block's Conv1D (c_attn, attn.c_proj, c_fc, c_proj) becomes a KroneckerLinear: y = x @ W + bias, as Conv1D;
- a block whose c_fc and c_proj kronecker.fuses_mlp accepts (the paper's 81M layout), with a tanh GELU, runs
  its MLP as kronecker.kronecker_mlp, as model.py does: no 4*n_embd hidden layer (KroneckerMLP, same keys);
- the token embedding becomes a KroneckerEmbedding (rows looked up from the factors) and lm_head a
  KroneckerLMHead computing h @ W^T from the same factors, so no vocab x n_embd tensor exists anywhere;
- a block's Conv1D that the plan makes a Monarch matrix becomes monarch.py's MonarchLinear (shipped beside
  kronecker.py), its keys .in_factor / .out_factor / .bias.

State dict keys: transformer.h.1.mlp.c_fc.A / .B / .bias, transformer.wte.A / .B; no lm_head.weight when
wte is factored. Weights whose shapes or names disagree with the config's plan are refused with a ValueError
naming each tensor and both shapes.
"""

import math

import torch.nn as nn
from transformers import GPT2LMHeadModel, GPT2Model, GPT2PreTrainedModel
from transformers import initialization as hf_init  # init functions that leave loaded (flagged) parameters alone
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2MLP

from .configuration_krony import KronyConfig
from .kronecker import KroneckerEmbedding, KroneckerLinear, entry_std, fuses_mlp, kronecker_mlp
from .monarch import MonarchLinear
from .monarch import entry_std as monarch_entry_std

TANH_GELUS = ("gelu_pytorch_tanh", "gelu_new")  # the GELU that kronecker_mlp computes, in transformers' names
# a block matrix of the plan -> where GPT2Block keeps it: (submodule, attribute)
BLOCK_MODULES = {"c_attn": ("attn", "c_attn"), "attn_proj": ("attn", "c_proj"), "c_fc": ("mlp", "c_fc"),
                 "c_proj": ("mlp", "c_proj")}


class KroneckerLMHead(nn.Module):
    """The output layer tied to a KroneckerEmbedding: logits = h @ W^T from the embedding's factors. It owns no
    parameters (the embedding is referenced, not registered), so the factors are stored once."""

    def __init__(self, embedding):
        super().__init__()
        self.__dict__["embedding"] = embedding  # not a submodule: no second copy in state_dict or parameters()
        self.in_features, self.out_features = embedding.n_embd, embedding.vocab_size

    def forward(self, hidden_states):
        return self.embedding.unembed(hidden_states)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, tied to the factored wte"


def _init_factors(module, std):
    """Initialise a KroneckerLinear or KroneckerEmbedding as GPT-2 would its dense matrix: entries of W with
    std `std`, zero bias; parameters already loaded by from_pretrained are left alone."""
    s = entry_std(std, module.A.shape[0])
    hf_init.normal_(module.A, mean=0.0, std=s)
    hf_init.normal_(module.B, mean=0.0, std=s)
    if getattr(module, "bias", None) is not None:
        hf_init.zeros_(module.bias)


def _init_monarch(module, std):
    """Initialise a MonarchLinear as GPT-2 would its dense matrix (entries of W with std `std`, zero bias), leaving
    parameters already loaded alone."""
    s = monarch_entry_std(std, module.nblocks, module.in_factor.shape[2])
    hf_init.normal_(module.in_factor, mean=0.0, std=s)
    hf_init.normal_(module.out_factor, mean=0.0, std=s)
    if module.bias is not None:
        hf_init.zeros_(module.bias)


class KroneckerMLP(GPT2MLP):
    """GPT2MLP (c_fc, tanh GELU, c_proj, dropout) computed by kronecker_mlp, for a pair that fuses_mlp accepts."""

    def forward(self, hidden_states):
        return self.dropout(kronecker_mlp(hidden_states, self.c_fc, self.c_proj))


class KronyPreTrainedModel(GPT2PreTrainedModel):
    config_class = KronyConfig

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (KroneckerLinear, KroneckerEmbedding)):
            _init_factors(module, std)
        elif isinstance(module, MonarchLinear):
            _init_monarch(module, std)
        elif isinstance(module, (GPT2Attention, GPT2MLP)) and isinstance(module.c_proj, (KroneckerLinear,
                                                                                          MonarchLinear)):
            # GPT-2's scaled init of the projections into the residual stream (GPT2PreTrainedModel's, for factors)
            init = _init_monarch if isinstance(module.c_proj, MonarchLinear) else _init_factors
            init(module.c_proj, std / math.sqrt(2 * self.config.n_layer))
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
                             f"Kronecker plan ({model.config.plan}):\n  " + "\n  ".join(lines))
        loading_info = GPT2PreTrainedModel._finalize_model_loading(model, load_config, loading_info)
        missing, unexpected = sorted(loading_info.missing_keys), sorted(loading_info.unexpected_keys)
        if missing or unexpected:
            lines = [f"{key}: expected by the config, absent from the checkpoint" for key in missing]
            lines += [f"{key}: in the checkpoint, not part of the config's model" for key in unexpected]
            raise ValueError(f"{load_config.pretrained_model_name_or_path}: the weights do not match the config's "
                             f"Kronecker plan ({model.config.plan}):\n  " + "\n  ".join(lines))
        return loading_info


class KronyModel(KronyPreTrainedModel, GPT2Model):
    """transformers' GPT2Model with the planned matrices factored (swapped in before weights are initialised)."""

    def post_init(self):
        self._factorize()
        super().post_init()

    def _factorize(self):
        config = self.config
        for (name, block), shape in config.plan.shapes.items():  # the plan is checked again: kron may be edited
            if name == "wte":
                self.wte = KroneckerEmbedding(config.vocab_size, config.n_embd, *shape)
                continue
            submodule, attr = BLOCK_MODULES[name]
            parent = getattr(self.h[block], submodule)
            in_features, out_features = getattr(parent, attr).weight.shape  # Conv1D: (nx, nf), y = x @ weight + b
            setattr(parent, attr, KroneckerLinear(in_features, out_features, *shape))
        for (name, block), nblocks in config.plan.monarch.items():
            submodule, attr = BLOCK_MODULES[name]
            parent = getattr(self.h[block], submodule)
            in_features, out_features = getattr(parent, attr).weight.shape
            setattr(parent, attr, MonarchLinear(in_features, out_features, nblocks))
        for block in self.h:
            if fuses_mlp(block.mlp.c_fc, block.mlp.c_proj) and config.activation_function in TANH_GELUS:
                block.mlp.__class__ = KroneckerMLP  # a subclass adding no state: the same modules and keys

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
