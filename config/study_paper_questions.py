# The paper's open questions, answered on the embedded Shakespeare corpus: 14 variants of one teacher
# (config/train_shakespeare_teacher.py: 6 layers, n_embd 128, 7.64M parameters of which 6.43M are the tied
# embedding), each fine-tuned for 30 steps of 1,024 tokens with seeds 1, 2, 3 and scored by perplexity.py on
# the first 100,000 tokens of val.bin. The paper's shapes are scaled from n_embd 768 to 128 (hidden 3072 to 512).
# Each MLP matrix of the teacher has 65,536 weights; the parameter counts saved below are over the whole model.
#
#   python data/shakespeare/prepare.py && python study.py config/study_paper_questions.py

out_dir = "studies/paper_questions"
teacher_config = "config/train_shakespeare_teacher.py"
data_dir = "data/shakespeare"
eval_tokens = 100_000
seeds = [1, 2, 3]
finetune = {"block_size": 128, "batch_size": 8, "gradient_accumulation_steps": 1, "max_iters": 30,
            "lr_decay_iters": 30, "warmup_iters": 3, "learning_rate": 1e-3, "min_lr": 1e-4, "eval_interval": 10,
            "eval_iters": 2, "log_interval": 10, "compile": False}

_mlp_95M = {"dim_1": 64, "dim_2": 512, "factors": 1}  # the 95M model's A 384x3072, B 2x1: saves 393,192
_mlp_81M = {"dim_1": 128, "dim_2": 128}              # the 81M model's A 768x768, B 1x4
variants = {
    # 1. inits of the 95M shape
    "95M vl": {"plan": _mlp_95M, "init": "vl"},
    "95M vl_norm": {"plan": _mlp_95M, "init": "vl_norm"},
    "95M prune": {"plan": _mlp_95M, "init": "prune"},
    "95M random": {"plan": _mlp_95M, "init": "random"},
    # 2. factors of the 81M shape (saves 589,776 / 393,120 / -48: four factors hold as many numbers as W),
    #    and one factor of an A twice as wide, as many parameters as two factors (saves 393,192)
    "81M f1": {"plan": {**_mlp_81M, "factors": 1}},
    "81M f2": {"plan": {**_mlp_81M, "factors": 2}},
    "81M f4": {"plan": {**_mlp_81M, "factors": 4}},
    "A 128x256 f1": {"plan": {"dim_1": 128, "dim_2": 256, "factors": 1}},
    # 3. distillation of the 81M shape: logit KD, and logit KD with the hidden states' MSE
    "81M f1 KD": {"plan": {**_mlp_81M, "factors": 1}, "distill": {"distill_alpha": 0.5, "distill_temperature": 2.0}},
    "81M f1 KD+hidden": {"plan": {**_mlp_81M, "factors": 1},
                         "distill": {"distill_alpha": 0.5, "distill_temperature": 2.0, "distill_hidden": 1.0}},
    # 4. layouts saving about as much as "81M f2" (393,120): MLP and attention (393,048); c_fc, c_attn and the
    #    embedding with 31 of its 32 possible products (396,536); the odd blocks' MLPs only, at the smallest
    #    shape (390,144)
    "MLP+attention": {"plan": {**_mlp_81M, "factors": 3,
                               "kron": {"c_attn": (128, 192, 1), "attn_proj": (128, 64, 1)}}},
    "MLP+attention+embedding": {"plan": {"kron": {"c_fc": (128, 128, 3), "c_attn": (128, 128, 2),
                                                  "wte": (50257, 4, 31)}}},
    "odd blocks": {"plan": {"dim_1": 16, "dim_2": 16, "factors": 1, "kron_layers": "odd"}},
    # 5. the 67M model's smallest factors (A 64x32, B 12x96), scaled: A 16x16, B 8x32 (saves 780,288)
    "67M": {"plan": {"dim_1": 16, "dim_2": 16, "factors": 1}},
}
questions = {
    "1. Which init for the 95M shape?": ("95M vl", ["95M vl_norm", "95M prune", "95M random"]),
    "2. What do more factors buy, and is a larger A better than a second factor?":
        ("81M f1", ["81M f2", "81M f4", "A 128x256 f1", "95M vl"]),
    "3. Does distillation help?": ("81M f1", ["81M f1 KD", "81M f1 KD+hidden"]),
    "4. At equal size, where should the factors go?": ("81M f2", ["MLP+attention", "MLP+attention+embedding",
                                                                  "odd blocks"]),
    "5. What does the smallest shape (67M) cost?": ("81M f1", ["67M"]),
}
