"""kron_decompose.py --allocate: the budgeted choice (kron_shapes.allocate) against brute force, the price of each
option (compress.allocation_options) against the decomposition's real error, and the command end to end."""
import itertools
import random

import pytest
import torch
from conftest import kron_sum, random_corpus, run_main, tiny_gpt, tiny_train_args, train_in_process

import kron_decompose
import krony_to_gpt
from checkpoints import load_checkpoint, make_checkpoint, save_checkpoint
from common import write_vocab
from compress import allocation_options, nearest_kronecker
from kron_shapes import Plan, allocate, count_params
from model import weight_of


def random_options(rng, places=4, per_place=4):
    options = {}
    for place in range(places):
        params = sorted(rng.sample(range(1, 100), per_place))
        errors = sorted((rng.random() for _ in range(per_place)), reverse=True)
        options[place] = [(p, e, (place, i)) for i, (p, e) in enumerate(zip(params, errors))]
    return options


def brute_force(options, budget):
    best = None
    for combination in itertools.product(*options.values()):
        if sum(o[0] for o in combination) <= budget:
            error = sum(o[1] for o in combination)
            best = error if best is None else min(best, error)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_the_choice_stays_within_the_budget_and_is_the_brute_force_optimum(seed):
    rng = random.Random(seed)
    options = random_options(rng)
    budget = rng.randint(sum(o[0][0] for o in options.values()), sum(o[-1][0] for o in options.values()))
    chosen = allocate(options, budget)
    picked = [next(o for o in options[place] if o[2] == choice) for place, choice in chosen.items()]
    assert sum(o[0] for o in picked) <= budget
    assert sum(o[1] for o in picked) == pytest.approx(brute_force(options, budget), abs=1e-12)


def test_a_budget_below_the_cheapest_choice_is_refused_and_a_large_one_buys_the_best():
    options = random_options(random.Random(0))
    assert allocate(options, sum(o[0][0] for o in options.values()) - 1) is None
    assert allocate(options, 10 ** 6) == {place: opts[-1][2] for place, opts in options.items()}


def test_each_option_is_priced_by_its_decompositions_real_error():
    model = tiny_gpt(seed=1)
    options = allocation_options(model, ["c_fc"])
    assert set(options) == {("c_fc", 0), ("c_fc", 1)}
    W = weight_of(model.transformer.h[1].mlp.c_fc).detach().double()  # 16x64
    dense_params, dense_error, dense_choice = options["c_fc", 1][0]
    assert (dense_params, dense_error, dense_choice) == (W.numel(), 0.0, None)
    kronecker = [option for option in options["c_fc", 1][1:] if option[2][0] != "monarch"]  # test_allocate_union's
    for params, error, (a_rows, a_cols, factors) in kronecker:
        A, B = nearest_kronecker(W, a_rows, a_cols, factors)
        assert params == A.numel() + B.numel() < W.numel()
        assert error == pytest.approx(((W - kron_sum(A, B)).square().sum() / W.square().sum()).item(), abs=1e-9)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("allocate") / "teacher.pt"
    itos = [chr(ord("0") + i) for i in range(64)]  # characters: the exports need no GPT-2 tokenizer
    save_checkpoint(make_checkpoint(tiny_gpt(seed=2), itos), path)
    return path


def test_allocate_writes_a_per_block_plan_within_the_target(teacher_path, tmp_path, capsys):
    _, dense_no_wpe = count_params(16, 2, 64, 8)
    uniform_no_wpe = count_params(16, 2, 64, 8, dim_1=4, dim_2=16, factors=1)[1]
    out = tmp_path / "allocated.pt"
    status, stdout, _ = run_main(kron_decompose.main, ["--allocate", "--target", uniform_no_wpe, "--model",
                                                       teacher_path, "--out", out], capsys)
    assert status == 0, stdout
    assert "allocated c_fc,c_proj within" in stdout
    model, checkpoint = load_checkpoint(out)
    assert 0.97 * uniform_no_wpe <= model.get_num_params() <= uniform_no_wpe < dense_no_wpe
    allocation = checkpoint["init"]["allocation"]
    assert allocation["params_no_wpe"] == model.get_num_params()
    assert model.config.plan == Plan.from_settings(16, 2, 64, kron=model.config.plan.to_kron())
    # the choice beats the uniform plan of the same size by its own measure: the total relative weight error
    uniform = kron_decompose_errors(teacher_path, tmp_path, capsys, [4, 16, 1])
    assert sum(checkpoint["init"]["errors"][k] ** 2 for k in uniform) <= sum(e ** 2 for e in uniform.values())


