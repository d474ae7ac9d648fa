"""Exports ready for the Hub: a model card that huggingface_hub reads, a generation config, pipeline() on both
exports, and perplexity.py's scores added to the card without touching the rest of it."""
import json
import os
import shutil

import pytest
import torch
from conftest import ROOT, hf_tokenizer_or_skip, run_main, tiny_gpt

import krony_to_gpt
import perplexity
from checkpoints import make_checkpoint, save_checkpoint
from model_card import split_card

SHARED_EVAL = os.path.join(ROOT, "..", "shared", "eval")
TRAINED = {"init_from": "checks/krony_gpt2_c_fc_vl.pt", "init": "vl", "dataset": "owt", "data_dir": "",
           "teacher": "gpt2", "gradient_accumulation_steps": 4, "batch_size": 2, "block_size": 48}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{"dense", "factored"}: both exports of one trained Kronecker checkpoint (30 iterations of 4 x 2 x 48
    tokens, initialised from gpt2 by kron_decompose.py); and the model."""
    hf_tokenizer_or_skip()
    folder = tmp_path_factory.mktemp("card")
    model = tiny_gpt(0, vocab_size=50257, n_layer=2, n_head=4, n_embd=64, block_size=48,
                     kron={"c_fc": (8, 16, 2), "c_proj@1": (16, 8, 1)})
    checkpoint = make_checkpoint(model, iter_num=30, config=TRAINED, init={"teacher": "gpt2", "method": "vl"})
    save_checkpoint(checkpoint, folder / "ckpt.pt")
    krony_to_gpt.main([str(folder / "ckpt.pt"), str(folder / "dense")])
    krony_to_gpt.main([str(folder / "ckpt.pt"), str(folder / "factored"), "--keep_factors"])
    return {"dense": folder / "dense", "factored": folder / "factored"}, model


@pytest.mark.parametrize("kind", ["dense", "factored"])
def test_both_exports_carry_a_card_the_hub_reads_a_generation_config_and_run_in_a_pipeline(exports, kind):
    from huggingface_hub import ModelCard
    from transformers import GenerationConfig, GenerationMixin, pipeline
    folders, model = exports
    card = ModelCard.load(folders[kind] / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["license"] == "mit" and {"krony", "kronecker"} <= set(data["tags"])
    assert data["base_model"] == "gpt2" and data["datasets"] == ["Skylion007/openwebtext"]
    trained = model.get_num_params(non_embedding=False)
    assert f"- Parameters: {trained:,}, {trained - 50257 * 64 - 48 * 64:,} without the token and position" in card.text
    stored = trained if kind == "factored" else sum(p.numel() for p in
                                                    krony_to_gpt.to_hf(model).parameters())  # materialised
    assert f"; {stored:,} stored," in card.text
    assert "| 0 | dense | dense | 8x16:2 | dense |" in card.text and "| 1 | dense | dense | 8x16:2 | 16x8:1 |" in \
        card.text
    assert f"Trained on {30 * 4 * 2 * 48:,} tokens of `owt` (30 iterations), distilled from `gpt2`" in card.text
    assert ("trust_remote_code=True" in card.text) == (kind == "factored")
    generation = GenerationConfig.from_pretrained(folders[kind])
    assert generation.bos_token_id == generation.eos_token_id == generation.pad_token_id == 50256
    generator = pipeline("text-generation", model=str(folders[kind]), device="cpu", trust_remote_code=True)
    assert isinstance(generator.model, GenerationMixin)
    text = generator("Hello world", max_new_tokens=4, do_sample=False, return_full_text=True)[0]["generated_text"]
    expected = model.generate(torch.tensor([[15496, 995]]), 4, temperature=0)[0].tolist()
    assert text == generator.tokenizer.decode(expected)


def test_perplexity_adds_its_scores_to_the_card_and_keeps_what_a_user_edited(exports, tmp_path, capsys):
    from huggingface_hub import ModelCard
    if not os.path.isdir(SHARED_EVAL):
        pytest.skip(f"{SHARED_EVAL} not found (see ../shared/README.md)")
    folder = tmp_path / "export"
    shutil.copytree(exports[0]["dense"], folder)
    metadata, body = split_card((folder / "README.md").read_text())
    edited_body = body + "\n## Notes\n\nA paragraph of the user's own.\n"
    metadata["tags"].append("my-tag")
    (folder / "README.md").write_text("---\n" + json.dumps(metadata) + "\n---\n" + edited_body)  # JSON is YAML
    data_dir = tmp_path / "eval"  # the first rows of the test sets, scored whole: the card takes no partial score
    data_dir.mkdir()
    for filename, rows in [("wikitext-2-v1.test.jsonl", 12), ("lambada_openai.test.jsonl", 6)]:
        with open(os.path.join(SHARED_EVAL, filename)) as f:
            (data_dir / filename).write_text("".join(f.readline() for _ in range(rows)))

    def score(*datasets):
        args = [folder, *datasets, "--data_dir", data_dir, "--out", tmp_path / "r.json"]
        status, _, err = run_main(perplexity.main, args, capsys)
        assert status == 0 and f"to {folder / 'README.md'}'s model-index" in err, err
        return json.loads((tmp_path / "r.json").read_text())["datasets"]
    first = score("wiki2", "lambada")
    second = score("wiki2")  # scored again: replaced, not added twice
    card = ModelCard.load(folder / "README.md")
    assert split_card((folder / "README.md").read_text())[1] == edited_body
    assert "my-tag" in card.data.tags and card.data.library_name == "transformers"
    results = {(r.dataset_type, r.dataset_config, r.metric_type): r for r in card.data.eval_results}
    assert set(results) == {("Salesforce/wikitext", "wikitext-2-v1", "perplexity"),
                            ("cimec/lambada", None, "perplexity"), ("cimec/lambada", None, "accuracy")}
    wiki2 = results["Salesforce/wikitext", "wikitext-2-v1", "perplexity"]
    assert wiki2.metric_value == pytest.approx(second["wiki2"]["perplexity"], abs=1e-4)
    assert wiki2.task_type == "text-generation" and wiki2.dataset_split == "test"
    assert "paper's protocol" in wiki2.metric_name
    assert results["cimec/lambada", None, "accuracy"].metric_value == pytest.approx(first["lambada"]["accuracy"],
                                                                                    abs=1e-4)
