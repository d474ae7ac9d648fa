"""
The arithmetic of Kronecker factor plans: which matrices can be factored, which shapes are valid, what a plan
costs in parameters and multiply-adds, and the Plan type itself.

Pure Python, no torch: model.py validates its config with it, `python kron_decompose.py --list` enumerates
thousands of shapes without waiting seconds for torch to import, and a factored Hugging Face export ships this
file beside kronecker.py (the exported folder reads its plan with it).

A matrix W (in_features x out_features, as in x @ W) factored as sum_r A_r (x) B_r has
A_r: a_rows x a_cols and B_r: (in_features / a_rows) x (out_features / a_cols).
A Plan says, block by block, which matrices are factored and with which (a_rows, a_cols, factors); every matrix
it does not name stays dense. Its one written form is the `--kron` syntax, one entry per matrix:

    c_fc=128x128:1              c_fc's A is 128x128, 1 factor, in every block
    c_fc@3=128x128:2            ... in block 3 only (or @1,3,5: in those blocks)
    wte=50257x384:1             the token embedding (once per model, tied to lm_head)

Rank-r factors are the plan's outer-product shapes: A in_features x 1, B 1 x out_features, r factors, so that
W_hat = sum_r a_r b_r^T (Van Loan's init is then W's truncated SVD). `rank_kron` writes the `--rank NAME=R`
shorthand (c_fc=64) as such entries.

`str(plan)` writes it, `parse_kron` reads it; as a dict ({"c_fc": (128, 128, 1), "c_fc@3": (128, 128, 2)}) it is
what config files, checkpoints and exported config.json files hold.

A plan may instead make a block's matrix a Monarch matrix of NBLOCKS blocks (monarch.py), written
`--monarch NAME[@BLOCKS]=NBLOCKS` with the same keys, held as a monarch dict ({"c_fc": 4, "c_proj@3": 8}) beside kron,
and printed as c_fc=monarch:4. NBLOCKS must divide both sides of W; it has min(in, out) * (in + out) / NBLOCKS
weights and as many multiply-adds per token.
"""

import math
import re
from collections.abc import Mapping

BLOCK_MATRICES = ("c_attn", "attn_proj", "c_fc", "c_proj")  # in every block: attention's two, the MLP's two
MATRICES = ("wte",) + BLOCK_MATRICES  # wte: the token embedding, tied to lm_head, once per model
# train.py's plan settings, unset: a dense model
PLAN_SETTINGS = dict(dim_1=None, dim_2=None, factors=None, kron=None, kron_layers="all", monarch=None)
PART_OF = {"wte": "embedding", "c_attn": "attention", "attn_proj": "attention", "c_fc": "mlp", "c_proj": "mlp"}
Shape = tuple[int, int, int]  # (a_rows, a_cols, factors) of one factored matrix


def matrix_shape(name, n_embd, vocab_size):
    """Returns (in_features, out_features) of a factorable matrix in x @ W orientation (wte: one row per token)."""
    return {"wte": (vocab_size, n_embd), "c_attn": (n_embd, 3 * n_embd), "attn_proj": (n_embd, n_embd),
            "c_fc": (n_embd, 4 * n_embd), "c_proj": (4 * n_embd, n_embd)}[name]


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def nearest(value, valid):
    """The valid values just below and just above `value`, as text: "384 or 768"."""
    below = [v for v in valid if v < value]
    above = [v for v in valid if v > value]
    return " or ".join(str(v) for v in below[-1:] + above[:1])


