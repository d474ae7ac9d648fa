"""
The arithmetic of Kronecker factor plans: which matrices can be factored, which shapes are valid, and what a
plan costs in parameters and multiply-adds.

Pure Python, no torch: model.py validates its config with it, and `python kron_decompose.py --list`
enumerates thousands of shapes without waiting seconds for torch to import.

A matrix W (in_features x out_features, as in x @ W) factored as sum_r A_r (x) B_r has
A_r: a_rows x a_cols and B_r: (in_features / a_rows) x (out_features / a_cols).
A plan names the factored matrices, {name: (a_rows, a_cols, factors)}, and the blocks whose matrices it
factors ("all", "odd", "even" or a list such as "0,2,4"); every matrix it does not name stays dense.
"""

BLOCK_MATRICES = ("c_attn", "attn_proj", "c_fc", "c_proj")  # in every block: attention's two, the MLP's two
MATRICES = ("wte",) + BLOCK_MATRICES  # wte: the token embedding, tied to lm_head, once per model
INIT_NAMES = ("vl", "vl_norm", "prune", "random")  # compress.INITS: here, so that --list needs no torch
PLAN_FIELDS = dict(dim_1=None, dim_2=None, factors=None, kron=None, kron_layers="all")  # GPTConfig's, unset
PART_OF = {"wte": "embedding", "c_attn": "attention", "attn_proj": "attention", "c_fc": "mlp", "c_proj": "mlp"}


def matrix_shape(name, n_embd, vocab_size):
    """(in_features, out_features) of a factorable matrix in x @ W orientation (wte: one row per token)."""
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
    """Multiply-adds per input row of x @ sum_r A_r (x) B_r for the two contraction orders.

    With x reshaped to X (a_rows x b_rows), y = sum_r A_r^T X B_r is computed either as (A^T X) B
    ("a_first") or as A^T (X B) ("b_first"). A dense x @ W costs in_features * out_features.
    """
    b_rows, b_cols = in_features // a_rows, out_features // a_cols
    a_first = factors * a_cols * b_rows * (a_rows + b_cols)
    b_first = factors * a_rows * b_cols * (b_rows + a_cols)
    return a_first, b_first


def check_factors(factors, in_features, out_features, a_rows, a_cols, what):
    max_rank = max_factors(in_features, out_features, a_rows, a_cols)
    if not (isinstance(factors, int) and 1 <= factors <= max_rank):
        raise ValueError(f"{what}factors={factors} must be between 1 and {max_rank}, the rank limit of "
                         f"{a_rows}x{a_cols} (x) {in_features // a_rows}x{out_features // a_cols} factors (more add "
                         f"parameters, not expressiveness)")


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
    check_factors(factors, n_embd, hidden, dim_1, dim_2, "")


def check_matrix(name, shape, n_embd, vocab_size):
    """Raise ValueError naming the matrix unless `shape` = (a_rows, a_cols, factors) factors it."""
    if name not in MATRICES:
        raise ValueError(f"{name!r} is not a factorable matrix: use {', '.join(MATRICES)}")
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
        raise ValueError(f"{name}: expected (a_rows, a_cols, factors) as three integers, got {shape!r}")
    a_rows, a_cols, factors = shape
    in_features, out_features = matrix_shape(name, n_embd, vocab_size)
    for what, value, size in (("rows", a_rows, in_features), ("columns", a_cols, out_features)):
        if value < 1 or size % value:
            raise ValueError(f"{name} is {in_features}x{out_features}: A's {what}={value} do not divide {size}; "
                             f"nearest valid: {nearest(value, divisors(size))}")
    check_factors(factors, in_features, out_features, a_rows, a_cols, f"{name}: ")


def shorthand_plan(dim_1, dim_2, factors):
    """The seed's three numbers as a plan: c_fc's A is dim_1 x dim_2, c_proj's its transpose; all None: {}."""
    given = (dim_1, dim_2, factors)
    if all(v is None for v in given):
        return {}
    if any(v is None for v in given):
        raise ValueError(f"dim_1, dim_2 and factors must be set together or not at all, got {given}")
    return {"c_fc": (dim_1, dim_2, factors), "c_proj": (dim_2, dim_1, factors)}


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


def resolve_plan(n_embd, n_layer, vocab_size, dim_1=None, dim_2=None, factors=None, kron=None, kron_layers="all"):
    """(plan, layers): {name: (a_rows, a_cols, factors)} in MATRICES order, and the factored blocks' indices.

    dim_1, dim_2, factors is the shorthand for the MLP; kron names any of MATRICES; where both name c_fc or c_proj
    they must agree. Raises ValueError naming the matrix on anything that cannot be built.
    """
    plan = shorthand_plan(dim_1, dim_2, factors)
    if plan:
        check_shape(n_embd, dim_1, dim_2, factors)
    if kron is not None and not isinstance(kron, dict):
        raise ValueError(f"kron must be a dict like {{'c_fc': (768, 768, 1)}}, got {kron!r}")
    for name, shape in (kron or {}).items():
        check_matrix(name, shape, n_embd, vocab_size)
        if plan.get(name, tuple(shape)) != tuple(shape):
            raise ValueError(f"{name}: kron gives {tuple(shape)} but dim_1, dim_2, factors give {plan[name]}")
        plan[name] = tuple(shape)
    layers = parse_layers(kron_layers, n_layer)
    return {name: plan[name] for name in MATRICES if name in plan}, layers


