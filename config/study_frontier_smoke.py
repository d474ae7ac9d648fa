# The frontier's smoke test: every family at one budget on a tiny character-level teacher (2 layers, n_embd 64,
# trained for 100 steps), one seed, 20 fine-tuning steps, 4,096 held-out characters; the budget is the one that
# keeping one of the two blocks meets. The factored families (kronecker, lowrank, monarch, allocated) start from
# init act on 8,192 calibration characters with 30 steps per sublayer (not the studies' 300: a smoke test is
# fast), the Kronecker shape and the allocation priced by the output error on them, the allocated student checked
# against the other three by its loss on them. 77 s on one thread (OMP_NUM_THREADS=1) of a 2-core CPU (AMD EPYC)
# that other jobs kept at a load of 2; tests/test_study.py runs it.
#
#   python data/shakespeare_char/prepare.py && python study.py config/study_frontier_smoke.py

out_dir = "studies/frontier_smoke"
teacher_config = "config/train_shakespeare_char.py"
teacher_overrides = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "batch_size": 8, "max_iters": 100,
                     "lr_decay_iters": 100, "warmup_iters": 10, "eval_interval": 100, "eval_iters": 2,
                     "log_interval": 50}
data_dir = "data/shakespeare_char"
eval_tokens = 4096
seeds = [1]
finetune = {"block_size": 64, "batch_size": 4, "gradient_accumulation_steps": 1, "max_iters": 20,
            "lr_decay_iters": 20, "warmup_iters": 2, "learning_rate": 1e-3, "min_lr": 1e-4, "eval_interval": 10,
            "eval_iters": 2, "log_interval": 10, "compile": False}
_kd = {"distill_alpha": 0.5, "distill_temperature": 2.0}
_act = {"calibration_tokens": 8192, "act_steps": 30}
budgets = [0.52]
families = {
    "kronecker": {"family": "kronecker", "init": "act", "act": _act},
    "lowrank": {"family": "lowrank", "init": "act", "act": _act},
    "monarch": {"family": "monarch", "init": "act", "act": _act},
    "allocated": {"family": "allocated", "init": "act", "act": _act},
    "drop_blocks KD": {"family": "drop_blocks", "distill": _kd},
    "dense scratch": {"family": "dense"},
    "dense KD": {"family": "dense", "distill": _kd},
}
