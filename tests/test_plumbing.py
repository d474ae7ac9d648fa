"""common.py's plumbing: atomic_path replaces a file whole or not at all, usage_errors turns a ValueError into one
UsageError line, first_of names the first error and counts the rest; the scripts that use them keep short
functions."""
import os

import pytest

from common import UsageError, atomic_path, first_of, usage_errors, write_text


def test_atomic_path_replaces_the_file_on_success(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with atomic_path(str(path)) as tmp:
        assert tmp != str(path) and os.path.dirname(tmp) == str(tmp_path)  # beside it, so the rename is atomic
        with open(tmp, "w") as f:
            f.write("new")
        assert path.read_text() == "old"  # untouched until the block ends
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["results.json"]
    write_text("newer", str(path))
    assert path.read_text() == "newer" and os.listdir(tmp_path) == ["results.json"]


@pytest.mark.parametrize("existing", [False, True])
def test_atomic_path_leaves_the_old_file_and_no_temporary_when_the_write_raises(tmp_path, existing):
    path = tmp_path / "ckpt.pt"
    if existing:
        path.write_text("old")
    with pytest.raises(OSError, match="No space left"):
        with atomic_path(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write("half a chec")
            raise OSError(28, "No space left on device")
    assert os.listdir(tmp_path) == (["ckpt.pt"] if existing else [])
    assert not existing or path.read_text() == "old"
    with pytest.raises(KeyboardInterrupt):  # an interrupt too: nothing half-written stays
        with atomic_path(str(path)) as tmp:
            open(tmp, "w").close()
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == (["ckpt.pt"] if existing else [])


def test_usage_errors_turns_a_value_error_into_one_line_with_the_prefix():
    with pytest.raises(UsageError) as error:
        with usage_errors("--kron c_fc=5x8:1"):
            raise ValueError("A's rows=5 do not divide n_embd=16;\n  nearest valid: 4 or 8")
    assert str(error.value) == "--kron c_fc=5x8:1: A's rows=5 do not divide n_embd=16; nearest valid: 4 or 8"
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no chained traceback to read
    with pytest.raises(UsageError, match="^unknown device 'tpu'$"):  # without a prefix: the message alone
        with usage_errors():
            raise ValueError("unknown device 'tpu'")


def test_usage_errors_lets_other_exceptions_through():
    for error in (UsageError("no such file: x.pt"), OSError("disk"), RuntimeError("bug"), KeyError("key")):
        with pytest.raises(type(error)) as raised:
            with usage_errors("--out x"):
                raise error
        assert raised.value is error
    with usage_errors("--out x"):
        pass  # nothing raised, nothing changed


def test_first_of_names_the_first_error_and_counts_the_rest():
    assert first_of(["it lacks wte.weight"]) == "it lacks wte.weight"
    assert first_of(["it lacks wte.weight", "it lacks wpe.weight", "h.0 is (3,)"]) == \
        "it lacks wte.weight (and 2 more)"
