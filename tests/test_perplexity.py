import json
import math
import os
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, gpt2_tokenizer_or_skip, hf_tokenizer_or_skip, make_hf_gpt2, run_main, run_script, tiny_gpt

import perplexity as P
from checkpoints import load_model, make_checkpoint, save_checkpoint

SHARED_EVAL = os.path.join(ROOT, "..", "shared", "eval")
CONTEXT = 128


@pytest.fixture(scope="module")
def eval_slices(tmp_path_factory):
    """A --data_dir with the first rows of the real test sets, under the names perplexity.py expects."""
    if not os.path.isdir(SHARED_EVAL):
        pytest.skip(f"{SHARED_EVAL} not found (see ../shared/README.md)")
    path = tmp_path_factory.mktemp("eval")
    for filename, rows in [("wikitext-103-v1.test.jsonl", 30), ("wikitext-2-v1.test.jsonl", 30),
                           ("lambada_openai.test.jsonl", 16)]:
        with open(os.path.join(SHARED_EVAL, filename)) as f, open(path / filename, "w") as out:
            out.writelines(f.readline() for _ in range(rows))
    return str(path)


def rows(data_dir, filename):
    with open(os.path.join(data_dir, filename)) as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def peaked_gpt2(tmp_path_factory):
    """(directory, model) of a random GPT-2 with 10x embeddings: its losses vary from window to window, so that
    averaging per window and per token differ (by 1e-3 here), unlike for a model that predicts almost uniformly."""
    from transformers import GPT2LMHeadModel
    path = str(tmp_path_factory.mktemp("peaked_gpt2"))
    hf = make_hf_gpt2(path, n_positions=CONTEXT)
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(10)
    hf.save_pretrained(path)
    return path, GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32).eval()


# --- the references: plain one-window-at-a-time loops with transformers ----------------------------------

@torch.no_grad()
def paper_loop(hf, ids, context):
    """The paper's loop: disjoint windows, labels = inputs, exp(mean of the window losses)."""
    losses = [hf(ids[None, b:b + context], labels=ids[None, b:b + context]).loss
              for b in range(0, len(ids), context) if len(ids[b:b + context]) > 1]
    return math.exp(torch.stack(losses).mean().item())


@torch.no_grad()
def hf_guide_loop(hf, ids, context, stride):
    """Hugging Face's perplexity guide, weighting each window's loss by its exact number of predictions."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        input_ids = ids[None, begin:end]
        labels = input_ids.clone()
        labels[:, :-(end - prev_end)] = -100
        predictions = (labels[:, 1:] != -100).sum().item()
        nll += hf(input_ids, labels=labels).loss.item() * predictions
        count += predictions
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / count), count


@torch.no_grad()
def harness_last_word(hf, tokenizer, passages, context):
    """lm-evaluation-harness's lambada_openai: (accuracy, perplexity) of " " + last word given the rest."""
    log_likelihoods, greedy = [], []
    for text in passages:
        prefix, word = text.rsplit(" ", 1)
        prefix_ids = tokenizer(prefix)["input_ids"]
        target = tokenizer(prefix + " " + word)["input_ids"][len(prefix_ids):]
        inputs = torch.tensor((prefix_ids + target)[-(context + 1):][:-1])
        log_probs = hf(inputs[None]).logits[0, -len(target):].log_softmax(-1)
        target = torch.tensor(target)
        log_likelihoods.append(log_probs.gather(1, target[:, None]).sum().item())
        greedy.append(bool((log_probs.argmax(-1) == target).all()))
    return sum(greedy) / len(greedy), math.exp(-sum(log_likelihoods) / len(log_likelihoods))


# --- equality with the references ----------------------------------------------------------------------

def test_windows_score_every_token_once():
    assert P.windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert P.windows(9, 4, 4) == [(0, 4, 1), (4, 8, 5)]  # a last window of one token predicts nothing
    assert P.windows(10, 4, 3) == [(0, 4, 1), (3, 7, 4), (6, 10, 7)]
    for n, stride in [(100, 1), (100, 7), (101, 15), (5, 8)]:  # sliding: every token but the first, once
        scored = [t for _, end, first in P.windows(n, 16, stride) for t in range(first, end)]
        assert scored == list(range(1, n))
        assert all(end - begin <= 16 for begin, end, _ in P.windows(n, 16, stride))
    scored = [t for _, end, first in P.windows(100, 16, 16) for t in range(first, end)]
    assert scored == [t for t in range(1, 100) if t % 16]  # disjoint: all but each window's first token


