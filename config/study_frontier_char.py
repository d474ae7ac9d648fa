# Does Kronecker compression pay? The frontier on the character-level testbed: the teacher of study_char.py
# (config/train_shakespeare_char.py: 6 blocks, n_embd 128, 97.5% of the parameters in the blocks, as GPT-2's
# two thirds and more) compressed to three budgets, about 50%, 67% and 83% of its parameters without wpe (the
# sizes of keeping 3, 4 and 5 of its blocks), by every family a user would pick instead of another (study.py's
# frontier section), each fine-tuned on the same 300 x 2,048 characters with seeds 1, 2, 3 (the same batches for
# every variant of a seed) and scored on the first 50,000 characters of val.bin. The dense students from scratch
# get the teacher's own learning rate (1e-3, not fine-tuning's 3e-4): they have nothing to keep. The distilled
# Kronecker and dense students run at the 50% budget only, where keeping every other block (DistilGPT2's recipe:
# blocks 0, 2, 4 and logit distillation) is the comparison the paper's claim rests on. About an hour on 2 cores.
#
#   python data/shakespeare_char/prepare.py && python study.py config/study_frontier_char.py

out_dir = "studies/frontier_char"
teacher_config = "config/train_shakespeare_char.py"
data_dir = "data/shakespeare_char"
eval_tokens = 50_000
seeds = [1, 2, 3]
finetune = {"block_size": 128, "batch_size": 16, "gradient_accumulation_steps": 1, "max_iters": 300,
            "lr_decay_iters": 300, "warmup_iters": 15, "learning_rate": 3e-4, "min_lr": 3e-5, "eval_interval": 150,
            "eval_iters": 5, "log_interval": 50, "compile": False}
_kd = {"distill_alpha": 0.5, "distill_temperature": 2.0}  # DistilGPT2's logit distillation, as study_char.py's
_scratch = {"learning_rate": 1e-3, "min_lr": 1e-4}
budgets = [0.50, 0.67, 0.83]
families = {
    "kronecker": {"family": "kronecker", "init": "vl"},
    "kronecker KD": {"family": "kronecker", "init": "vl", "distill": _kd, "at": [0.50]},  # DistilGPT2's recipe
    "lowrank": {"family": "lowrank", "init": "vl"},
    "drop_blocks KD": {"family": "drop_blocks", "distill": _kd},
    "dense scratch": {"family": "dense", "finetune": _scratch},
    "dense KD": {"family": "dense", "distill": _kd, "finetune": _scratch, "at": [0.50]},
}
