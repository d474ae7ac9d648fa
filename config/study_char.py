# The paper's open questions on the character-level testbed: 13 variants of one teacher whose blocks hold the
# parameters, as GPT-2's do (config/train_shakespeare_char.py: 6 layers, n_embd 128, 1.22M parameters, 97.5% of
# them in the blocks, 84 characters), a dense control (the teacher fine-tuned the same way), seeds 1, 2, 3 (the
# same batches for every variant of a seed), each scored by perplexity.py on the first 100,000 characters of
# val.bin. The shapes are config/study_paper_questions.py's (the paper's scaled from n_embd 768 to 128); the
# question that factors the tied embedding stays with the GPT-2-token teacher, where the embedding is large.
# The fine-tuning recipe is the sweep's in progress.md: 600 steps of 2,048 characters, learning rate 3e-4 cosine
# to 3e-5, the largest rate that leaves the control no worse than the teacher and an exact init (81M f4) no
# worse than it starts (1e-3 harms both); about 90 minutes on 2 CPU cores with the teacher.
#
#   python data/shakespeare_char/prepare.py && python study.py config/study_char.py

out_dir = "studies/char"
teacher_config = "config/train_shakespeare_char.py"
data_dir = "data/shakespeare_char"
eval_tokens = 100_000
seeds = [1, 2, 3]
finetune = {"block_size": 128, "batch_size": 16, "gradient_accumulation_steps": 1, "max_iters": 600,
            "lr_decay_iters": 600, "warmup_iters": 30, "learning_rate": 3e-4, "min_lr": 3e-5, "eval_interval": 100,
            "eval_iters": 10, "log_interval": 50, "compile": False}

_mlp_95M = {"dim_1": 64, "dim_2": 512, "factors": 1}  # the 95M model's A 384x3072, B 2x1
_mlp_81M = {"dim_1": 128, "dim_2": 128}              # the 81M model's A 768x768, B 1x4
variants = {
    # 1. inits of the 95M shape
    "95M vl": {"plan": _mlp_95M, "init": "vl"},
    "95M vl_norm": {"plan": _mlp_95M, "init": "vl_norm"},
    "95M prune": {"plan": _mlp_95M, "init": "prune"},
    "95M random": {"plan": _mlp_95M, "init": "random"},
    # 2. factors of the 81M shape (four factors hold as many numbers as W: an exact init), and one factor of an
    #    A twice as wide, as many parameters as two factors
    "81M f1": {"plan": {**_mlp_81M, "factors": 1}},
    "81M f2": {"plan": {**_mlp_81M, "factors": 2}},
    "81M f4": {"plan": {**_mlp_81M, "factors": 4}},
    "A 128x256 f1": {"plan": {"dim_1": 128, "dim_2": 256, "factors": 1}},
    # 3. distillation of the 81M shape: logit KD, and logit KD with the hidden states' MSE
    "81M f1 KD": {"plan": {**_mlp_81M, "factors": 1}, "distill": {"distill_alpha": 0.5, "distill_temperature": 2.0}},
    "81M f1 KD+hidden": {"plan": {**_mlp_81M, "factors": 1},
                         "distill": {"distill_alpha": 0.5, "distill_temperature": 2.0, "distill_hidden": 1.0}},
    # 4. layouts saving about as much as "81M f2": MLP and attention; the odd blocks' MLPs only, smallest shape
    "MLP+attention": {"plan": {**_mlp_81M, "factors": 3,
                               "kron": {"c_attn": (128, 192, 1), "attn_proj": (128, 64, 1)}}},
    "odd blocks": {"plan": {"dim_1": 16, "dim_2": 16, "factors": 1, "kron_layers": "odd"}},
    # 5. the 67M model's smallest factors (A 64x32, B 12x96), scaled: A 16x16, B 8x32
    "67M": {"plan": {"dim_1": 16, "dim_2": 16, "factors": 1}},
}
questions = {
    "1. Which init for the 95M shape?": ("95M vl", ["95M vl_norm", "95M prune", "95M random"]),
    "2. What do more factors buy, and is a larger A better than a second factor?":
        ("81M f1", ["81M f2", "81M f4", "A 128x256 f1", "95M vl"]),
    "3. Does distillation help?": ("81M f1", ["81M f1 KD", "81M f1 KD+hidden"]),
    "4. At equal size, where should the factors go?": ("81M f2", ["MLP+attention", "odd blocks"]),
    "5. What does the smallest shape (67M) cost?": ("81M f1", ["67M"]),
}
