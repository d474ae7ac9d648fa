# Under 60M parameters: the 81M model's MLPs (c_fc A 768x768, B 1x4) plus attention and the tied embedding,
# each a single Kronecker product that halves or thirds its matrix, as KnGPT2 factors all three:
#   c_attn     768x2304  A 768x1152, B 1x2   (Q, K and V together)
#   attn_proj  768x768   A 768x384,  B 1x2
#   wte        50257x768 A 50257x384, B 1x2 (the lookup and lm_head, never built)
# in every block. Initialised from gpt2 by Van Loan and trained with config/train_gpt2.py's recipe.
# Parameters: 48,518,162 (47,731,730 without position embeddings).
#
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_50M.py

import os

exec(open(os.path.join(os.path.dirname(__file__), "train_gpt2.py")).read())  # the 81M recipe, then this plan

out_dir = "checks/krony-50M"
kron = {"c_attn": (768, 1152, 1), "attn_proj": (768, 384, 1), "wte": (50257, 384, 1)}
wandb_run_name = "krony-50M"
