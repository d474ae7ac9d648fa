"""
The arithmetic of Kronecker factor shapes: which shapes are valid and what a factored matrix costs.

Pure Python, no torch: model.py validates its config with it, and `python kron_decompose.py --list`
enumerates thousands of shapes without waiting seconds for torch to import.

A matrix W (in_features x out_features, as in x @ W) factored as sum_r A_r (x) B_r has
A_r: a_rows x a_cols and B_r: (in_features / a_rows) x (out_features / a_cols).
"""


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
    max_rank = max_factors(n_embd, hidden, dim_1, dim_2)
    if not 1 <= factors <= max_rank:
        raise ValueError(f"factors={factors} must be between 1 and {max_rank}, the rank limit of "
                         f"{dim_1}x{dim_2} (x) {n_embd // dim_1}x{hidden // dim_2} factors (more add parameters, "
                         f"not expressiveness)")
