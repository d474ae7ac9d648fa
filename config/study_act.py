# What init act (kron_decompose.py's --init act: factors fitted to what the blocks compute on
# calibration tokens) buys over the weight-fitting inits, on the character-level testbed of config/study_char.py:
# the same teacher, recipe, seeds and held-out characters, and the same out_dir, so the variants it shares with
# that study (81M f1, 95M vl, 95M vl_norm, MLP+attention, all init vl unless named) are not run again.
# init act is calibrated on 2^17 characters of train.bin (1,024 windows of 128) with 300 Adam steps of 2,048
# characters per factored sublayer at 1e-2, from factors balanced entry by entry (the screens in progress.md); its
# fitting time is in each init.pt's "init" entry.
# The allocated plans are kron_decompose.py --allocate's for the 81M f1 student's 610,864 parameters without wpe:
#   python kron_decompose.py --allocate --target 610864 --model checks/shakespeare_char_teacher/ckpt.pt
#   python kron_decompose.py --allocate --target 610864 --model checks/shakespeare_char_teacher/ckpt.pt \
#       --init act --calibration data/shakespeare_char/train.bin
# the first priced by the weight error, the second by the output error on the calibration characters; and across
# MLP and attention within the MLP+attention variant's 807,592:
#   python kron_decompose.py --allocate --target 807592 --matrices c_fc,c_proj,c_attn,attn_proj \
#       --model checks/shakespeare_char_teacher/ckpt.pt --init act --calibration data/shakespeare_char/train.bin
#
#   python study.py config/study_char.py && python study.py config/study_act.py

import os

exec(open(os.path.join(os.path.dirname(__file__), "study_char.py")).read())  # teacher, recipe, shapes

_shared = ("81M f1", "95M vl", "95M vl_norm", "MLP+attention")
variants = {name: variants[name] for name in _shared} | {
    "81M f1 vl_norm": {"plan": {**_mlp_81M, "factors": 1}, "init": "vl_norm"},
    "81M f1 act": {"plan": {**_mlp_81M, "factors": 1}, "init": "act"},
    "95M act": {"plan": _mlp_95M, "init": "act"},
    "MLP+attention act": {**variants["MLP+attention"], "init": "act"},
    # equal compute: act's fit of the 81M shape took 33.9 s here alone on the cores, 220 fine-tuning steps at
    # their 155 ms
    "81M f1 +220 steps": {"plan": {**_mlp_81M, "factors": 1}, "finetune": {"max_iters": 820, "lr_decay_iters": 820}},
    "81M f1 vl_norm +220 steps": {"plan": {**_mlp_81M, "factors": 1}, "init": "vl_norm",
                                  "finetune": {"max_iters": 820, "lr_decay_iters": 820}},
    "allocated vl": {"plan": {"kron": {
        "c_fc@0": (1, 512, 26), "c_fc@1": (1, 512, 19), "c_fc@2": (128, 1, 23), "c_fc@3": (1, 512, 24),
        "c_fc@4": (1, 512, 28), "c_fc@5": (128, 1, 30), "c_proj@0": (512, 1, 24), "c_proj@1": (512, 1, 23),
        "c_proj@2": (512, 1, 29), "c_proj@3": (512, 1, 28), "c_proj@4": (1, 128, 27), "c_proj@5": (512, 1, 25)}}},
    "allocated act": {"init": "act", "plan": {"kron": {
        "c_fc@0": (128, 1, 21), "c_fc@1": (128, 1, 9), "c_fc@2": (128, 1, 22), "c_fc@3": (1, 512, 27),
        "c_fc@4": (1, 512, 33), "c_fc@5": (1, 512, 38), "c_proj@0": (256, 1, 21), "c_proj@1": (32, 2, 2),
        "c_proj@2": (16, 16, 16), "c_proj@3": (1, 128, 53), "c_proj@4": (512, 1, 46), "c_proj@5": (2, 128, 31)}}},
    "allocated MLP+attention act": {"init": "act", "plan": {"kron": {
        "c_attn@0": (1, 384, 56), "c_attn@1": (1, 384, 27), "c_attn@2": (128, 1, 31), "c_attn@3": (1, 384, 51),
        "c_attn@4": (128, 1, 76), "attn_proj@0": (2, 128, 14), "attn_proj@1": (4, 128, 10),
        "attn_proj@2": (1, 128, 42), "c_fc@0": (1, 512, 43), "c_fc@1": (1, 512, 30), "c_fc@2": (128, 1, 47),
        "c_fc@3": (128, 1, 66), "c_proj@0": (256, 1, 41), "c_proj@1": (16, 16, 17)}}},
}
questions = {
    "6. Fitting the outputs or the weights, 81M shape?": ("81M f1", ["81M f1 vl_norm", "81M f1 act"]),
    "6b. The same at equal compute (act's fit as 220 more fine-tuning steps for vl and vl_norm)?":
        ("81M f1 act", ["81M f1 +220 steps", "81M f1 vl_norm +220 steps"]),
    "7. Fitting the outputs or the weights, 95M shape?": ("95M vl", ["95M vl_norm", "95M act"]),
    "8. Fitting the outputs with attention factored too?": ("MLP+attention", ["MLP+attention act"]),
    "9. A budget allocated across blocks, or the 81M shape everywhere (init vl)?": ("81M f1", ["allocated vl"]),
    "10. The same with init act": ("81M f1 act", ["allocated act"]),
    "11. A budget allocated across MLP and attention (init act), or the MLP+attention layout?":
        ("MLP+attention", ["MLP+attention act", "allocated MLP+attention act"]),
}
