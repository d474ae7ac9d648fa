# Does the ranking hold as width grows? The character-level frontier's 50% budget on a teacher twice as wide
# (config/train_shakespeare_char_256.py: 6 blocks, n_embd 256, the same depth, data and context as the 128-wide
# teacher of config/study_frontier_char.py) for the four families that matter to the answer: Kronecker with its
# shape chosen by the output error on init act's calibration characters (scaled to the loss), low rank by act,
# Monarch matrices by act and the allocated plan, each init act, fine-tuned with study_frontier_char.py's recipe
# (150 x 2,048 characters) with seeds 1 and 2 and scored on the first 50,000 characters of val.bin. Read against
# the 128-wide study's same families at 50%, seeds 1 and 2: which way the gap between them moves from 128 to 256
# says which way GPT-2 (768 wide) leans. The teacher trains first (1.7 hours on one thread: see its config),
# then the control and 4 variants of 2 seeds with their act fits and timing, 42 minutes.
#
#   python data/shakespeare_char/prepare.py && python study.py config/study_width_char_256.py

out_dir = "studies/width_char_256"
teacher_config = "config/train_shakespeare_char_256.py"
data_dir = "data/shakespeare_char"
eval_tokens = 50_000
seeds = [1, 2]
finetune = {"block_size": 128, "batch_size": 16, "gradient_accumulation_steps": 1, "max_iters": 150,
            "lr_decay_iters": 150, "warmup_iters": 8, "learning_rate": 3e-4, "min_lr": 3e-5, "eval_interval": 75,
            "eval_iters": 5, "log_interval": 50, "compile": False}
budgets = [0.50]
families = {
    "kronecker act": {"family": "kronecker", "init": "act"},
    "lowrank act": {"family": "lowrank", "init": "act"},
    "monarch act": {"family": "monarch", "init": "act"},
    "allocated act": {"family": "allocated", "init": "act"},
}
