# The 81M model distilled from gpt2: config/train_gpt2.py in every setting but the loss, so that the two runs
# differ in distillation alone and test the paper's claim that it brings nothing over plain cross-entropy.
# The loss mixes the tokens' cross-entropy with the teacher's softened next-token distribution, as
# DistilGPT2 does: 0.5 * CE + 0.5 * T^2 * KL(teacher || student) at T = 2. The teacher is gpt2 itself, the
# model the student was decomposed from, so it is one more forward pass per micro-batch (no gradients).
# Add distill_hidden=1.0 to also match the residual streams block by block (KnGPT2's intermediate-layer loss).
#
#   torchrun --standalone --nproc_per_node=8 train.py config/distill_gpt2.py

import os

exec(open(os.path.join(os.path.dirname(__file__), "train_gpt2.py")).read())  # the 81M recipe, then this loss

out_dir = "checks/krony-81M-distilled"
teacher = "gpt2"
distill_alpha = 0.5
distill_temperature = 2.0
distill_hidden = 0.0
wandb_run_name = "krony-81M-distilled"
