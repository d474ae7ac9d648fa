"""
KronyConfig: GPT-2's configuration plus a plan of which weight matrices are Kronecker-factored.

Self-contained Hugging Face "remote code": this file is copied into exported model folders and imports only
the standard library and transformers. A factored matrix W (in_features x out_features, used as x @ W) is
W = sum_r kron(A[r], B[r]) with A of shape (factors, a_rows, a_cols) and B of shape
(factors, in_features / a_rows, out_features / a_cols).

Two fields on top of GPT2Config:

- ``kron``: {matrix name: [a_rows, a_cols, factors]}, names from MATRICES below. Matrices not named stay dense.
- ``kron_layers``: the block indices whose block matrices (c_fc, c_proj, c_attn, attn_proj) are factored;
  the other blocks stay dense. ``wte`` is not per block.
"""

from dataclasses import field

from transformers import GPT2Config

# name -> (where the matrix lives, its shape in x @ W orientation as a function of the config)
MATRICES = {
    "c_fc": ("transformer.h.{i}.mlp.c_fc", lambda c: (c.n_embd, c.n_inner or 4 * c.n_embd)),
    "c_proj": ("transformer.h.{i}.mlp.c_proj", lambda c: (c.n_inner or 4 * c.n_embd, c.n_embd)),
    "c_attn": ("transformer.h.{i}.attn.c_attn", lambda c: (c.n_embd, 3 * c.n_embd)),
    "attn_proj": ("transformer.h.{i}.attn.c_proj", lambda c: (c.n_embd, c.n_embd)),
    "wte": ("transformer.wte", lambda c: (c.vocab_size, c.n_embd)),
}
BLOCK_MATRICES = ("c_fc", "c_proj", "c_attn", "attn_proj")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0] if n <= 100_000 else None


def normalize_plan(kron, kron_layers, config):
    """(kron, kron_layers) checked against config's sizes and put in canonical form ({name: [a_rows, a_cols,
    factors]}, sorted list of block indices); ValueError naming the matrix and the reason otherwise."""
    if kron is None:
        kron = {}
    if kron_layers is None:
        kron_layers = []
    if not isinstance(kron, dict):
        raise ValueError(f"kron must be a dict {{matrix name: [a_rows, a_cols, factors]}}, got {kron!r}")
    plan = {}
    for name, spec in kron.items():
        if name not in MATRICES:
            raise ValueError(f"kron: unknown matrix {name!r}; the factorable matrices are {', '.join(MATRICES)}")
        if not isinstance(spec, (list, tuple)) or len(spec) != 3 or not all(_is_int(v) for v in spec):
            raise ValueError(f"kron[{name!r}] must be [a_rows, a_cols, factors], three integers; got {spec!r}")
        a_rows, a_cols, factors = spec
        rows, cols = MATRICES[name][1](config)
        if a_rows < 1 or rows % a_rows:
            hint = _divisors(rows)
            raise ValueError(f"kron[{name!r}]: a_rows={a_rows} does not divide the {rows} rows of {name} "
                             f"({rows} x {cols})" + (f"; valid a_rows: {hint}" if hint else ""))
        if a_cols < 1 or cols % a_cols:
            hint = _divisors(cols)
            raise ValueError(f"kron[{name!r}]: a_cols={a_cols} does not divide the {cols} columns of {name} "
                             f"({rows} x {cols})" + (f"; valid a_cols: {hint}" if hint else ""))
        if factors < 1:
            raise ValueError(f"kron[{name!r}]: factors={factors} must be at least 1")
        plan[name] = [a_rows, a_cols, factors]
    if not isinstance(kron_layers, (list, tuple)) or not all(_is_int(i) for i in kron_layers):
        raise ValueError(f"kron_layers must be a list of block indices, got {kron_layers!r}")
    layers = sorted(set(kron_layers))
    if len(layers) != len(kron_layers):
        raise ValueError(f"kron_layers has repeated block indices: {list(kron_layers)}")
    bad = [i for i in layers if not 0 <= i < config.n_layer]
    if bad:
        raise ValueError(f"kron_layers: block indices {bad} are outside 0..{config.n_layer - 1} "
                         f"(n_layer={config.n_layer})")
    block_names = [name for name in plan if name in BLOCK_MATRICES]
    if block_names and not layers:
        raise ValueError(f"kron factors the block matrices {', '.join(block_names)} but kron_layers is empty: "
                         f"list the blocks to factor them in (e.g. kron_layers={list(range(config.n_layer))})")
    if layers and not block_names:
        raise ValueError(f"kron_layers={layers} but kron names none of the block matrices "
                         f"({', '.join(BLOCK_MATRICES)}): nothing to factor in those blocks")
    if "wte" in plan and not config.tie_word_embeddings:
        raise ValueError("kron['wte']: a factored token embedding is also the output layer (lm_head = wte^T); "
                         "tie_word_embeddings=False would need a separate dense vocab x n_embd lm_head")
    return plan, layers


class KronyConfig(GPT2Config):
    """GPT2Config plus ``kron`` ({matrix name: [a_rows, a_cols, factors]}) and ``kron_layers`` (block indices).

    Matrix names and shapes (x @ W orientation): c_fc (n_embd x 4 n_embd, block.mlp.c_fc), c_proj
    (4 n_embd x n_embd, block.mlp.c_proj), c_attn (n_embd x 3 n_embd, block.attn.c_attn), attn_proj
    (n_embd x n_embd, block.attn.c_proj), wte (vocab_size x n_embd, the token embedding, tied to lm_head).
    """

    model_type = "krony"

    kron: dict = field(default_factory=dict)
    kron_layers: list = field(default_factory=list)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        self.kron, self.kron_layers = normalize_plan(self.kron, self.kron_layers, self)

    def factored(self, name, layer=None):
        """[a_rows, a_cols, factors] if matrix `name` (in block `layer` for block matrices) is factored, else None."""
        if name not in MATRICES:
            raise ValueError(f"unknown matrix {name!r}; the factorable matrices are {', '.join(MATRICES)}")
        if name in BLOCK_MATRICES and layer not in self.kron_layers:
            return None
        return self.kron.get(name)


KronyConfig.register_for_auto_class()
