# The study's teacher: a dense GPT-2 with GPT-2 small's depth halved and its head size kept (6 layers, 2 heads
# of 64, n_embd 128, context 128, vocabulary 50257), trained from scratch on the embedded Shakespeare corpus in
# about 12 minutes on a 2-core CPU. Stronger than the quickstart's 4-layer teacher, so that compression choices
# show in the fine-tuned perplexities. Narrow because the 50,257-word vocabulary sets the cost on a CPU: at
# n_embd 384 one step of 1,024 tokens took 3.1 s here and scoring 100k held-out tokens over a minute, too slow
# for a 42-run study. config/study_paper_questions.py trains it first.
#
#   python data/shakespeare/prepare.py
#   python train.py config/train_shakespeare_teacher.py --device=cpu

out_dir = "checks/shakespeare_teacher_6l"
dataset = "shakespeare"
init_from = "scratch"
n_layer = 6
n_head = 2
n_embd = 128
dropout = 0.0

block_size = 128
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 500
lr_decay_iters = 500
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 25

eval_interval = 100
eval_iters = 4
log_interval = 25
compile = False