def test_an_allocated_plan_trains_and_exports_like_any_plan(teacher_path, tmp_path, capsys):
    """Per-block shapes down to outer products (A 1x64, B 16x1): train.py continues the checkpoint, and both
    exports are written (each checks its logits against the checkpoint's before it is renamed into place)."""
    allocated = tmp_path / "allocated.pt"
    assert run_main(kron_decompose.main, ["--allocate", "--target", 5000, "--model", teacher_path, "--out",
                                          allocated], capsys)[0] == 0
    model, _ = load_checkpoint(allocated)
    assert len(set(model.config.plan.shapes.values())) > 1  # not one shape everywhere
    data_dir = random_corpus(tmp_path / "data")
    write_vocab(load_checkpoint(allocated)[1]["itos"], data_dir)
    train_in_process(tiny_train_args(data_dir, tmp_path / "run", n_embd=16, block_size=8, init_from=allocated,
                                     max_iters=2, eval_interval=2))
    trained, _ = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert trained.config.plan == model.config.plan
    for flags in ([], ["--keep_factors"]):
        status, out, err = run_main(krony_to_gpt.main, [tmp_path / "run" / "ckpt.pt", tmp_path / f"export{len(flags)}",
                                                        *flags], capsys)
        assert status == 0, err


def kron_decompose_errors(teacher_path, tmp_path, capsys, shape):
    out = tmp_path / "uniform.pt"
    assert run_main(kron_decompose.main, [*shape, "--model", teacher_path, "--out", out], capsys)[0] == 0
    return load_checkpoint(out)[1]["init"]["errors"]


@pytest.mark.parametrize("argv, message", [
    (["4", "16", "1", "--allocate", "--target", "5000"], "takes no DIM_1 DIM_2 FACTORS"),
    (["--allocate"], "needs --target"),
    (["--allocate", "--target", "5000", "--matrices", "c_fc,lm_head"], "--matrices"),
    (["--allocate", "--target", "100"], "the smallest plan"),
])
def test_bad_allocations_are_refused_in_one_line(teacher_path, tmp_path, capsys, argv, message):
    status, _, err = run_main(kron_decompose.main, [*argv, "--model", teacher_path, "--out", tmp_path / "x.pt"],
                              capsys)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_with_calibration_act_prices_options_by_output_error(teacher_path):
    model = tiny_gpt(seed=2)
    calibration = torch.randint(64, (32, 8), generator=torch.Generator().manual_seed(0))
    weighted, plain = allocation_options(model, ["c_proj"], calibration), allocation_options(model, ["c_proj"])
    assert [o[0] for o in weighted["c_proj", 0]] == [o[0] for o in plain["c_proj", 0]]
    assert [o[1] for o in weighted["c_proj", 0]] != pytest.approx([o[1] for o in plain["c_proj", 0]])


@pytest.mark.parametrize("seed", range(5))
def test_at_gpt2_scale_budgets_the_rounded_steps_still_fit(seed):
    """Parameters in the millions: the budget is cut into `resolution` steps, each option's cost rounded up."""
    rng = random.Random(seed)
    options = {place: [(p * 100_003, e, c) for p, e, c in opts] for place, opts in random_options(rng).items()}
    budget = rng.randint(sum(o[0][0] for o in options.values()), sum(o[-1][0] for o in options.values()))
    chosen = allocate(options, budget, resolution=50)
    assert sum(next(o[0] for o in options[place] if o[2] == choice) for place, choice in chosen.items()) <= budget
