"""
KronyConfig: GPT-2's configuration plus the plan of which weight matrices are Kronecker-factored.

Transformers glue only. `krony_to_gpt.py --keep_factors` ships this file beside modeling_krony.py and the
repository's own kronecker.py and kron_shapes.py, byte for byte; the plan is read and checked by kron_shapes.Plan,
as in the repository, so an export accepts exactly the plans our model does.

One field on top of GPT2Config, ``kron``: {NAME or NAME@BLOCKS: [a_rows, a_cols, factors]} (kron_shapes.py), e.g.
{"c_fc": [8, 16, 1], "c_fc@3": [8, 16, 2]}: c_fc in every block, with 2 factors in block 3. Matrices not named
stay dense. A factored W (in_features x out_features, used as x @ W) is sum_r kron(A[r], B[r]).

And ``monarch``: {NAME or NAME@BLOCKS: nblocks}, the block matrices that are Monarch matrices of nblocks blocks
(monarch.py), e.g. {"c_fc": 4}; an export without it has none.
"""

from dataclasses import field

from transformers import GPT2Config

from .kron_shapes import Plan


class KronyConfig(GPT2Config):
    """GPT2Config plus ``kron`` and ``monarch``, kept in Plan.to_kron's and to_monarch's canonical forms whatever
    form was given.

    Matrix names (x @ W orientation): c_attn (n_embd x 3 n_embd, block.attn.c_attn), attn_proj (n_embd x n_embd,
    block.attn.c_proj), c_fc (n_embd x 4 n_embd, block.mlp.c_fc), c_proj (4 n_embd x n_embd, block.mlp.c_proj),
    wte (vocab_size x n_embd, the token embedding, tied to lm_head).
    """

    model_type = "krony"

    kron: dict = field(default_factory=dict)
    monarch: dict = field(default_factory=dict)

    def __post_init__(self, **kwargs):
        kron_layers = kwargs.pop("kron_layers", None)  # an older export's blocks, now part of kron's keys
        super().__post_init__(**kwargs)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if self.n_inner not in (None, 4 * self.n_embd):  # the plan's shapes are GPT-2's: c_fc is n_embd x 4 n_embd
            raise ValueError(f"n_inner={self.n_inner}: a krony model's MLP is n_embd x 4*n_embd "
                             f"({4 * self.n_embd}); leave n_inner unset")
        plan = self.read_plan(kron_layers)
        if plan.shape("wte") and not self.tie_word_embeddings:
            raise ValueError("kron['wte']: a factored token embedding is also the output layer (lm_head = wte^T); "
                             "tie_word_embeddings=False would need a separate dense vocab x n_embd lm_head")
        self.kron, self.monarch = plan.to_kron(), plan.to_monarch()

    @property
    def plan(self) -> Plan:
        """The kron_shapes.Plan of this config, read (and checked) afresh: kron may have been edited since."""
        return self.read_plan()

    def read_plan(self, kron_layers: list[int] | None = None) -> Plan:
        """The plan of kron and monarch, kron's NAME entries confined to an older export's kron_layers."""
        return Plan.from_hf(dict(n_embd=self.n_embd, n_layer=self.n_layer, vocab_size=self.vocab_size,
                                 kron=self.kron, kron_layers=kron_layers, monarch=self.monarch))


KronyConfig.register_for_auto_class()