def b_shape(name, shape, n_embd, vocab_size):
    in_features, out_features = matrix_shape(name, n_embd, vocab_size)
    return in_features // shape[0], out_features // shape[1]


def check_init(plan, init, n_embd, vocab_size):
    """prune keeps every k-th row or column of W: it needs every factored matrix's B to be one row or column."""
    if init != "prune":
        return
    for name, shape in plan.items():
        b_rows, b_cols = b_shape(name, shape, n_embd, vocab_size)
        if b_rows != 1 and b_cols != 1:
            in_features, out_features = matrix_shape(name, n_embd, vocab_size)
            rows, cols = ("dim_1", "dim_2") if name == "c_fc" else (f"{name}'s A rows", "A columns")
            raise ValueError(f"init=prune needs B to be a single row or column, but {name}'s B is {b_rows}x{b_cols}: "
                             f"use {rows}={in_features} (keeps every k-th column of W) or {cols}={out_features} "
                             f"(keeps every k-th row), or init vl, vl_norm or random")


def weight_params(name, shape, n_embd, vocab_size):
    """Weights (no bias) of one matrix: dense when shape is None, else factors * (|A| + |B|)."""
    in_features, out_features = matrix_shape(name, n_embd, vocab_size)
    if shape is None:
        return in_features * out_features
    a_rows, a_cols, factors = shape
    return factors * (a_rows * a_cols + (in_features // a_rows) * (out_features // a_cols))


def count_parts(n_embd, n_layer=12, vocab_size=50257, block_size=1024, bias=True, plan=None, layers=None):
    """Parameters of GPT(GPTConfig(...)) by part: embedding (wte, tied to lm_head), position (wpe), attention,
    mlp and norms (every LayerNorm), for a resolved plan (resolve_plan) applied to `layers` (default all)."""
    plan, b = plan or {}, int(bias)
    layers = range(n_layer) if layers is None else layers
    parts = {"embedding": weight_params("wte", plan.get("wte"), n_embd, vocab_size), "position": block_size * n_embd,
             "attention": 0, "mlp": 0, "norms": (2 * n_layer + 1) * (n_embd + n_embd * b)}
    for i in range(n_layer):
        for name in BLOCK_MATRICES:
            shape = plan.get(name) if i in layers else None
            parts[PART_OF[name]] += weight_params(name, shape, n_embd, vocab_size) + \
                matrix_shape(name, n_embd, vocab_size)[1] * b
    return parts


def count_params(n_embd, dim_1=None, dim_2=None, factors=None, n_layer=12, vocab_size=50257, block_size=1024,
                 bias=True, kron=None, kron_layers="all"):
    """(parameters, parameters without wpe) of GPT(GPTConfig(...)), the plan given as GPTConfig takes it."""
    plan, layers = resolve_plan(n_embd, n_layer, vocab_size, dim_1, dim_2, factors, kron, kron_layers)
    parts = count_parts(n_embd, n_layer, vocab_size, block_size, bias, plan, layers)
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


def model_flops(n_embd, n_layer=12, vocab_size=50257, plan=None, layers=None):
    """Multiply-adds per token in all weight matrices (attention's and the MLP's, lm_head); attention's score and
    value products, which grow with the context, are left out."""
    plan = plan or {}
    layers = range(n_layer) if layers is None else layers
    blocks = sum(matrix_flops(name, plan.get(name) if i in layers else None, n_embd, vocab_size)
                 for i in range(n_layer) for name in BLOCK_MATRICES)
    return blocks + matrix_flops("wte", plan.get("wte"), n_embd, vocab_size)


def list_shapes(n_embd=768, factors_list=(1,), n_layer=12, vocab_size=50257, block_size=1024, name="mlp"):
    """A row for every valid (a_rows, a_cols, factors) of one matrix, smallest model first, the matrix factored in
    every block. "mlp" factors c_fc with A a_rows x a_cols and c_proj with its transpose (the dim_1 dim_2 shorthand);
    model counts and FLOPs are those of GPT-2 with only that matrix (or the MLP) factored."""
    matrix = "c_fc" if name == "mlp" else name
    in_features, out_features = matrix_shape(matrix, n_embd, vocab_size)
    dense_flops = model_flops(n_embd, n_layer, vocab_size)
    rows = []
    for a_rows in divisors(in_features):
        for a_cols in divisors(out_features):
            for factors in factors_list:
                if factors > max_factors(in_features, out_features, a_rows, a_cols):
                    continue
                shape = (a_rows, a_cols, factors)
                plan = shorthand_plan(*shape) if name == "mlp" else {name: shape}
                parts = count_parts(n_embd, n_layer, vocab_size, block_size, True, plan)
                params = sum(parts.values())
                b_rows, b_cols = in_features // a_rows, out_features // a_cols
                dense_matrices = sum(matrix_flops(m, None, n_embd, vocab_size) for m in plan)
                rows.append(dict(
                    dim_1=a_rows, dim_2=a_cols, factors=factors, a_shape=f"{a_rows}x{a_cols}",
                    b_shape=f"{b_rows}x{b_cols}",
                    matrix_params=weight_params(matrix, shape, n_embd, vocab_size),
                    params=params, params_no_wpe=params - parts["position"],
                    matrix_flops=sum(matrix_flops(m, s, n_embd, vocab_size) for m, s in plan.items()) / dense_matrices,
                    model_flops=model_flops(n_embd, n_layer, vocab_size, plan) / dense_flops,
                ))
    rows.sort(key=lambda r: (r["params"], r["dim_1"], r["dim_2"], r["factors"]))
    return rows
