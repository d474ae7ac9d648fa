# study.py's smoke test: a tiny teacher (2 layers, n_embd 64) trained for 60 steps, two variants of its MLPs
# (Van Loan and random init of the 81M-like shape) and the control (the teacher itself), one seed, 20 fine-tuning
# steps, 4,096 held-out tokens. Under two minutes on a 2-core CPU (75 s with one core busy elsewhere);
# tests/test_study.py runs it.
#
#   python study.py config/study_smoke.py

out_dir = "studies/smoke"
teacher_config = "config/train_shakespeare.py"
teacher_overrides = {"n_layer": 2, "n_head": 2, "n_embd": 64, "max_iters": 60, "lr_decay_iters": 60,
                     "warmup_iters": 5, "eval_interval": 60, "eval_iters": 2, "log_interval": 20}
data_dir = "data/shakespeare"
eval_tokens = 4096
seeds = [1]
finetune = {"block_size": 64, "batch_size": 4, "gradient_accumulation_steps": 1, "max_iters": 20,
            "lr_decay_iters": 20, "warmup_iters": 2, "learning_rate": 1e-3, "min_lr": 1e-4, "eval_interval": 10,
            "eval_iters": 2, "log_interval": 5, "compile": False}
variants = {
    "vl": {"plan": {"dim_1": 64, "dim_2": 64, "factors": 1}, "init": "vl"},
    "random": {"plan": {"dim_1": 64, "dim_2": 64, "factors": 1}, "init": "random"},
}
questions = {"Does the Van Loan init beat a random one?": ("vl", ["random"])}