def max_factors(in_features, out_features, a_rows, a_cols):
    """The rank of W's Van Loan rearrangement, (a_rows*a_cols) x (b_rows*b_cols), bounds useful factors."""
    return min(a_rows * a_cols, (in_features // a_rows) * (out_features // a_cols))


def kron_flops(in_features, out_features, a_rows, a_cols, factors):
    """Returns the multiply-adds per input row of x @ sum_r A_r (x) B_r in each of the two contraction orders.

    With x reshaped to X (a_rows x b_rows), y = sum_r A_r^T X B_r is computed either as (A^T X) B
    ("a_first") or as A^T (X B) ("b_first"). A dense x @ W costs in_features * out_features.
    """
    b_rows, b_cols = in_features // a_rows, out_features // a_cols
    a_first = factors * a_cols * b_rows * (a_rows + b_cols)
    b_first = factors * a_rows * b_cols * (b_rows + a_cols)
    return a_first, b_first


def check_shape(n_embd, dim_1, dim_2, factors):
    """Raise ValueError, naming the nearest valid values, unless c_fc (n_embd x 4n_embd) factors as
    `factors` products with A_r of shape dim_1 x dim_2 (and c_proj as their transposes)."""
    hidden = 4 * n_embd
    if dim_1 < 1 or n_embd % dim_1:
        raise ValueError(f"dim_1={dim_1} does not divide n_embd={n_embd}; nearest valid dim_1: "
                         f"{nearest(dim_1, divisors(n_embd))} (all: {', '.join(map(str, divisors(n_embd)))})")
    if dim_2 < 1 or hidden % dim_2:
        raise ValueError(f"dim_2={dim_2} does not divide 4*n_embd={hidden}; nearest valid dim_2: "
                         f"{nearest(dim_2, divisors(hidden))} (all: {', '.join(map(str, divisors(hidden)))})")
    check_matrix("c_fc", (dim_1, dim_2, factors), n_embd, 1, "")


def check_matrix(name, shape, n_embd, vocab_size, where):
    """Raise ValueError naming the matrix (and `where`, e.g. " in block 3") unless shape = (a_rows, a_cols,
    factors) factors it."""
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
        raise ValueError(f"{name}{where}: expected (a_rows, a_cols, factors) as three integers, got {shape!r}")
    a_rows, a_cols, factors = shape
    in_features, out_features = matrix_shape(name, n_embd, vocab_size)
    for what, value, size in (("rows", a_rows, in_features), ("columns", a_cols, out_features)):
        if value < 1 or size % value:
            raise ValueError(f"{name}{where} is {in_features}x{out_features}: A's {what}={value} do not divide "
                             f"{size}; nearest valid: {nearest(value, divisors(size))}")
    max_rank = max_factors(in_features, out_features, a_rows, a_cols)
    if not 1 <= factors <= max_rank:
        raise ValueError(f"{name}{where}: factors={factors} must be between 1 and {max_rank}, the rank limit of "
                         f"{a_rows}x{a_cols} (x) {in_features // a_rows}x{out_features // a_cols} factors (more add "
                         f"parameters, not expressiveness)")


def check_monarch(name, nblocks, n_embd, vocab_size, where):
    """Raise ValueError naming the matrix (and `where`) unless it can be a Monarch matrix of `nblocks` blocks."""
    if name not in BLOCK_MATRICES:
        raise ValueError(f"{name}{where}: a Monarch matrix is one of {', '.join(BLOCK_MATRICES)}, not {name}")
    if not isinstance(nblocks, int) or isinstance(nblocks, bool):
        raise ValueError(f"{name}{where}: expected the number of Monarch blocks as an integer, got {nblocks!r}")
    in_features, out_features = matrix_shape(name, n_embd, vocab_size)
    valid = divisors(math.gcd(in_features, out_features))
    if nblocks not in valid:
        raise ValueError(f"{name}{where} is {in_features}x{out_features}: Monarch nblocks={nblocks} must divide both "
                         f"sides; nearest valid: {nearest(nblocks, valid)} (all: {', '.join(map(str, valid))})")


def monarch_params(name, nblocks, n_embd, vocab_size):
    """Weights (no bias) of a Monarch matrix of `nblocks` blocks, and also its multiply-adds per token: the two
    block-diagonal factors, in_features x min(in, out) and min(in, out) x out_features, each cut into nblocks."""
    in_features, out_features = matrix_shape(name, n_embd, vocab_size)
    return min(in_features, out_features) * (in_features + out_features) // nblocks


def parse_layers(spec, n_layer):
    """The block indices of "all", "odd" (1, 3, 5, ...), "even" (0, 2, ...) or a list like "0,2,4" or [0, 2]."""
    if spec in ("all", "odd", "even"):
        start, step = {"all": (0, 1), "odd": (1, 2), "even": (0, 2)}[spec]
        return tuple(range(start, n_layer, step))
    if isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        try:
            items = [int(item) for item in str(spec).split(",") if item.strip()]
        except ValueError:
            raise ValueError(f"kron_layers={spec!r} is not all, odd, even or a list of block indices like 0,2,4") \
                from None
    if not items or any(not isinstance(i, int) or not 0 <= i < n_layer for i in items):
        raise ValueError(f"kron_layers={spec!r}: block indices must be between 0 and {n_layer - 1}")
    return tuple(sorted(set(items)))


def parse_entries(entries, option, value, form, examples):
    """{key: integers} from `option` entries NAME[@BLOCKS]=VALUE, VALUE matched by the regex `value` (its groups
    are the integers); form and examples name VALUE in the error."""
    parsed = {}
    for entry in entries:
        match = re.fullmatch(rf"(\w+(?:@[\d,]+)?)={value}", entry.strip())
        if not match:
            raise ValueError(f"{option} {entry!r} is not NAME={form} or NAME@BLOCKS={form}, e.g. {examples}")
        key, name = match.group(1), match.group(1).partition("@")[0]
        if name not in MATRICES:
            raise ValueError(f"{option} {entry!r}: {name!r} is not one of {', '.join(MATRICES)}")
        if key in parsed:
            raise ValueError(f"{option} names {key} twice")
        parsed[key] = tuple(int(v) for v in match.groups()[1:])
    return parsed


def parse_kron(entries: list[str]) -> dict[str, Shape]:
    """{key: (a_rows, a_cols, factors)} from `--kron` entries NAME[@BLOCKS]=ROWSxCOLS:FACTORS (see the top)."""
    return parse_entries(entries, "--kron", r"(\d+)x(\d+):(\d+)", "ROWSxCOLS:FACTORS",
                         "c_attn=768x768:1 or c_fc@3=768x768:2")


def parse_rank(entries: list[str]) -> dict[str, int]:
    """{key: rank} from `--rank` entries NAME[@BLOCKS]=R (c_fc=64, c_proj@0,2=32)."""
    ranks = parse_entries(entries, "--rank", r"(\d+)", "RANK", "c_fc=64 or c_proj@3=32")
    return {key: rank for key, (rank,) in ranks.items()}


def parse_monarch(entries: list[str]) -> dict[str, int]:
    """{key: nblocks} from `--monarch` entries NAME[@BLOCKS]=NBLOCKS (c_fc=4, c_proj@0,2=8)."""
    blocks = parse_entries(entries, "--monarch", r"(\d+)", "NBLOCKS", "c_fc=4 or c_proj@3=8")
    return {key: nblocks for key, (nblocks,) in blocks.items()}


def rank_kron(ranks, n_embd, vocab_size):
    """The kron entries of rank-r factors {key: r}: (in_features, 1, r), A a column and B a row per factor."""
    wrong = [key for key in ranks if key.partition("@")[0] not in MATRICES]
    if wrong:
        raise ValueError(f"rank {wrong[0]}: {wrong[0].partition('@')[0]!r} is not one of {', '.join(MATRICES)}")
    return {key: (matrix_shape(key.partition("@")[0], n_embd, vocab_size)[0], 1, rank) for key, rank in ranks.items()}


def is_outer_product(name, shape, n_embd, vocab_size):
    """Whether the shape is rank-r factors: A in x 1 with B 1 x out, or A 1 x out with B in x 1 (its mirror)."""
    b_rows, b_cols = b_shape(name, shape, n_embd, vocab_size)
    return (shape[1] == 1 and b_rows == 1) or (shape[0] == 1 and b_cols == 1)


def parse_blocks(spec, n_layer):
    """The teacher blocks a student keeps (--keep_blocks 0,2,4), in the order given: each once, each in range
    (n_layer None: the range unchecked, for checking the list before the teacher's shape is known)."""
    if not str(spec).strip():
        raise ValueError("--keep_blocks is empty: name the blocks to keep, like 0,2,4")
    try:
        blocks = [int(item) for item in str(spec).split(",")]
    except ValueError:
        raise ValueError(f"--keep_blocks {spec!r} is not a list of block indices like 0,2,4") from None
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"--keep_blocks {spec!r} names a block twice")
    wrong = [b for b in blocks if not 0 <= b < (n_layer if n_layer is not None else math.inf)]
    if wrong:
        raise ValueError(f"--keep_blocks {spec!r}: block {wrong[0]} is out of range; the model's blocks are 0 to "
                         f"{n_layer - 1}")
    return blocks


class Plan:
    """Which weight matrices of a GPT are Kronecker-factored, block by block: {(matrix, block): (a_rows, a_cols,
    factors)}, block None for wte, and which are Monarch matrices: monarch {(matrix, block): nblocks}. Tied to a
    model's n_embd, n_layer and vocab_size, and valid for them: every constructor checks every shape. Build one with
    Plan.from_settings (any written form) or Plan(...) directly."""

    def __init__(self, n_embd: int, n_layer: int, vocab_size: int,
                 shapes: dict[tuple[str, int | None], Shape] | None = None,
                 monarch: dict[tuple[str, int], int] | None = None):
        self.n_embd, self.n_layer, self.vocab_size = n_embd, n_layer, vocab_size
        checked = {}
        for (name, block), shape in (shapes or {}).items():
            if name not in MATRICES:
                raise ValueError(f"{name!r} is not a factorable matrix: use {', '.join(MATRICES)}")
            if (name == "wte") != (block is None):
                raise ValueError(f"{name}: wte is once per model (no block), every other matrix is in a block")
            if block is not None and not (isinstance(block, int) and 0 <= block < n_layer):
                raise ValueError(f"{name} in block {block}: the model's blocks are 0 to {n_layer - 1}")
            check_matrix(name, shape, n_embd, vocab_size, "" if block is None else f" in block {block}")
            checked[name, block] = tuple(shape)
        order = {name: i for i, name in enumerate(MATRICES)}
        self.shapes = dict(sorted(checked.items(), key=lambda item: (order[item[0][0]], item[0][1] or 0)))
        monarch_checked = {}
        for (name, block), nblocks in (monarch or {}).items():
            where = "" if block is None else f" in block {block}"
            check_monarch(name, nblocks, n_embd, vocab_size, where)
            if not (isinstance(block, int) and 0 <= block < n_layer):
                raise ValueError(f"{name}{where}: the model's blocks are 0 to {n_layer - 1}")
            if (name, block) in self.shapes:
                raise ValueError(f"{name}{where} is both Kronecker-factored and Monarch: give it one of the two")
            monarch_checked[name, block] = nblocks
        self.monarch = dict(sorted(monarch_checked.items(), key=lambda item: (order[item[0][0]], item[0][1])))

    @classmethod
    def from_settings(cls, n_embd: int, n_layer: int, vocab_size: int, *, dim_1: int | None = None,
                      dim_2: int | None = None, factors: int | None = None,
                      kron: dict[str, Shape | list[int]] | None = None,
                      kron_layers: str | list[int] | tuple[int, ...] = "all",
                      rank: dict[str, int] | None = None, monarch: dict[str, int] | None = None) -> "Plan":
        """The plan of any settings form: the MLP shorthand dim_1, dim_2, factors (c_fc's A is dim_1 x dim_2,
        c_proj's its transpose), kron's NAME entries in the blocks kron_layers lists (all, odd, even, "0,2,4") and
        its NAME@BLOCKS entries in theirs, rank's rank-r entries (rank_kron), and monarch's NAME[@BLOCKS] entries
        of Monarch blocks, placed as kron's are."""
        shorthand = (dim_1, dim_2, factors)
        entries = {}
        if any(v is not None for v in shorthand):
            if any(v is None for v in shorthand):
                raise ValueError(f"dim_1, dim_2 and factors must be set together or not at all, got {shorthand}")
            check_shape(n_embd, *shorthand)
            entries = {"c_fc": (dim_1, dim_2, factors), "c_proj": (dim_2, dim_1, factors)}
        if kron is not None and not isinstance(kron, dict):
            raise ValueError(f"kron must be a dict like {{'c_fc': (768, 768, 1)}}, got {kron!r}")
        if rank is not None and not isinstance(rank, dict):
            raise ValueError(f"rank must be a dict like {{'c_fc': 64}}, got {rank!r}")
        if monarch is not None and not isinstance(monarch, dict):
            raise ValueError(f"monarch must be a dict like {{'c_fc': 4}}, got {monarch!r}")
        for key, shape in [*(kron or {}).items(), *rank_kron(rank or {}, n_embd, vocab_size).items()]:
            shape = tuple(shape) if isinstance(shape, list) else shape  # JSON gives lists
            if entries.get(key, shape) != shape:
                raise ValueError(f"{key} is given twice, as {shape} and as {entries[key]} (kron, rank or dim_1, "
                                 f"dim_2, factors)")
            entries[key] = shape
        layers = parse_layers(kron_layers, n_layer)
        return cls(n_embd, n_layer, vocab_size, expand_entries(entries, layers, n_layer),
                   expand_entries(monarch or {}, layers, n_layer))

    @classmethod
    def from_hf(cls, hf: Mapping) -> "Plan":
        """The plan of an exported config.json: its kron and monarch, and kron_layers where an older export wrote
        the blocks apart ([] with wte alone)."""
        layers = hf.get("kron_layers")
        return cls.from_settings(hf["n_embd"], hf["n_layer"], hf["vocab_size"], kron=hf.get("kron") or None,
                                 kron_layers=layers if layers else "all", monarch=hf.get("monarch") or None)

    def to_kron(self) -> dict[str, list[int]]:
        """The plan's Kronecker factors as a kron dict: a matrix with one shape in every block as NAME, any other as
        NAME@BLOCKS entries, one per shape. Lists, so that it reads back the same from JSON."""
        return {key: list(shape) for key, shape in written(self.shapes, self.n_layer).items()}

    def to_monarch(self) -> dict[str, int]:
        """The plan's Monarch matrices as a monarch dict, {NAME or NAME@BLOCKS: nblocks}, as to_kron writes."""
        return written(self.monarch, self.n_layer)

    def __str__(self) -> str:
        """The plan in --kron syntax, "c_fc=128x128:1 c_proj=128x128:1", Monarch matrices as "c_attn=monarch:4";
        "dense" for none."""
        kron = [f"{key}={r}x{c}:{f}" for key, (r, c, f) in self.to_kron().items()]
        return " ".join(kron + [f"{key}=monarch:{n}" for key, n in self.to_monarch().items()]) or "dense"

    def __repr__(self) -> str:
        return f"Plan({self.n_embd}, {self.n_layer}, {self.vocab_size}, {str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and (self.n_embd, self.n_layer, self.vocab_size, self.shapes, self.monarch) \
            == (other.n_embd, other.n_layer, other.vocab_size, other.shapes, other.monarch)

    def __bool__(self) -> bool:
        return bool(self.shapes or self.monarch)

    def shape(self, name: str, block: int | None = None) -> Shape | None:
        """The shape of matrix `name` in `block` (None for wte), or None where it is not Kronecker-factored."""
        return self.shapes.get((name, block))

    def nblocks(self, name: str, block: int | None = None) -> int | None:
        """The Monarch blocks of matrix `name` in `block`, or None where it is not a Monarch matrix."""
        return self.monarch.get((name, block))

    def factored(self, name: str, block: int | None = None) -> bool:
        """Whether the plan replaces matrix `name` in `block` (None for wte): Kronecker factors or Monarch."""
        return (name, block) in self.shapes or (name, block) in self.monarch

    @property
    def names(self) -> tuple[str, ...]:
        """The matrices factored (Kronecker or Monarch) in at least one place, in MATRICES order."""
        return tuple(name for name in MATRICES if any(matrix == name for matrix, _ in [*self.shapes, *self.monarch]))

    @property
    def blocks(self) -> tuple[int, ...]:
        """The blocks with at least one factored (Kronecker or Monarch) matrix."""
        return tuple(sorted({block for _, block in [*self.shapes, *self.monarch] if block is not None}))

    def places(self, name: str) -> list[tuple[int | None, Shape]]:
        """(block, shape) of every place where matrix `name` is factored (block None for wte)."""
        return [(block, shape) for (matrix, block), shape in self.shapes.items() if matrix == name]

    def check_init(self, init: str) -> None:
        """Raise ValueError if `init` cannot initialise this plan: prune keeps every k-th row or column of W, so it
        needs every factored matrix's B to be one row or column; Monarch matrices have vl (their projection), act
        and random alone."""
        if self.monarch and init in ("vl_norm", "prune"):
            (name, block), _ = next(iter(self.monarch.items()))
            raise ValueError(f"init={init} has no Monarch form, and {name} in block {block} is a Monarch matrix: use "
                             f"init vl, act or random")
        if init != "prune":
            return
        for (name, block), shape in self.shapes.items():
            b_rows, b_cols = b_shape(name, shape, self.n_embd, self.vocab_size)
            if b_rows != 1 and b_cols != 1:
                in_features, out_features = matrix_shape(name, self.n_embd, self.vocab_size)
                rows, cols = ("dim_1", "dim_2") if name == "c_fc" else (f"{name}'s A rows", "A columns")
                where = "" if block is None else f" in block {block}"
                raise ValueError(f"init=prune needs B to be a single row or column, but {name}'s B{where} is "
                                 f"{b_rows}x{b_cols}: use {rows}={in_features} (keeps every k-th column of W) or "
                                 f"{cols}={out_features} (keeps every k-th row), or init vl, vl_norm or random")

    def matrix_params(self, name: str, block: int | None = None) -> int:
        """Weights (no bias) of matrix `name` in `block`: dense, Kronecker factors or Monarch blocks."""
        nblocks = self.nblocks(name, block)
        if nblocks:
            return monarch_params(name, nblocks, self.n_embd, self.vocab_size)
        return weight_params(name, self.shape(name, block), self.n_embd, self.vocab_size)

    def count_parts(self, block_size: int = 1024, bias: bool = True) -> dict[str, int]:
        """Parameters of GPT(GPTConfig(...)) with this plan by part: embedding (wte, tied to lm_head), position
        (wpe), attention, mlp and norms (every LayerNorm)."""
        n_embd, vocab_size, b = self.n_embd, self.vocab_size, int(bias)
        parts = {"embedding": weight_params("wte", self.shape("wte"), n_embd, vocab_size),
                 "position": block_size * n_embd, "attention": 0, "mlp": 0,
                 "norms": (2 * self.n_layer + 1) * (n_embd + n_embd * b)}
        for block in range(self.n_layer):
            for name in BLOCK_MATRICES:
                parts[PART_OF[name]] += self.matrix_params(name, block) + \
                    matrix_shape(name, n_embd, vocab_size)[1] * b
        return parts

    def flops(self) -> int:
        """Multiply-adds per token in all weight matrices (attention's and the MLP's, lm_head); attention's score
        and value products, which grow with the context, are left out."""
        blocks = sum(self.matrix_params(name, block) if self.nblocks(name, block) else
                     matrix_flops(name, self.shape(name, block), self.n_embd, self.vocab_size)
                     for block in range(self.n_layer) for name in BLOCK_MATRICES)
        return blocks + matrix_flops("wte", self.shape("wte"), self.n_embd, self.vocab_size)


def expand_entries(entries, layers, n_layer):
    """{(name, block): value} of settings entries {NAME or NAME@BLOCKS: value}: NAME in every block of `layers`,
    NAME@BLOCKS in the blocks it lists, over NAME's; wte, once per model, at block None."""
    placed, given_by = {}, {}
    for key, value in sorted(entries.items(), key=lambda item: "@" in item[0]):  # NAME@BLOCKS override NAME
        name, per_block, blocks = key.partition("@")  # "c_fc@" is a per-block entry with no blocks: refused
        if name not in MATRICES:
            raise ValueError(f"{key}: {name!r} is not a factorable matrix: use {', '.join(MATRICES)}")
        if name == "wte":
            if per_block:
                raise ValueError(f"{key}: wte is once per model, not per block")
            placed["wte", None] = value
            continue
        try:
            targets = [int(b) for b in blocks.split(",")] if per_block else layers
        except ValueError:
            raise ValueError(f"{key}: blocks must be a list of block indices like {name}@1,3") from None
        for block in targets:
            if not 0 <= block < n_layer:
                raise ValueError(f"{key}: block {block} is out of range; the model's blocks are 0 to "
                                 f"{n_layer - 1}")
            if per_block and "@" in given_by.get((name, block), ""):
                raise ValueError(f"{name} in block {block} is given twice ({given_by[name, block]} and {key})")
            placed[name, block], given_by[name, block] = value, key
    return placed


def written(places, n_layer):
    """{NAME or NAME@BLOCKS: value} of {(name, block): value}, the form settings and configs hold: a matrix with one
    value in every block as NAME, any other as NAME@BLOCKS entries, one per value."""
    entries = {}
    for name in MATRICES:
        by_value = {}
        for (matrix, block), value in places.items():
            if matrix == name:
                by_value.setdefault(value, []).append(block)
        for value, blocks in by_value.items():
            whole = name == "wte" or (len(by_value) == 1 and blocks == list(range(n_layer)))
            entries[name if whole else f"{name}@{','.join(map(str, blocks))}"] = value
    return entries


def b_shape(name, shape, n_embd, vocab_size):
    in_features, out_features = matrix_shape(name, n_embd, vocab_size)
    return in_features // shape[0], out_features // shape[1]


def weight_params(name, shape, n_embd, vocab_size):
    """Weights (no bias) of one matrix: dense when shape is None, else factors * (|A| + |B|)."""
    in_features, out_features = matrix_shape(name, n_embd, vocab_size)
    if shape is None:
        return in_features * out_features
    a_rows, a_cols, factors = shape
    return factors * (a_rows * a_cols + (in_features // a_rows) * (out_features // a_cols))


def count_params(n_embd, n_layer=12, vocab_size=50257, block_size=1024, bias=True, **plan_settings):
    """(parameters, parameters without wpe) of GPT(GPTConfig(...)), the plan given as train.py's settings
    (dim_1, dim_2, factors, kron, kron_layers)."""
    parts = Plan.from_settings(n_embd, n_layer, vocab_size, **plan_settings).count_parts(block_size, bias)
    total = sum(parts.values())
    return total, total - parts["position"]


def matrix_flops(name, shape, n_embd, vocab_size):
    """Multiply-adds per token of one matrix: dense, or factored in its cheaper order. For wte this is lm_head's
    product (the lookup is free), whose W^T is factored by the transposed A and B."""
    in_features, out_features = matrix_shape(name, n_embd, vocab_size)
    if shape is None:
        return in_features * out_features
    a_rows, a_cols, factors = shape
    if name == "wte":
        return min(kron_flops(out_features, in_features, a_cols, a_rows, factors))
    return min(kron_flops(in_features, out_features, a_rows, a_cols, factors))


def list_shapes(n_embd=768, factors_list=(1,), n_layer=12, vocab_size=50257, block_size=1024, name="mlp"):
    """A row for every valid (a_rows, a_cols, factors) of one matrix, smallest model first, the matrix factored in
    every block. "mlp" factors c_fc with A a_rows x a_cols and c_proj with its transpose (the dim_1 dim_2 shorthand);
    model counts and FLOPs are those of GPT-2 with only that matrix (or the MLP) factored."""
    matrix = "c_fc" if name == "mlp" else name
    in_features, out_features = matrix_shape(matrix, n_embd, vocab_size)
    dense_flops = Plan(n_embd, n_layer, vocab_size).flops()
    rows = []
    for a_rows in divisors(in_features):
        for a_cols in divisors(out_features):
            for factors in factors_list:
                if factors > max_factors(in_features, out_features, a_rows, a_cols):
                    continue
                shape = (a_rows, a_cols, factors)
                settings = dict(zip(("dim_1", "dim_2", "factors"), shape)) if name == "mlp" else {"kron": {name: shape}}
                plan = Plan.from_settings(n_embd, n_layer, vocab_size, **settings)
                parts = plan.count_parts(block_size, True)
                params = sum(parts.values())
                b_rows, b_cols = in_features // a_rows, out_features // a_cols
                plan_shapes = {m: s for (m, _), s in plan.shapes.items()}
                dense_matrices = sum(matrix_flops(m, None, n_embd, vocab_size) for m in plan_shapes)
                rows.append(dict(
                    dim_1=a_rows, dim_2=a_cols, factors=factors, a_shape=f"{a_rows}x{a_cols}",
                    b_shape=f"{b_rows}x{b_cols}",
                    matrix_params=weight_params(matrix, shape, n_embd, vocab_size),
                    params=params, params_no_wpe=params - parts["position"],
                    matrix_flops=sum(matrix_flops(m, s, n_embd, vocab_size) for m, s in plan_shapes.items())
                    / dense_matrices,
                    model_flops=plan.flops() / dense_flops,
                ))
    rows.sort(key=lambda r: (r["params"], r["dim_1"], r["dim_2"], r["factors"]))
    return rows


def list_monarch(n_embd=768, n_layer=12, vocab_size=50257, block_size=1024, name="mlp"):
    """A row for every valid nblocks of one block matrix, in list_shapes' form, the matrix a Monarch matrix in every
    block ("mlp": c_fc and c_proj, with the same nblocks). Its FLOPs equal its parameters."""
    names = ("c_fc", "c_proj") if name == "mlp" else (name,)
    in_features, out_features = matrix_shape(names[0], n_embd, vocab_size)
    dense_flops = Plan(n_embd, n_layer, vocab_size).flops()
    dense_matrices = sum(matrix_flops(m, None, n_embd, vocab_size) for m in names)
    rows = []
    for nblocks in divisors(math.gcd(in_features, out_features)):
        plan = Plan.from_settings(n_embd, n_layer, vocab_size, monarch={m: nblocks for m in names})
        parts = plan.count_parts(block_size, True)
        params = sum(parts.values())
        rows.append(dict(dim_1="-", dim_2="-", factors="-", a_shape=f"monarch:{nblocks}", b_shape=f"{nblocks} blocks",
                         matrix_params=monarch_params(names[0], nblocks, n_embd, vocab_size),
                         params=params, params_no_wpe=params - parts["position"],
                         matrix_flops=sum(plan.matrix_params(m, 0) for m in names) / dense_matrices,
                         model_flops=plan.flops() / dense_flops))
    return rows


def allocate(options, budget, resolution=4000):
    """The choice of one option per place with the smallest total error whose parameters sum to at most `budget`,
    or None if none fits. options: {place: [(parameters, error, choice), ...]}. A multiple-choice knapsack, solved
    exactly by dynamic programming over the budget in steps of budget / resolution parameters (at least 1), each
    option's parameters rounded up to whole steps, so the choice always fits and is optimal up to that rounding.
    Options that cost more and err more than another are dropped first. Returns {place: choice}."""
    unit = max(1.0, budget / resolution)
    steps = int(budget // unit)
    fronts = {}
    for place, opts in options.items():
        front = []
        for option in sorted(opts, key=lambda o: (o[0], o[1])):
            if math.ceil(option[0] / unit) <= steps and (not front or option[1] < front[-1][1]):
                front.append(option)
        if not front:
            return None
        fronts[place] = front
    best, picks = [0.0] * (steps + 1), []  # best[c]: least error of the places so far within c steps
    for front in fronts.values():
        new, pick = [math.inf] * (steps + 1), [None] * (steps + 1)
        for i, (params, error, _) in enumerate(front):
            k = math.ceil(params / unit)
            for c in range(k, steps + 1):
                if best[c - k] + error < new[c]:
                    new[c], pick[c] = best[c - k] + error, i
        best = new
        picks.append(pick)
    if best[steps] == math.inf:
        return None
    chosen, c = {}, steps
    for (place, front), pick in reversed(list(zip(fronts.items(), picks))):
        option = front[pick[c]]
        chosen[place] = option[2]
        c -= math.ceil(option[0] / unit)
    return chosen
