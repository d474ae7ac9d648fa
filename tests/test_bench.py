"""bench.py --suite gpu, the prepared GPU check, run on the CPU as its docstring promises (the same code, shorter;
dynamo's eager backend, float32 and 16 tokens keep it fast: bfloat16 on a CPU without native support costs seconds
a step): every section's table is written to OUT.json and OUT.md, with the numbers the tables claim."""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from model import GPT, GPTConfig


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "suite"
    subprocess.run([sys.executable, "bench.py", "--device=cpu", "--suite=gpu", "--compile_backend=eager",
                    "--n_layer=2", "--dtype=float32", "--seq_len=16", "--iters=1", "--warmup=1", "--model_seq_len=16",
                    "--gen_tokens=2", "--decode_tokens=2", "--prompt_len=4", f"--out={out}"], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    results = json.loads(Path(f"{out}.json").read_text())
    return results, {t["title"].split(":")[0]: t for t in results["tables"]}, Path(f"{out}.md").read_text()


def test_suite_writes_every_section(suite):
    results, tables, markdown = suite
    assert list(tables) == ["Layers", "Models", "init act", "Decode", "Decode profile"]
    assert results["device"] == "cpu" and "--suite=gpu" in results["command"]
    for table in results["tables"]:
        assert f"| {' | '.join(table['columns'])} |" in markdown and table["rows"]
    layers = tables["Layers"]
    assert {row[0].split(",")[0] for row in layers["rows"]} == {"81M MLP (c_fc", "81M c_fc 768x3072", "81M c_proj 3072x768"}
    for row in layers["rows"]:  # the dtype asked for, eager and compiled beside each other, the ratios of their times
        values = dict(zip(layers["columns"], row))
        assert values["dtype"] == "float32"
        assert values["ratio"] == pytest.approx(values["Kronecker ms"] / values["dense ms"])
        assert values["ratio compiled"] == pytest.approx(values["Kronecker compiled ms"] / values["dense compiled ms"])
    modes = [(row[0].split(" (")[0], row[3]) for row in tables["Models"]["rows"]]
    assert modes == [("GPT-2 124M", "eager"), ("GPT-2 124M", "compiled"), ("Krony 81M", "eager"),
                     ("Krony 81M", "compiled")]
    assert tables["init act"]["rows"][0][0] == 1  # one block


def test_suite_defaults_to_bfloat16_and_a_short_cpu_run_but_keeps_what_the_user_chose():
    import bench

    def suite_args(**chosen):
        args = argparse.Namespace(device="cpu", dtype=None, batch_size=None, seq_len=None, act_steps=300,
                                  calibration_tokens=2**17, compile=False, decode=False, decode_profile=False,
                                  act=False)
        vars(args).update(chosen)
        bench.apply_suite(args)
        return (args.dtype, args.batch_size, args.seq_len, args.compile, args.decode, args.decode_profile, args.act,
                args.act_steps)
    assert suite_args() == ("bfloat16", 1, 128, True, True, True, True, 5)
    assert suite_args(dtype="float32", seq_len=16) == ("float32", 1, 16, True, True, True, True, 5)
    assert suite_args(device="cuda")[:3] == ("bfloat16", None, None)  # main()'s full-size defaults


def test_decode_table_times_the_exports_against_distilgpt2s_shape(suite):
    from transformers import GPT2Config, GPT2LMHeadModel
    decode = suite[1]["Decode"]
    assert {row[2] for row in decode["rows"]} == {"dynamic", "static"}
    with torch.device("meta"):  # parameter counts only
        distil_params = GPT2LMHeadModel(GPT2Config(n_layer=1)).num_parameters()
        krony_params = GPT(GPTConfig.from_settings(n_layer=2, dim_1=768, dim_2=768, factors=1)).get_num_params(
            non_embedding=False)
    for cache in ("dynamic", "static"):
        rows = {row[0]: row for row in decode["rows"] if row[2] == cache}
        distil = rows["DistilGPT2 shape (1 blocks)"]
        assert distil[1] == distil_params
        krony = rows["krony export 81M (768 768 1)"]  # transformers' count of the export is ours
        assert krony[1] == krony_params
        for row in rows.values():
            assert row[4] == pytest.approx(row[3] / distil[3])


def test_decode_profile_counts_each_blocks_ops(suite):
    profile = suite[1]["Decode profile"]
    assert profile["columns"] == ["model", "aten calls", "all ops ms", "GEMMs", "KV cache growth", "attention kernel"]
    rows = {row[0]: row for row in profile["rows"]}

    def calls(cell):  # "ms (calls)" per new token
        ms, count = re.fullmatch(r"(\S+) \((\S+)\)", cell).groups()
        assert 0 <= float(ms)
        return float(count)
    # per new token, every forward pass the same: 4 GEMMs a block (c_attn, attn.c_proj, c_fc, c_proj; the fused MLP
    # too: x @ A_fc, then the addmm with A_proj) + lm_head; a K and a V cache grown a block, and 2 for the mask
    # and the ids; one attention kernel a block
    for name, blocks in [("GPT-2 124M (dense)", 2), ("DistilGPT2 shape (1 blocks)", 1),
                         ("krony export 81M (768 768 1)", 2)]:
        gemms, cache, attention = (calls(cell) for cell in rows[name][3:])
        assert (gemms, cache, attention) == (4 * blocks + 1, 2 * blocks + 2, blocks), name
        assert rows[name][2] > 0 and rows[name][1] > 0


@pytest.mark.parametrize("flags,message", [(["--dtype=int8"], "--dtype int8: expected float32, bfloat16 or float16"),
                                           (["--decode_profile"], "--decode_profile profiles the decode section")])
def test_a_bad_flag_is_one_usage_line_and_nothing_is_timed(flags, message):
    result = subprocess.run([sys.executable, "bench.py", "--device=cpu", *flags], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 2 and message in result.stderr.splitlines()[-1] and result.stdout == ""
