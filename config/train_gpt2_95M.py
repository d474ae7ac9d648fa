# The 95M model: every MLP matrix of GPT-2 as one Kronecker product with dim_1=384, dim_2=3072, factors=1
# (c_fc's A is 384x3072 and its B 2x1), started with the pruning init from gpt2: B is one-hot, so A is every
# other row of c_fc (W in x @ W orientation) and every other column of c_proj. Then trained on OpenWebText
# with the recipe of config/train_gpt2.py, whose comments say where each number comes from.
#
#   python data/owt/prepare.py
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_95M.py
#
# Tokens per iteration: 8 accumulation steps x 16 sequences x 1024 tokens = 131,072; 4,000 iterations =
# 524 M tokens. Expected wall time on 8 A100s: about 15 minutes (an estimate, as for the 81M model).

out_dir = "checks/krony-95M"
init_from = "gpt2"
dim_1 = 384
dim_2 = 3072
factors = 1
init = "prune"

dataset = "owt"
block_size = 1024
batch_size = 16
gradient_accumulation_steps = 8  # over all GPUs: must be a multiple of nproc_per_node

max_iters = 4000
lr_decay_iters = 4000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 100
weight_decay = 1e-1

eval_interval = 100
eval_iters = 100
log_interval = 10
always_save_checkpoint = False  # keep the checkpoint with the best val loss

wandb_log = False
wandb_project = "krony"
wandb_run_name = "krony-95M"
