# The study's teacher: a dense character-level GPT (nanoGPT's shakespeare_char, smaller) whose blocks hold 97.5%
# of its 1,217,024 parameters, as GPT-2 small's blocks hold most of its: 6 layers, 4 heads of 32, n_embd 128,
# context 128, the 84 characters of data/shakespeare_char (vocab_size comes from its meta.json). 6,000 steps of
# 2,048 characters (2.8 epochs), cosine decay to a tenth: trained until its val loss flattens, in under 20 minutes
# on a 2-core CPU (progress.md has the curve). config/study_char.py trains it first.
#
#   python data/shakespeare_char/prepare.py
#   python train.py config/train_shakespeare_char.py --device=cpu

out_dir = "checks/shakespeare_char_teacher"
dataset = "shakespeare_char"
init_from = "scratch"
n_layer = 6
n_head = 4
n_embd = 128
dropout = 0.0

block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 6000
lr_decay_iters = 6000
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100

eval_interval = 250
eval_iters = 20
log_interval = 100
compile = False
