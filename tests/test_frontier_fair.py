"""Every family at its best on the frontier: low rank's act start is SVD-LLM's whitened SVD, the allocated plan
is priced over the union of every Kronecker shape and rank and is no worse than each family's best, and the
multiply-adds per token of a plan are those its layers run."""
import numpy as np
import pytest
import torch
from conftest import tiny_gpt
from torch.utils.flop_counter import FlopCounterMode

import study
from compress import allocated_plan, allocation_options, calibrated_options, compress, whitened_kronecker
from kron_shapes import BLOCK_MATRICES, Plan
from kronecker import KroneckerLinear, kronecker_sum


def test_lowrank_acts_start_is_svd_llms_whitened_svd():
    """SVD-LLM: S the Cholesky factor of the calibration inputs' Gram matrix X^T X, the rank-r truncated SVD of
    W^T S (their W is out x in), un-whitened by S^-1; ours is the whitened closed form of the rank-r shape."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12))  # correlated inputs
    W = rng.standard_normal((12, 20))  # x @ W
    S = np.linalg.cholesky(X.T @ X)
    U, s, Vt = np.linalg.svd(W.T @ S)
    r = 3
    expected = ((U[:, :r] * s[:r]) @ Vt[:r] @ np.linalg.inv(S)).T
    A, B = whitened_kronecker(torch.from_numpy(W), torch.from_numpy(X.T @ X / len(X)), 12, 1, r)
    assert A.shape == (r, 12, 1) and B.shape == (r, 1, 20)
    assert kronecker_sum(A, B).numpy() == pytest.approx(expected, abs=1e-6)


SHAPE = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64)


def test_multiply_adds_per_token_equal_a_count_by_hand_and_what_the_layers_run():
    # c_fc 16 -> 64: A 2x16, B 8x4, 3 factors; X (2x8) B then A^T: 3 * (2*8*4 + 16*2*4) = 576, the cheaper order
    # c_proj 64 -> 16: rank 3, A 64x1, B 1x16: 3 * (64 + 16) = 240; c_attn 16 x 48 and attn_proj 16 x 16 dense;
    # lm_head 16 x 64
    plan = Plan.from_settings(16, 1, 64, kron={"c_fc": (2, 16, 3)}, rank={"c_proj": 3})
    assert plan.flops() == 576 + 240 + 16 * 48 + 16 * 16 + 16 * 64
    model = tiny_gpt(**SHAPE, kron={"c_fc": (2, 16, 3)}, rank={"c_proj": 3})
    for layer, by_hand in ((model.transformer.h[0].mlp.c_fc, 576), (model.transformer.h[0].mlp.c_proj, 240),
                           (model.transformer.h[0].attn.c_attn, 16 * 48)):
        assert isinstance(layer, KroneckerLinear) == (by_hand != 16 * 48)
        with FlopCounterMode(display=False) as counter:
            layer(torch.randn(5, 7, layer.in_features))
        assert counter.get_total_flops() == 2 * by_hand * 5 * 7  # two FLOPs a multiply-add


def test_a_frontier_row_has_its_students_multiply_adds(tmp_path):
    from checkpoints import make_checkpoint, save_checkpoint
    model = tiny_gpt(**SHAPE, kron={"c_fc": (2, 16, 3)}, rank={"c_proj": 3})
    save_checkpoint(make_checkpoint(model, None), tmp_path / "s.pt")
    size = study.model_size(str(tmp_path / "s.pt"))
    assert size["macs_per_token"] == 576 + 240 + 16 * 48 + 16 * 16 + 16 * 64
    assert size["factored"] == {"rank": 1, "kronecker": 1, "monarch": 0}


@pytest.fixture(scope="module")
def teacher_and_calibration():
    torch.manual_seed(0)
    teacher = tiny_gpt(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=64)
    return teacher, torch.randint(0, 64, (64, 8), generator=torch.Generator().manual_seed(0))


def total_proxy(options, plan):
    """The allocator's total error proxy of a plan: each factored matrix's priced option, 0 for a dense one."""
    return sum(next(e for p, e, s in opts if s == plan.shape(name, block)) if plan.shape(name, block) else 0.0
               for (name, block), opts in options.items())


def params_no_wpe(plan, shape):
    parts = plan.count_parts(shape.block_size, shape.bias)
    return sum(parts.values()) - parts["position"]


def test_the_allocated_plan_is_no_worse_than_each_familys_best_at_its_size(teacher_and_calibration):
    """Priced alike (the output error on the calibration tokens, scaled to the loss), the union over every
    Kronecker shape and rank of every block's matrices holds each family's best, so the allocation at that
    family's size costs no more."""
    teacher, calibration = teacher_and_calibration
    shape = teacher.config
    budget = round(0.6 * study.teacher_params_no_wpe(shape))
    options = calibrated_options(teacher, list(BLOCK_MATRICES), calibration)
    kronecker = study.least_error_shape(teacher, study.kronecker_candidates(shape, budget), calibration)
    rank = study.match_family("l", {"family": "lowrank"}, budget, shape)["plan"]["rank"]
    lowrank = Plan.from_settings(16, 2, 64, rank=rank)
    for best in (kronecker, lowrank):
        allocated = allocated_plan(teacher, list(BLOCK_MATRICES), params_no_wpe(best, shape), calibration)
        assert params_no_wpe(allocated, shape) <= params_no_wpe(best, shape)
        assert total_proxy(options, allocated) <= total_proxy(options, best) + 1e-9
    assert allocated_plan(teacher, list(BLOCK_MATRICES), 100, calibration) is None  # less than the embedding


