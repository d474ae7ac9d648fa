"""The code's shape, where a rule can be checked mechanically: the init names and act's defaults live in one
torch-free place that compress.py's table is built from, functions stay short, and comments carry no issue
numbers."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("kronecker.py", "compress.py", "kron_shapes.py", "model.py")


def test_init_names_and_act_defaults_import_without_torch():
    code = ("import sys, common; "
            "print(common.INIT_NAMES, common.ACT_STEPS, common.ACT_LR, common.ACT_SWEEPS, common.CALIBRATION_TOKENS); "
            "assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compress_inits_are_built_from_the_init_names():
    import common
    import compress
    assert tuple(compress.INITS) == common.INIT_NAMES
    assert set(compress.DECOMPOSITIONS) <= set(common.INIT_NAMES)  # a decomposition no init names is never used
    assert all(compress.INITS[name] is compress.DECOMPOSITIONS.get(name) for name in common.INIT_NAMES)


@pytest.mark.parametrize("name", CHECKED)
def test_no_function_is_longer_than_80_lines(name):
    tree = ast.parse((ROOT / name).read_text())
    lengths = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert lengths and not {f: n for f, n in lengths.items() if n > 80}


def test_comments_carry_no_issue_numbers():
    paths = [ROOT / name for name in CHECKED] + sorted((ROOT / "config").glob("*.py"))
    found = [f"{path.name}: {match.group(0)}" for path in paths
             for match in re.finditer(r"\bissue \d+", path.read_text(), flags=re.IGNORECASE)]
    assert not found