def test_paper_protocol_and_stride_match_plain_loops(peaked_gpt2, eval_slices):
    gpt2_tokenizer_or_skip()
    tokenizer = hf_tokenizer_or_skip()
    tokens, passages, source = P.load_tokens("wiki2", eval_slices, max_tokens=1000)
    reference = tokenizer("\n\n".join(rows(eval_slices, "wikitext-2-v1.test.jsonl")))["input_ids"][:1000]
    assert tokens.tolist() == reference and len(tokens) == 1000
    assert passages is None and source.endswith("wikitext-2-v1.test.jsonl")
    path, hf_model = peaked_gpt2
    model = load_model(path).eval()

    ours = P.perplexity(model, tokens, batch_size=3)  # 7 full windows and one of 104 tokens
    assert ours["windows"] == 8 and ours["predicted_tokens"] == 1000 - 8
    assert ours["protocol"] == {"context": CONTEXT, "stride": CONTEXT, "average": "window"}
    assert ours["perplexity"] == pytest.approx(paper_loop(hf_model, tokens, CONTEXT), rel=1e-4)
    token_average = P.perplexity(model, tokens, stride=CONTEXT)
    assert token_average["protocol"]["average"] == "token"
    assert abs(token_average["perplexity"] / ours["perplexity"] - 1) > 5e-4  # this data tells the averages apart

    ours = P.perplexity(model, tokens, stride=48, batch_size=4)
    expected, predictions = hf_guide_loop(hf_model, tokens, CONTEXT, 48)
    assert ours["predicted_tokens"] == predictions == 999
    assert ours["perplexity"] == pytest.approx(expected, rel=1e-4)


def test_lambada_last_word_matches_harness_loop(tmp_path, eval_slices):
    from transformers import GPT2LMHeadModel
    gpt2_tokenizer_or_skip()
    tokenizer = hf_tokenizer_or_skip()
    # A random model never guesses a real last word: push this one towards " the" (token 262) everywhere, and
    # add passages that end in it, so that accuracy is neither 0 nor 1.
    hf = make_hf_gpt2(str(tmp_path), n_positions=CONTEXT, seed=1)
    with torch.no_grad():
        the = hf.transformer.wte.weight[262]
        hf.transformer.ln_f.bias.add_(50 * the / the.norm())
    hf.save_pretrained(str(tmp_path))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    passages = rows(eval_slices, "lambada_openai.test.jsonl")
    passages += [text.rsplit(" ", 1)[0] + " the" for text in passages[:4]]
    accuracy, word_perplexity = harness_last_word(hf, tokenizer, passages, CONTEXT)
    assert accuracy == 4 / 20

    ours = P.last_word(load_model(str(tmp_path)).eval(), passages, batch_size=6)
    assert ours["passages"] == 20
    assert ours["accuracy"] == accuracy
    assert ours["last_word_perplexity"] == pytest.approx(word_perplexity, rel=1e-4)


def test_hub_tokenizers_agree_on_the_eval_text():
    """tiktoken's gpt2 (what perplexity.py uses) and Hugging Face's GPT-2 tokenizer give the same ids."""
    gpt2_tokenizer_or_skip()
    tokenizer = hf_tokenizer_or_skip()
    if not os.path.isdir(SHARED_EVAL):
        pytest.skip(f"{SHARED_EVAL} not found")
    for filename in sorted(os.listdir(SHARED_EVAL)):
        text = "\n\n".join(rows(SHARED_EVAL, filename)[:400]) + " <|endoftext|>"
        assert P.encode(text) == tokenizer(text)["input_ids"], filename


def test_local_files(tmp_path):
    enc = gpt2_tokenizer_or_skip()
    (tmp_path / "a.txt").write_text("Hello world.\n\nSecond <|endoftext|> line")
    (tmp_path / "a.jsonl").write_text('{"text": "Hello world."}\n\n{"text": "Second <|endoftext|> line"}\n')
    np.array([5, 6, 7, 50256], dtype=np.uint16).tofile(tmp_path / "a.bin")
    expected = enc.encode("Hello world.\n\nSecond <|endoftext|> line", allowed_special="all")
    assert expected[:2] == [15496, 995] and 50256 in expected
    for name in ("a.txt", "a.jsonl"):
        tokens, passages, source = P.load_tokens(str(tmp_path / name))
        assert tokens.tolist() == expected and passages is None and source == str(tmp_path / name)
        assert P.load_tokens(str(tmp_path / name), max_tokens=3)[0].tolist() == expected[:3]
    assert P.load_tokens(str(tmp_path / "a.bin"))[0].tolist() == [5, 6, 7, 50256]
    assert P.load_tokens(str(tmp_path / "a.bin"), max_tokens=3)[0].tolist() == [5, 6, 7]


# --- the command line ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def krony_checkpoint(tmp_path_factory):
    """(path, model) of a small Kronecker GPT with GPT-2's vocabulary and a context of 64, saved as a checkpoint."""
    model = tiny_gpt(n_embd=32, block_size=64, vocab_size=50257, dim_1=4, dim_2=32, factors=2)
    path = str(tmp_path_factory.mktemp("krony") / "krony.pt")
    save_checkpoint(make_checkpoint(model), path)
    return path, model