def test_the_kronecker_family_is_chosen_by_output_error_for_act_and_by_weight_error_for_vl(
        teacher_and_calibration):
    teacher, calibration = teacher_and_calibration
    shape = teacher.config
    candidates = study.kronecker_candidates(shape, round(0.6 * study.teacher_params_no_wpe(shape)))
    for priced_by in (calibration, None):
        options = calibrated_options(teacher, ["c_fc", "c_proj"], priced_by) if priced_by is not None else \
            allocation_options(teacher, ["c_fc", "c_proj"])
        chosen = study.least_error_shape(teacher, candidates, priced_by)
        totals = [total_proxy(options, Plan.from_settings(16, 2, 64, dim_1=a, dim_2=b, factors=f))
                  for a, b, f in candidates]
        assert total_proxy(options, chosen) == min(totals)
    assert study.pricing({"init": "act"}) != study.pricing({"init": "vl"})


def test_a_matrixs_price_is_the_loss_its_closed_form_costs_scaled_by_the_proxy(teacher_and_calibration):
    """calibrated_options prices each matrix's options in proportion to allocation_options' output-weighted proxy,
    so that its rank-r option of half the weights costs what replacing that matrix alone by it costs the loss:
    here init act without Adam steps, whose start is that closed form."""
    teacher, calibration = teacher_and_calibration
    proxies = allocation_options(teacher, ["c_fc"], calibration)
    prices = calibrated_options(teacher, ["c_fc"], calibration)
    with torch.no_grad():
        base = teacher(calibration[:, :-1], calibration[:, 1:])[1].item()
    rank = 16 * 64 // (2 * (16 + 64))
    rises = {}
    for block in (0, 1):
        plan = Plan(16, 2, 64, {("c_fc", block): (16, 1, rank)})
        student = compress(teacher, plan, "act", calibration=calibration, act_steps=0)
        with torch.no_grad():
            rises[block] = student(calibration[:, :-1], calibration[:, 1:])[1].item() - base
        scale = prices["c_fc", block][1][1] / proxies["c_fc", block][1][1]
        assert [price for _, price, _ in prices["c_fc", block]] == \
            pytest.approx([scale * proxy for _, proxy, _ in proxies["c_fc", block]])
    block = max(rises, key=rises.get)  # the other may be floored at 1% of it
    reference = next(price for _, price, shape in prices["c_fc", block] if shape == (16, 1, rank))
    assert rises[block] > 0 and reference == pytest.approx(rises[block], rel=1e-3)
