# The paper's open questions, answered on the embedded Shakespeare corpus: 14 variants of one teacher
# (config/train_shakespeare_teacher.py: 6 layers, n_embd 128, 7.64M parameters of which 6.43M are the tied
# embedding), each fine-tuned for 30 steps of 1,024 tokens with seeds 1, 2, 3 and scored by perplexity.py on
# the first 100,000 tokens of val.bin. The paper's shapes are scaled from n_embd 768 to 128 (hidden 3072 to 512).
#
# The variants and questions are config/study_char.py's (the same shapes: both teachers are 128 wide), plus the
# one question only this teacher can answer: factoring its large tied embedding. The recipe (`finetune`, below)
# re-warms the learning rate to 1e-3 for 30 steps.
#
#   python data/shakespeare/prepare.py && python study.py config/study_paper_questions.py

import os

exec(open(os.path.join(os.path.dirname(__file__), "study_char.py")).read())  # its variants and questions

out_dir = "studies/paper_questions"
teacher_config = "config/train_shakespeare_teacher.py"
data_dir = "data/shakespeare"
finetune = {"block_size": 128, "batch_size": 8, "gradient_accumulation_steps": 1, "max_iters": 30,
            "lr_decay_iters": 30, "warmup_iters": 3, "learning_rate": 1e-3, "min_lr": 1e-4, "eval_interval": 10,
            "eval_iters": 2, "log_interval": 10, "compile": False}
# c_fc, c_attn and the embedding with 31 of its 32 possible products: about 81M f2's saving
variants["MLP+attention+embedding"] = {"plan": {"kron": {"c_fc": (128, 128, 3), "c_attn": (128, 128, 2),
                                                         "wte": (50257, 4, 31)}}}
questions["4. At equal size, where should the factors go?"] = ("81M f2", ["MLP+attention", "MLP+attention+embedding",
                                                                          "odd blocks"])
