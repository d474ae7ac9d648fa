# Does Kronecker compression pay, with every family at its best? The frontier on the character-level testbed: the
# teacher of study_char.py (config/train_shakespeare_char.py: 6 blocks, n_embd 128, 97.5% of the parameters in
# the blocks, as GPT-2's two thirds and more) compressed to three budgets, about 50%, 67% and 83% of its
# parameters without wpe (the sizes of keeping 3, 4 and 5 of its blocks), by every family a user would pick
# instead of another (study.py's frontier section), each fine-tuned on the same 150 x 2,048 characters with seeds
# 1, 2, 3 (the same batches for every variant of a seed) and scored on the first 50,000 characters of val.bin.
#   kronecker act    the MLP shape (balanced ones included) of least output error on init act's calibration
#                    characters, each matrix's scaled to what it costs the loss (compress.calibrated_options),
#                    then init act; kronecker vl: the paper's, the shape of least weight error, Van Loan's init
#                    (the reference row)
#   lowrank act      init act from the whitened SVD (SVD-LLM's); lowrank vl: the truncated SVD
#   monarch act      both MLP matrices Monarch matrices (block counts matched to the budget), init act
#   allocated act    every block's four matrices (MLP and attention), each its own Kronecker shape, rank, Monarch
#                    matrix or dense, of least total price (priced as kronecker act's) within the budget, init
#                    act, kept only where it starts with no more calibration loss than kronecker, lowrank and
#                    monarch act (else the best of those, named in its row)
#   ... KD           the two factored families that led the first frontier (low rank, then Kronecker), distilled
#                    at every budget; drop_blocks is distilled (DistilGPT2's recipe), dense from scratch is not
#                    (distilling it changed nothing: 12.50 against 12.52 at 50%)
# The dense students get the teacher's own learning rate (1e-3, not fine-tuning's 3e-4): they have nothing to
# keep. Fine-tuning is half the first frontier's (150 steps, not 300), for every family alike, so that the 31
# rows of 3 seeds fit one session: 6,045 s on one thread of the 2-core CPU (AMD EPYC), the act fits (about a
# minute each, the allocated plans' about three) and the timing phase included.
#
#   python data/shakespeare_char/prepare.py && python study.py config/study_frontier_char.py

out_dir = "studies/frontier_char_fair"
teacher_config = "config/train_shakespeare_char.py"
data_dir = "data/shakespeare_char"
eval_tokens = 50_000
seeds = [1, 2, 3]
finetune = {"block_size": 128, "batch_size": 16, "gradient_accumulation_steps": 1, "max_iters": 150,
            "lr_decay_iters": 150, "warmup_iters": 8, "learning_rate": 3e-4, "min_lr": 3e-5, "eval_interval": 75,
            "eval_iters": 5, "log_interval": 50, "compile": False}
_kd = {"distill_alpha": 0.5, "distill_temperature": 2.0}  # DistilGPT2's logit distillation, as study_char.py's
_scratch = {"learning_rate": 1e-3, "min_lr": 1e-4}
budgets = [0.50, 0.67, 0.83]
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
    "dense scratch": {"family": "dense", "finetune": _scratch},
}
