# A small dense GPT-2 (vocabulary 50257, so it exports and scores like any GPT-2) trained from scratch on the
# embedded Shakespeare corpus: about 100 seconds on a 2-core CPU. quickstart.py uses it as the teacher that
# kron_decompose.py compresses; config/finetune_shakespeare.py then fine-tunes the compressed model.
#
#   python data/shakespeare/prepare.py
#   python train.py config/train_shakespeare.py --device=cpu
#
# At this size most of the time goes to the 50257-way output layer, so small batches and many steps learn
# the most per second: 300 iterations of 4 x 64 tokens reach a val loss of about 6.3 (perplexity ~530).

out_dir = "checks/shakespeare_teacher"
dataset = "shakespeare"
init_from = "scratch"
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

block_size = 64
batch_size = 4
gradient_accumulation_steps = 1
max_iters = 300
lr_decay_iters = 300
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 20

eval_interval = 100
eval_iters = 16
log_interval = 25
compile = False  # compiling takes longer than this whole run
