"""The output-aware fit (compress.py, issue 21's core) against independent computations on small random problems:
least squares on the explicit data matrix, Van Loan, exact recovery, monotone refinement."""
import pytest
import torch
from conftest import kron_sum

from compress import (alternating_least_squares, fit_a, fit_b, nearest_kronecker, output_error,
                      whitened_kronecker)

A_ROWS, B_ROWS, A_COLS, B_COLS, R = 3, 2, 4, 2, 2


def problem(seed=0, n=200, subspace=None):
    """(W, inputs X, C = X^T X / n); inputs drawn in a `subspace`-dimensional subspace when given."""
    g = torch.Generator().manual_seed(seed)
    d_in, d_out = A_ROWS * B_ROWS, A_COLS * B_COLS
    W = torch.randn(d_in, d_out, generator=g, dtype=torch.float64)
    X = torch.randn(n, subspace or d_in, generator=g, dtype=torch.float64)
    if subspace:
        X = X @ torch.randn(subspace, d_in, generator=g, dtype=torch.float64)
    return W, X, X.T @ X / n


def explicit_least_squares(X, Y, linear_map, n_unknowns):
    """argmin_theta ||linear_map(theta) - Y||^2 by torch.linalg.lstsq on the map's matrix, column by column."""
    columns = [linear_map(torch.eye(n_unknowns, dtype=X.dtype)[j]).reshape(-1) for j in range(n_unknowns)]
    return torch.linalg.lstsq(torch.stack(columns, 1), Y.reshape(-1, 1)).solution.reshape(-1)


def test_each_half_step_equals_least_squares_on_the_explicit_data():
    W, X, C = problem()
    g = torch.Generator().manual_seed(1)
    A = torch.randn(R, A_ROWS, A_COLS, generator=g, dtype=torch.float64)
    B = torch.randn(R, B_ROWS, B_COLS, generator=g, dtype=torch.float64)
    n_a, n_b = A.numel(), B.numel()
    best_a = explicit_least_squares(X, X @ W, lambda a: X @ kron_sum(a.reshape(A.shape), B), n_a)
    best_b = explicit_least_squares(X, X @ W, lambda b: X @ kron_sum(A, b.reshape(B.shape)), n_b)
    torch.testing.assert_close(fit_a(W, C, B, A_ROWS, ridge=0.0).reshape(-1), best_a, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(fit_b(W, C, A, B_ROWS, ridge=0.0).reshape(-1), best_b, rtol=1e-7, atol=1e-9)


def test_with_identity_inputs_the_closed_form_is_van_loan():
    W, _, _ = problem()
    A, B = whitened_kronecker(W, torch.eye(len(W), dtype=torch.float64), A_ROWS, A_COLS, R, ridge=0.0)
    torch.testing.assert_close(kron_sum(A, B), kron_sum(*nearest_kronecker(W, A_ROWS, A_COLS, R)))


def test_a_kronecker_sum_of_the_plans_rank_is_recovered_exactly():
    g = torch.Generator().manual_seed(2)
    W = kron_sum(torch.randn(R, A_ROWS, A_COLS, generator=g, dtype=torch.float64),
                 torch.randn(R, B_ROWS, B_COLS, generator=g, dtype=torch.float64))
    _, _, C = problem(seed=3)
    A, B = whitened_kronecker(W, C, A_ROWS, A_COLS, R)
    torch.testing.assert_close(kron_sum(A, B), W, rtol=1e-8, atol=1e-8)
    A, B, objectives = alternating_least_squares(W, C, A, B, sweeps=3)
    assert objectives[-1] < 1e-16 * output_error(W, 0 * A, B, C)


def test_the_closed_form_is_exact_for_kronecker_structured_inputs():
    """With C = C1 (x) C2 the whitened decomposition is the optimum: no alternating sweep improves on it."""
    W, _, _ = problem(seed=4)
    g = torch.Generator().manual_seed(5)
    M1, M2 = torch.randn(A_ROWS, A_ROWS, generator=g, dtype=torch.float64), torch.randn(B_ROWS, B_ROWS, generator=g,
                                                                                          dtype=torch.float64)
    C = torch.kron(M1 @ M1.T + torch.eye(A_ROWS), M2 @ M2.T + torch.eye(B_ROWS))
    A, B = whitened_kronecker(W, C, A_ROWS, A_COLS, 1, ridge=0.0)
    _, _, objectives = alternating_least_squares(W, C, A, B, sweeps=5)
    assert objectives[-1] == pytest.approx(objectives[0], rel=1e-9)
    vl_error = output_error(W, *nearest_kronecker(W, A_ROWS, A_COLS, 1), C)
    assert objectives[0] <= vl_error


@pytest.mark.parametrize("seed", range(5))
def test_the_objective_never_increases_from_sweep_to_sweep(seed):
    W, _, C = problem(seed=seed, n=50)
    A, B = nearest_kronecker(W, A_ROWS, A_COLS, 1)
    _, _, objectives = alternating_least_squares(W, C, A, B, sweeps=10)
    assert len(objectives) > 1
    assert all(later <= earlier for earlier, later in zip(objectives, objectives[1:]))
    assert objectives[-1] < objectives[0]


def test_a_full_rank_plan_stays_exact():
    W, _, C = problem(seed=6)
    full = min(A_ROWS * A_COLS, B_ROWS * B_COLS)
    A, B = whitened_kronecker(W, C, A_ROWS, A_COLS, full)
    A, B, _ = alternating_least_squares(W, C, A, B, sweeps=2)
    torch.testing.assert_close(kron_sum(A, B), W, rtol=1e-8, atol=1e-8)


def test_inputs_in_a_subspace_make_the_output_error_far_smaller_than_van_loans():
    W, _, C = problem(seed=7, subspace=2)
    A, B = whitened_kronecker(W, C, A_ROWS, A_COLS, 1)
    A, B, objectives = alternating_least_squares(W, C, A, B, sweeps=10)
    vl_error = output_error(W, *nearest_kronecker(W, A_ROWS, A_COLS, 1), C)
    assert objectives[-1] < 0.2 * vl_error
    assert torch.isfinite(A).all() and torch.isfinite(B).all()
