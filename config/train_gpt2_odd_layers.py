# A TQCompressedGPT2-like layout: the MLPs of the odd blocks (1, 3, ..., 11) only, each matrix a sum of 4
# Kronecker products with c_fc's A 384x768 and B 2x4 (c_proj's A 768x384, B 4x2), the even blocks and the
# tied embedding left dense. Initialised from gpt2 by Van Loan and trained with config/train_gpt2.py's recipe,
# so that it compares with the 81M model on equal terms (same data, same evaluation).
# Parameters: 110,284,416 (109,497,984 without position embeddings).
#
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_odd_layers.py

import os

exec(open(os.path.join(os.path.dirname(__file__), "train_gpt2.py")).read())  # the 81M recipe, then this plan

out_dir = "checks/krony-odd-layers"
dim_1 = 384
dim_2 = 768
factors = 4
kron_layers = "odd"
wandb_run_name = "krony-odd-layers"
