# Does Kronecker compression pay, with every family at its best? The frontier on the GPT-2-token testbed: a
# 6-block teacher (config/train_shakespeare_teacher.py: n_embd 128, GPT-2's 50,257 tokens) compressed to the sizes
# of keeping 3, 4 and 5 of its 6 blocks (92.2%, 94.8% and 97.4% of its parameters without wpe: the tied embedding
# is 84% of this small model, so the budgets differ by a block each), by every family of study.py's frontier
# section, each fine-tuned on the same 200 x 512 tokens with seeds 1, 2, 3 and scored on the first 50,000 tokens
# of val.bin. The families as in config/study_frontier_char.py: Kronecker with its shape chosen by the output
# error on init act's calibration tokens and init act, the paper's Kronecker (shape by weight error, Van Loan's
# init) as the reference row, low rank by act (the whitened SVD, then the fit) and by the truncated SVD, Monarch
# matrices by act, the allocated plan over every block's four matrices with init act (kept only where it starts
# with no more calibration loss than the Kronecker, low rank and Monarch act students), the distilled low rank
# and Kronecker (the two factored families that led the first frontier) at every budget, and drop_blocks
# distilled. The dense student
# is shallower, not narrower (a narrower one shrinks the embedding by 50,257 per unit of width), gets the
# teacher's learning rate, and runs at the smallest budget only (3 blocks from scratch, 1.9 times the control's
# perplexity the first time). Run time, estimated from the first frontier (11 variants and the control in about 140
# minutes on one thread of the 2-core CPU, 12 minutes each): 28 variants and the control, 5.8 hours, plus 18 act
# fits and the Kronecker shapes' slower steps (the MLPs are a small part of this model's step: lm_head's
# 50,257 x 128 is most of it), about 7 to 8 hours in all. If that does not fit, cut max_iters for every family
# alike, never seeds.
#
#   python data/shakespeare/prepare.py && python study.py config/study_frontier.py

out_dir = "studies/frontier_fair"
teacher_config = "config/train_shakespeare_teacher.py"
data_dir = "data/shakespeare"
eval_tokens = 50_000
seeds = [1, 2, 3]
finetune = {"block_size": 128, "batch_size": 4, "gradient_accumulation_steps": 1, "max_iters": 200,
            "lr_decay_iters": 200, "warmup_iters": 10, "learning_rate": 3e-4, "min_lr": 3e-5, "eval_interval": 100,
            "eval_iters": 8, "log_interval": 50, "compile": False}
_kd = {"distill_alpha": 0.5, "distill_temperature": 2.0}
_scratch = {"learning_rate": 2e-3, "min_lr": 2e-4}  # config/train_shakespeare_teacher.py's
budgets = [0.922, 0.948, 0.974]
families = {
    "kronecker act": {"family": "kronecker", "init": "act"},
    "kronecker vl": {"family": "kronecker", "init": "vl"},
    "lowrank act": {"family": "lowrank", "init": "act"},
    "lowrank vl": {"family": "lowrank", "init": "vl"},
    "monarch act": {"family": "monarch", "init": "act"},
    "allocated act": {"family": "allocated", "init": "act"},
    "lowrank act KD": {"family": "lowrank", "init": "act", "distill": _kd},
    "kronecker act KD": {"family": "kronecker", "init": "act", "distill": _kd},
    "drop_blocks KD": {"family": "drop_blocks", "distill": _kd},
    "dense scratch": {"family": "dense", "vary": "depth", "finetune": _scratch, "at": [0.922]},
}
