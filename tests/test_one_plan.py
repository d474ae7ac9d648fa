"""One Plan for every written form of a plan, and one GPTConfig that holds it: the MLP shorthand, kron with
NAME@BLOCKS, kron_layers, rank, the --kron and --rank syntax, an old checkpoint's model_args and an old export's
config.json all read to the Plan of their explicit kron form; GPTConfig round-trips through a checkpoint's
model_args and a Hugging Face config; Plan.from_settings takes the plan by keyword only."""
import dataclasses
import json
import os
import shutil

import pytest
from conftest import ROOT

from kron_shapes import Plan, parse_kron, parse_rank
from model import GPTConfig

# c_fc is 16x64, c_proj 64x16, c_attn 16x48, attn_proj 16x16, wte 64x16
N_EMBD, N_LAYER, VOCAB = 16, 4, 64
MODEL = dict(block_size=8, vocab_size=VOCAB, n_layer=N_LAYER, n_head=2, n_embd=N_EMBD)


def explicit(kron):
    """The Plan of a kron dict whose every entry names its blocks (or is wte), read without Plan.from_settings."""
    shapes = {}
    for key, shape in kron.items():
        name, _, blocks = key.partition("@")
        for block in [None] if name == "wte" else [int(b) for b in blocks.split(",")]:
            shapes[name, block] = tuple(shape)
    return Plan(N_EMBD, N_LAYER, VOCAB, shapes)


