# Fine-tune a compressed model (kron_decompose.py's output) on the embedded Shakespeare corpus: about 40
# seconds on a 2-core CPU for the quickstart's teacher:
#
#   python kron_decompose.py 128 128 1 --model checks/shakespeare_teacher/ckpt.pt --out checks/shakespeare_krony_init.pt
#   python train.py config/finetune_shakespeare.py --device=cpu
#
# The model's shape (layers, width, context, Kronecker factors) comes from the checkpoint. A lower peak
# learning rate than the teacher's: the factors start from the teacher's weights, not from noise.

out_dir = "checks/shakespeare_krony"
init_from = "checks/shakespeare_krony_init.pt"  # kron_decompose.py --out
dataset = "shakespeare"
dropout = 0.0

block_size = 64
batch_size = 4
gradient_accumulation_steps = 1
max_iters = 150
lr_decay_iters = 150
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 10

eval_interval = 50
eval_iters = 16
log_interval = 25
compile = False
