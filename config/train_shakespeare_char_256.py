# The character-level teacher twice as wide: config/train_shakespeare_char.py's 6 layers, context, data and
# schedule at n_embd 256 (8 heads of 32, as the 128-wide teacher's heads), for the question whether the frontier's
# ranking holds as width grows (config/study_width_char_256.py trains it first). 4,793,344 parameters, 4 times the
# 128-wide teacher's. 6,000 steps of 16 x 128 characters, the 128-wide teacher's tokens, learning rate 1e-3 cosine
# to 1e-4: that teacher's val loss had flattened by then (-0.007 over its last 500 steps), and so had this one's
# (1.3993, 1.3927, 1.3940 at 5,500, 5,750, 6,000: -0.005 over its last 500). 6,068 s of training on one thread of
# the 2-core CPU (AMD EPYC) beside another job, 0.9-1.0 s a step; val perplexity 3.82 per character.
#
#   python data/shakespeare_char/prepare.py
#   python train.py config/train_shakespeare_char_256.py --device=cpu

out_dir = "checks/shakespeare_char_teacher_256"
dataset = "shakespeare_char"
init_from = "scratch"
n_layer = 6
n_head = 8
n_embd = 256
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
