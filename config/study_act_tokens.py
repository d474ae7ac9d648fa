# Init act on the GPT-2-token teacher: against vl and vl_norm for the 81M shape, on the quickstart's
# teacher (config/train_shakespeare.py: 4 layers, n_embd 128, the 50,257-token vocabulary, so 89% of its
# weights are the embedding, which no init here changes). At init, vl_norm is best on this teacher and worst on
# the character one (progress.md); this asks the same after fine-tuning, paired over seeds 1-3, scored
# by perplexity.py on the first 100,000 val tokens. The recipe is config/study_char.py's learning rate (3e-4
# cosine to 3e-5, the rate that did no harm there) over 300 steps of 512 tokens; the control says whether it
# does harm here. About 33 minutes on 2 CPU cores (progress.md).
#
#   python data/shakespeare/prepare.py && python study.py config/study_act_tokens.py

out_dir = "studies/act_tokens"
teacher_config = "config/train_shakespeare.py"
data_dir = "data/shakespeare"
eval_tokens = 100_000
seeds = [1, 2, 3]
finetune = {"block_size": 64, "batch_size": 8, "gradient_accumulation_steps": 1, "max_iters": 300,
            "lr_decay_iters": 300, "warmup_iters": 15, "learning_rate": 3e-4, "min_lr": 3e-5, "eval_interval": 100,
            "eval_iters": 8, "log_interval": 50, "compile": False}

_mlp_81M = {"dim_1": 128, "dim_2": 128, "factors": 1}  # the 81M model's A 768x768, B 1x4, at n_embd 128
variants = {
    "81M vl": {"plan": _mlp_81M, "init": "vl"},
    "81M vl_norm": {"plan": _mlp_81M, "init": "vl_norm"},
    "81M act": {"plan": _mlp_81M, "init": "act"},
}
questions = {
    "Fitting the outputs or the weights, on the GPT-2-token teacher?": ("81M vl", ["81M vl_norm", "81M act"]),
}
