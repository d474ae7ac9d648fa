# The paper's smallest model, 67M: every MLP matrix of GPT-2 as one Kronecker product with the smallest
# factors it lists (dim_1=64, dim_2=32, factors=1: c_fc's A is 64x32 and its B 12x96), GPT-2 with its MLPs
# almost gone. Initialised from gpt2 by Van Loan and trained with config/train_gpt2.py's recipe.
# Parameters: 67,893,504 (67,107,072 without position embeddings).
#
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_67M.py

import os

exec(open(os.path.join(os.path.dirname(__file__), "train_gpt2.py")).read())  # the 81M recipe, then this plan

out_dir = "checks/krony-67M"
dim_1 = 64
dim_2 = 32
factors = 1
wandb_run_name = "krony-67M"
