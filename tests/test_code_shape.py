"""The code's shape, where a rule can be checked mechanically: the init names and act's defaults live in one
torch-free place that compress.py's table is built from, functions stay short, and comments carry no issue
numbers."""
import ast
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


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


def project_files():
    """Every Python file of the project, tests aside."""
    return sorted(path for path in ROOT.rglob("*.py")
                  if not {"tests", ".venv", ".git"} & set(path.relative_to(ROOT).parts))


def test_no_function_is_longer_than_80_lines():
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in project_files() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno > 79]
    assert len(project_files()) > 20 and not long


def test_comments_carry_no_issue_numbers():
    found = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in project_files()
             for match in re.finditer(r"\bissue \d+", path.read_text(), flags=re.IGNORECASE)]
    assert not found
