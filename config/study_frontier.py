# Does Kronecker compression pay? The frontier on the GPT-2-token testbed: a 6-block teacher
# (config/train_shakespeare_teacher.py: n_embd 128, GPT-2's 50,257 tokens) compressed to the sizes of keeping
# 3, 4 and 5 of its 6 blocks (92.2%, 94.8% and 97.4% of its parameters without wpe: the tied embedding is 84% of
# this small model, so the budgets differ by a block each), by every family of study.py's frontier section, each
# fine-tuned on the same 200 x 512 tokens with seeds 1, 2, 3 and scored on the first 50,000 tokens of val.bin. The
# dense students are shallower, not narrower (a narrower one shrinks the embedding by 50,257 per unit of width),
# and get the teacher's learning rate; they run at the smallest budget only, as the distilled Kronecker student,
# the budget of keeping every other block (DistilGPT2's recipe: blocks 0, 2, 4): on the char testbed a student
# from scratch was 2.7 to 2.9 times the teacher's perplexity after as many tokens, distilled or not, and distilling
# it changed nothing. About 40 minutes on 2 cores.
#
#   python data/shakespeare/prepare.py && python study.py config/study_frontier.py

out_dir = "studies/frontier"
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
    "kronecker": {"family": "kronecker", "init": "vl"},
    "kronecker KD": {"family": "kronecker", "init": "vl", "distill": _kd, "at": [0.922]},
    "lowrank": {"family": "lowrank", "init": "vl"},
    "drop_blocks KD": {"family": "drop_blocks", "distill": _kd},
    "dense scratch": {"family": "dense", "vary": "depth", "finetune": _scratch, "at": [0.922]},
}