ALL = "@0,1,2,3"
# (how the plan is written, its explicit kron form)
FORMS = {
    "shorthand": (dict(dim_1=4, dim_2=8, factors=2), {f"c_fc{ALL}": (4, 8, 2), f"c_proj{ALL}": (8, 4, 2)}),
    "kron": (dict(kron={"c_attn": (4, 12, 1), "wte": (16, 8, 1)}), {f"c_attn{ALL}": (4, 12, 1), "wte": (16, 8, 1)}),
    "kron @BLOCKS": (dict(kron={"c_fc": (4, 8, 1), "c_fc@2,1": (8, 8, 2)}),
                     {"c_fc@0,3": (4, 8, 1), "c_fc@1,2": (8, 8, 2)}),
    "kron_layers": (dict(kron={"attn_proj": [4, 4, 1], "wte": [16, 8, 1]}, kron_layers="odd"),
                    {"attn_proj@1,3": (4, 4, 1), "wte": (16, 8, 1)}),
    "shorthand and kron_layers": (dict(dim_1=4, dim_2=8, factors=1, kron_layers=[2, 0]),
                                  {"c_fc@0,2": (4, 8, 1), "c_proj@0,2": (8, 4, 1)}),
    "rank": (dict(rank={"c_fc": 3, "c_proj@1": 2}), {f"c_fc{ALL}": (16, 1, 3), "c_proj@1": (64, 1, 2)}),
    "rank and kron": (dict(kron={"c_attn@0": (4, 12, 1)}, rank={"c_fc@3": 5}),
                      {"c_attn@0": (4, 12, 1), "c_fc@3": (16, 1, 5)}),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_settings_form_is_the_plan_of_its_explicit_kron(form):
    settings, kron = FORMS[form]
    want = explicit(kron)
    assert want  # a plan that factors something: an empty one would pass vacuously
    assert Plan.from_settings(N_EMBD, N_LAYER, VOCAB, **settings) == want
    assert Plan.from_settings(N_EMBD, N_LAYER, VOCAB, kron=kron) == want  # the explicit form read as settings
    assert GPTConfig.from_settings(**MODEL, **settings).plan == want  # train.py's settings
    assert Plan.from_settings(N_EMBD, N_LAYER, VOCAB, kron=json.loads(json.dumps(want.to_kron()))) == want


def test_the_command_line_syntax_is_the_plan_of_its_explicit_kron():
    want = explicit({"c_fc@0,3": (4, 8, 1), "c_fc@1,2": (8, 8, 2), "wte": (16, 8, 1)})
    assert Plan.from_settings(N_EMBD, N_LAYER, VOCAB, kron=parse_kron(["c_fc=4x8:1", "c_fc@1,2=8x8:2",
                                                                        " wte=16x8:1"])) == want
    assert Plan.from_settings(N_EMBD, N_LAYER, VOCAB, kron=parse_kron(str(want).split())) == want
    ranks = parse_rank(["c_fc=3", "c_proj@1=2"])
    assert ranks == {"c_fc": 3, "c_proj@1": 2}
    assert Plan.from_settings(N_EMBD, N_LAYER, VOCAB, rank=ranks) == explicit(FORMS["rank"][1])


@pytest.mark.parametrize("parse,entry,message", [
    (parse_kron, "c_fc=4x8", "--kron 'c_fc=4x8' is not NAME=ROWSxCOLS:FACTORS or NAME@BLOCKS=ROWSxCOLS:FACTORS"),
    (parse_kron, "mlp=4x8:1", "--kron 'mlp=4x8:1': 'mlp' is not one of wte, c_attn"),
    (parse_rank, "c_fc=4x8:1", "--rank 'c_fc=4x8:1' is not NAME=RANK or NAME@BLOCKS=RANK, e.g. c_fc=64"),
    (parse_rank, "lm_head@1=3", "--rank 'lm_head@1=3': 'lm_head' is not one of wte, c_attn"),
])
def test_kron_and_rank_entries_are_refused_by_one_parser_naming_their_option(parse, entry, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        parse([entry])
    with pytest.raises(ValueError, match=r"names c_fc@1 twice"):
        parse(["c_fc@1=2", "c_fc@1=2"] if parse is parse_rank else ["c_fc@1=4x8:1", "c_fc@1=4x8:1"])


OLD_CHECKPOINT_ARGS = dict(**MODEL, dropout=0.0, bias=True, dim_1=4, dim_2=8, factors=1, kron={"wte": (16, 8, 1)},
                           kron_layers="odd")  # model_args written before plans were per block
OLD_EXPORT = dict(model_type="krony", n_positions=8, n_head=2, n_embd=N_EMBD, n_layer=N_LAYER, vocab_size=VOCAB,
                  kron={"wte": [16, 8, 1], "c_fc": [4, 8, 1], "c_proj": [8, 4, 1]}, kron_layers=[1, 3])
OLD_KRON = {"wte": (16, 8, 1), "c_fc@1,3": (4, 8, 1), "c_proj@1,3": (8, 4, 1)}


def test_an_old_checkpoint_and_an_old_export_are_the_plan_of_their_explicit_kron():
    want = explicit(OLD_KRON)
    assert GPTConfig.from_args(OLD_CHECKPOINT_ARGS).plan == want
    assert GPTConfig.from_args(json.loads(json.dumps(OLD_CHECKPOINT_ARGS))).plan == want
    assert Plan.from_hf(OLD_EXPORT) == want
    config = GPTConfig.from_hf(json.loads(json.dumps(OLD_EXPORT)))
    assert config.plan == want and config == GPTConfig(**MODEL, plan=want)


PLANS = [{}, FORMS["kron @BLOCKS"][1], {**FORMS["rank and kron"][1], "wte": (16, 8, 1)}]


@pytest.mark.parametrize("kron", PLANS)
def test_a_config_round_trips_through_a_checkpoints_model_args(kron):
    config = GPTConfig(**MODEL, dropout=0.1, bias=False, plan=explicit(kron), teacher_blocks=[0, 2, 3, 5])
    args = config.to_args()
    # the form every checkpoint holds: plain values, the plan as its kron dict (None when dense), no Plan
    assert set(args) == {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "kron",
                         "teacher_blocks"}
    assert args["kron"] == (config.plan.to_kron() or None) and json.loads(json.dumps(args)) == args
    assert GPTConfig.from_args(args) == config and GPTConfig.from_args(json.loads(json.dumps(args))) == config
    # one source of truth: the plan is a field, kron is only its written form
    assert "kron" not in {f.name for f in dataclasses.fields(GPTConfig)}


@pytest.mark.parametrize("kron", PLANS)
def test_a_config_round_trips_through_a_hugging_face_config(kron):
    from transformers import GPT2Config
    config = GPTConfig(**MODEL, plan=explicit(kron))  # dropout 0 and biases: all an HF config says of them
    hf = config.to_hf()
    assert ("kron" in hf) == bool(config.plan) and hf.get("model_type", "gpt2") == ("krony" if kron else "gpt2")
    assert GPTConfig.from_hf(hf) == config
    assert GPTConfig.from_hf(json.loads(json.dumps(hf))) == config  # a config.json
    if not kron:
        assert GPTConfig.from_hf(GPT2Config(**hf)) == config  # a transformers config object
        assert GPTConfig.from_hf(GPT2Config(**hf).to_dict()) == config


def test_a_krony_config_of_to_hf_reads_back_the_same_config(tmp_path):
    """KronyConfig, as an export ships it, built from to_hf's fields and read back by from_hf (object and dict)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    for path in ("hf_remote_code/configuration_krony.py", "kron_shapes.py"):
        shutil.copyfile(os.path.join(ROOT, path), tmp_path / os.path.basename(path))
    KronyConfig = get_class_from_dynamic_module("configuration_krony.KronyConfig", str(tmp_path))
    config = GPTConfig(**MODEL, plan=explicit(PLANS[2]))
    hf = KronyConfig(**config.to_hf())
    assert hf.model_type == "krony" and hf.plan.shapes == config.plan.shapes  # the export's own Plan class
    assert GPTConfig.from_hf(hf) == config and GPTConfig.from_hf(hf.to_dict()) == config


def test_plan_settings_are_keyword_only_and_a_plan_must_fit_its_config():
    with pytest.raises(TypeError):
        Plan.from_settings(N_EMBD, N_LAYER, VOCAB, 4, 8, 1)
    with pytest.raises(TypeError):
        GPTConfig.from_settings(4, 8, 1, **MODEL)
    assert Plan.from_settings(N_EMBD, N_LAYER, VOCAB, dim_1=4, dim_2=8, factors=1) == \
        explicit({f"c_fc{ALL}": (4, 8, 1), f"c_proj{ALL}": (8, 4, 1)})
    assert GPTConfig(**MODEL).plan == Plan(N_EMBD, N_LAYER, VOCAB) and not GPTConfig(**MODEL).plan
    other = Plan(N_EMBD, N_LAYER + 1, VOCAB)
    with pytest.raises(ValueError, match="does not fit a model with 16, 4, 64"):
        GPTConfig(**MODEL, plan=other)
    with pytest.raises(ValueError, match="does not fit a model with 16, 4, 64"):
        GPTConfig(**MODEL).with_plan(other)
