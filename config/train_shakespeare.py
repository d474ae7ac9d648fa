# A tiny Kronecker GPT trained from scratch on Shakespeare: a few minutes on a laptop CPU.
#
#   python data/shakespeare/prepare.py
#   python train.py config/train_shakespeare.py --device=cpu
#
# The MLPs have the 81M model's shape scaled down (dim_1 = dim_2 = n_embd, factors=1: c_fc's A is 64x64, B 1x4).
# With GPT-2's vocabulary most of the parameters are the token embedding.

out_dir = "out-shakespeare"
dataset = "shakespeare"
init_from = "scratch"
n_layer = 4
n_head = 4
n_embd = 64
dim_1 = 64
dim_2 = 64
factors = 1
init = "random"
dropout = 0.0

block_size = 64
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 200
lr_decay_iters = 200
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 20

eval_interval = 50
eval_iters = 10
log_interval = 10
compile = False  # compiling takes longer than this whole run

wandb_log = False
wandb_run_name = "krony-shakespeare"
