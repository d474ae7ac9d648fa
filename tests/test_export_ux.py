"""An export as a user first meets it: AutoTokenizer and pipeline() read a factored export's GPT-2 tokenizer and a
character model's characters, the card's code decodes meta.json, krony_to_gpt.py prints its own lines and no
progress bars, and a --tokenizer folder that does not exist is one line before any weights are read."""
import builtins
import contextlib
import io
import re

import pytest
import torch
from conftest import hf_tokenizer_or_skip, run_main, tiny_gpt

import krony_to_gpt
from checkpoints import make_checkpoint, save_checkpoint

ITOS = list("\n ,.abehinorstTW")  # with a space before punctuation in the prompt, which a clean-up would drop
PROMPT = "To be , or not. "


def card_code(folder, after):
    """The first ```python block of folder's card after the heading `after`, pointed at folder."""
    card = (folder / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card[card.index(after):], re.S).group(1)
    return code.replace("path/to/this/folder", str(folder))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{"gpt2 factored", "chars dense", "chars factored"}: (our model, krony_to_gpt.py's folder), and the stderr
    of the first export."""
    folder = tmp_path_factory.mktemp("ux")
    models = {"gpt2": tiny_gpt(0, vocab_size=50257, n_embd=16, block_size=16, kron={"c_fc": (4, 16, 1)}),
              "chars": tiny_gpt(1, vocab_size=len(ITOS), n_embd=16, block_size=32, kron={"c_fc": (4, 16, 1)})}
    save_checkpoint(make_checkpoint(models["gpt2"]), folder / "gpt2.pt")
    save_checkpoint(make_checkpoint(models["chars"], itos=ITOS), folder / "chars.pt")
    folders, stderr = {}, None
    for name, flags in (("chars factored", ["--keep_factors"]), ("chars dense", []),
                        ("gpt2 factored", ["--keep_factors"])):
        if name.startswith("gpt2"):
            hf_tokenizer_or_skip()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            krony_to_gpt.main([str(folder / f"{name.split()[0]}.pt"), str(folder / name.replace(" ", "_")), *flags])
        stderr = err.getvalue() if stderr is None else stderr
        folders[name] = models[name.split()[0]], folder / name.replace(" ", "_")
    return folders, stderr


def no_prompt(monkeypatch):
    """transformers asks whether to run a folder's code with input(): make any such question fail the test."""
    monkeypatch.setattr(builtins, "input", lambda *args: pytest.fail(f"asked: {args}"))


def test_a_factored_export_gives_gpt2s_tokenizer_as_its_card_says(exports, monkeypatch):
    from transformers import AutoTokenizer
    folder = exports[0]["gpt2 factored"][1]
    # Without trust_remote_code, transformers asks first (config.json names our code) where a terminal can answer;
    # answered no, or with no terminal (EOF), it reads GPT-2's tokenizer all the same.
    monkeypatch.setattr(builtins, "input", lambda *args: "n")
    assert AutoTokenizer.from_pretrained(folder)("Hello world")["input_ids"] == [15496, 995]
    no_prompt(monkeypatch)  # the card's way asks nothing
    names = {}
    exec(card_code(folder, "## How to load it"), names)
    assert names["tokenizer"]("Hello world")["input_ids"] == [15496, 995]
    assert type(names["model"]).__name__ == "KronyForCausalLM"
    assert names["generator"].tokenizer("Hello world")["input_ids"] == [15496, 995]


@pytest.mark.parametrize("kind", ["dense", "factored"])
def test_a_character_export_runs_in_a_pipeline_on_its_characters(exports, kind, monkeypatch):
    from transformers import pipeline
    no_prompt(monkeypatch)
    model, folder = exports[0][f"chars {kind}"]
    generator = pipeline("text-generation", model=str(folder), device="cpu", trust_remote_code=kind == "factored")
    text = generator(PROMPT, max_new_tokens=8, do_sample=False, return_full_text=True)[0]["generated_text"]
    idx = torch.tensor([[ITOS.index(c) for c in PROMPT]])
    expected = "".join(ITOS[i] for i in model.generate(idx, 8, temperature=0)[0].tolist())
    assert text == expected and text.startswith(PROMPT)
    ids = generator.tokenizer(PROMPT)["input_ids"]
    assert ids == idx[0].tolist() and generator.tokenizer.decode(ids) == PROMPT  # " ," kept as it was
    with pytest.raises(Exception, match="UNK"):  # a character it never saw: refused, not dropped
        generator("Z", max_new_tokens=1)


def test_the_cards_code_decodes_ids_with_meta_json(exports, capsys):
    model, folder = exports[0]["chars dense"]
    code = card_code(folder, "## Its characters")
    assert "meta.json" in code and "trust_remote_code" not in code
    names = {}
    torch.manual_seed(0)
    capsys.readouterr()
    exec(code, names)
    printed = capsys.readouterr().out
    ids = names["ids"][0].tolist()
    assert len(ids) == 32 and ids[0] == ITOS.index("\n")  # the whole context, from the prompt "\n"
    assert printed == "".join(ITOS[i] for i in ids) + "\n"  # ITOS: the checkpoint's characters, not meta.json's
    assert "trust_remote_code=True" in card_code(exports[0]["chars factored"][1], "## Its characters")


def test_the_script_prints_no_progress_bars_and_leaves_them_on(exports):
    from transformers.utils import logging
    assert exports[1] == ""
    assert logging.is_progress_bar_enabled()


def test_a_missing_tokenizer_folder_is_one_line_before_any_weights_load(exports, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(krony_to_gpt, "load_checkpoint", lambda *args: pytest.fail("weights loaded"))
    checkpoint = exports[0]["gpt2 factored"][1].parent / "gpt2.pt"
    for missing in (tmp_path / "gpt2_tokenizer", "./gpt2_tokenizer", "tokenizers/gpt2/"):
        status, out, err = run_main(krony_to_gpt.main, [checkpoint, tmp_path / "out", "--tokenizer", missing],
                                    capsys)
        assert status == 2 and out == "" and err == f"krony_to_gpt.py: error: cannot load the tokenizer " \
                                                     f"{str(missing)!r}: no such folder, nor a hub name such as gpt2\n"
    assert not (tmp_path / "out").exists()


def test_a_run_folder_given_as_the_checkpoint_is_one_line_naming_its_ckpt(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(make_checkpoint(tiny_gpt(0, vocab_size=len(ITOS), n_embd=16, block_size=16)), run / "ckpt.pt")
    status, _, err = run_main(krony_to_gpt.main, [run, tmp_path / "out"], capsys)
    assert status == 2 and err.strip().count("\n") == 0, err
    assert f"did you mean {run / 'ckpt.pt'}?" in err and not (tmp_path / "out").exists()