def test_checkpoint_and_its_export_score_the_same(tmp_path, eval_slices, krony_checkpoint, capsys):
    import krony_to_gpt
    gpt2_tokenizer_or_skip()
    tokenizer = hf_tokenizer_or_skip()
    ckpt, model = krony_checkpoint
    krony_to_gpt.export(model, str(tmp_path / "hf"), tokenizer)
    bin_path = str(tmp_path / "val.bin")
    wiki_tokens = P.encode("\n\n".join(rows(eval_slices, "wikitext-103-v1.test.jsonl")))
    np.array(wiki_tokens, dtype=np.uint16).tofile(bin_path)

    status, out, err = run_main(P.main, [ckpt, "lambada", bin_path, "--data_dir", eval_slices, "--max_tokens", 700,
                                         "--batch_size", 4, "--device", "cpu", "--out", tmp_path / "results.json"],
                                capsys)
    assert status == 0, err
    with open(tmp_path / "results.json") as f:
        results = json.load(f)["datasets"]
    assert list(results) == ["lambada", bin_path]
    assert out.splitlines()[0].split()[:3] == ["dataset", "perplexity", "tokens"]
    assert len(out.splitlines()) == 3
    scored = results[bin_path]
    assert (scored["tokens"], scored["windows"], scored["predicted_tokens"]) == (700, 11, 700 - 11)
    assert scored["protocol"] == {"context": 64, "stride": 64, "average": "window"}

    exported = load_model(str(tmp_path / "hf")).eval()
    assert exported.get_num_params() > load_model(ckpt).get_num_params()  # the MLPs are materialized
    assert scored["perplexity"] == pytest.approx(
        P.perplexity(exported, torch.tensor(wiki_tokens[:700]))["perplexity"], rel=1e-5)
    bfloat16 = P.perplexity(exported, torch.tensor(wiki_tokens[:700]), dtype="bfloat16")
    assert bfloat16["perplexity"] == pytest.approx(scored["perplexity"], rel=2e-2)
    lambada_tokens, passages, _ = P.load_tokens("lambada", eval_slices, max_tokens=700)
    expected = P.perplexity(exported, lambada_tokens)
    expected.update(P.last_word(exported, P.passages_within(passages, 700)))
    assert 0 < results["lambada"]["passages"] < 16
    for key in ("perplexity", "last_word_perplexity", "accuracy", "passages", "tokens", "windows"):
        assert results["lambada"][key] == pytest.approx(expected[key], rel=1e-5), key


def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, monkeypatch, krony_checkpoint):
    ckpt = krony_checkpoint[0]
    np.array([1, 2, 60000], dtype=np.uint16).tofile(tmp_path / "big.bin")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    cases = {
        "unknown dataset 'wiki3'": (ckpt, "wiki3"),
        "no such file": (ckpt, tmp_path / "missing.bin"),
        "--max_tokens must be at least 2": (ckpt, "wiki2", "--max_tokens", 1),
        "not found: --data_dir must hold wikitext-2-v1.test.jsonl": (ckpt, "wiki1", "--data_dir", tmp_path),
        "bad.jsonl:2: expected a JSON object": (ckpt, tmp_path / "bad.jsonl"),
        "beyond the model's vocabulary": (ckpt, tmp_path / "big.bin"),
        "--stride must be between 1 and the model's context length 64": (ckpt, tmp_path / "big.bin", "--stride", 65),
        "cannot load": (tmp_path / "missing.pt", tmp_path / "big.bin"),
    }
    for message, args in cases.items():
        code, _, err = run_main(P.main, args, capsys)
        assert code == 2 and message in err and err.strip().count("\n") == 0, (message, err)

    # No network and no offline flag: one quick probe, not the hub client's half minute of retries.
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.time()
    code, _, err = run_main(P.main, [ckpt, "wiki103"], capsys)
    assert code == 2 and "cannot reach the Hugging Face Hub" in err and "--data_dir" in err, err
    assert time.time() - start < 10


def test_hub_datasets_are_the_papers_test_splits(monkeypatch):
    """The non-raw wikitext configurations (with <unk>) and the LAMBADA test passages, as the paper loads them."""
    import datasets
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return {"text": ["a row"]}
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # skips the reachability probe
    for name in ("wiki103", "wiki2", "lambada"):
        assert P.load_texts(name)[0] == ["a row"]
    assert calls == [("Salesforce/wikitext", "wikitext-103-v1", "test"),
                     ("Salesforce/wikitext", "wikitext-2-v1", "test"), ("cimec/lambada", None, "test")]


def test_offline_without_cached_dataset_names_data_dir(tmp_path, krony_checkpoint):
    """A subprocess: the datasets library reads its cache folders from the environment when it is imported."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"),
               HF_DATASETS_CACHE=str(tmp_path / "datasets"))
    run = run_script("perplexity.py", krony_checkpoint[0], "wiki2", env=env)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0, run.stderr
    assert run.stderr.startswith("perplexity.py: error: cannot load Salesforce/wikitext") and "--data_dir" in run.stderr
