"""
The whole krony pipeline, end to end, on the embedded Shakespeare corpus: a few minutes on a laptop CPU.

    python quickstart.py                  # trains a small dense GPT-2 teacher here first
    python quickstart.py --teacher gpt2   # the real GPT-2 as the teacher (downloads it; a GPU helps)

Each step is the real script with its real arguments, printed before it runs so that it can be copied:
  1. prepare the corpus         data/shakespeare/prepare.py
  2. train a dense teacher      train.py config/train_shakespeare.py   (skipped with --teacher)
  3. compress it                kron_decompose.py n_embd n_embd 1: every MLP matrix as one Kronecker
                                product (the paper's 81M shape), a quarter of the teacher's MLP weights
  4. fine-tune the compression  train.py config/finetune_shakespeare.py
  5. export it                  krony_to_gpt.py: a standard Hugging Face GPT-2 directory
  6. score all three models     perplexity.py on the held-out works (data/shakespeare/val.bin)
It ends with a table of parameters, validation perplexity and training time per step, and the runs' loss
curves in losses.png (drawn by plot.py). Everything goes under --out_dir (default checks/quickstart).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from checkpoints import load_model, load_model_config
from common import exit_on_usage_error
from plot import plot_losses, read_metrics

ROOT = os.path.dirname(os.path.abspath(__file__))
VAL_TOKENS = os.path.join("data", "shakespeare", "val.bin")
RECOVERY_GOAL = 1.3  # fine-tuning should bring the compressed model within 1.3x the teacher's perplexity


def run(step, args):
    """Run `python args...` from the repository root, streaming its output; stop the quickstart if it fails."""
    print(f"\n[{step}] python {shlex.join(args)}", flush=True)
    start = time.time()
    if subprocess.run([sys.executable, *args], cwd=ROOT).returncode != 0:
        print(f"quickstart.py: step {step} failed (its output is above); rerun its command to debug it",
              file=sys.stderr)
        sys.exit(1)
    print(f"[{step}] done in {time.time() - start:.0f} s", flush=True)


def ms_per_iter(out_dir):
    """Mean training time per iteration logged in out_dir/metrics.jsonl, the first (warm-up) log left out."""
    with open(os.path.join(ROOT, out_dir, "metrics.jsonl")) as f:
        times = [r["ms_per_iter"] for r in map(json.loads, f) if "ms_per_iter" in r]
    steady = times[1:] or times
    return sum(steady) / len(steady)


def parse_args():
    """The command line, checked before any step runs: a teacher that cannot be opened fails now, in one line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="start from this dense GPT-2 (hub name, Hugging Face directory or "
                                          "checkpoint) instead of training one")
    parser.add_argument("--out_dir", default=os.path.join("checks", "quickstart"))
    parser.add_argument("--teacher_iters", type=int, default=300)
    parser.add_argument("--finetune_iters", type=int, default=150)
    parser.add_argument("--eval_tokens", type=int, default=16384, help="held-out tokens each model is scored on")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps, or auto")
    args = parser.parse_args()
    if min(args.teacher_iters, args.finetune_iters) < 1 or args.eval_tokens < 2:
        parser.error("--teacher_iters and --finetune_iters must be at least 1, --eval_tokens at least 2")
    if args.teacher is not None:
        load_model_config(args.teacher, what=f"--teacher {args.teacher}")
    return args


def train_teacher(args):
    """Step 2: a small dense GPT-2 trained on the corpus; the path of its checkpoint."""
    teacher_dir = os.path.join(args.out_dir, "teacher")
    iters = args.teacher_iters
    run("2/6 train a dense teacher", [
        "train.py", os.path.join("config", "train_shakespeare.py"), f"--out_dir={teacher_dir}",
        f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--eval_interval={iters}", "--overwrite=True",
        f"--device={args.device}"])
    return os.path.join(teacher_dir, "ckpt.pt")


def compress_finetune_export(args, teacher, config):
    """Steps 3 to 5 on a teacher of `config`: (the compressed model at init, fine-tuned, exported)."""
    out = args.out_dir
    # The model's width decides the shape: dim_1 = dim_2 = n_embd is the paper's 81M shape (c_fc's A is
    # n_embd x n_embd, B is 1 x 4).
    init_path = os.path.join(out, "krony_init.pt")
    run("3/6 compress the teacher", [
        "kron_decompose.py", str(config.n_embd), str(config.n_embd), "1", "--model", teacher, "--init", "vl",
        "--out", init_path, "--overwrite"])

    krony_dir = os.path.join(out, "krony")
    iters = args.finetune_iters
    run("4/6 fine-tune the compressed model", [
        "train.py", os.path.join("config", "finetune_shakespeare.py"), f"--init_from={init_path}",
        f"--out_dir={krony_dir}", f"--block_size={config.block_size}", f"--max_iters={iters}",
        f"--lr_decay_iters={iters}", f"--eval_interval={iters}", "--overwrite=True", f"--device={args.device}"])
    krony_ckpt = os.path.join(krony_dir, "ckpt.pt")

    export_dir = os.path.join(out, "krony_hf")
    run("5/6 export to Hugging Face", ["krony_to_gpt.py", krony_ckpt, export_dir, "--overwrite"])
    return init_path, krony_ckpt, export_dir


def score(args, models):
    """Step 6: {name: perplexity} of each model scored by perplexity.py on the first --eval_tokens held-out tokens."""
    perplexities = {}
    for i, (name, scored, _) in enumerate(models):
        results = os.path.join(args.out_dir, f"perplexity_{i}.json")
        ppl_device = [] if args.device == "auto" else [f"--device={args.device}"]
        run(f"6/6 score the {name} model", ["perplexity.py", scored, VAL_TOKENS, f"--max_tokens={args.eval_tokens}",
                                            f"--out={results}", *ppl_device])
        with open(os.path.join(ROOT, results)) as f:
            perplexities[name] = json.load(f)["datasets"][VAL_TOKENS]["perplexity"]
    return perplexities


def print_table(models, teacher, teacher_model, perplexities, step_ms):
    """The markdown table of parameters, perplexity and training time per step, and how far fine-tuning got."""
    print("| model | parameters | MLP parameters | val perplexity | train ms/step |")
    print("| --- | --- | --- | --- | --- |")
    for name, _, counted in models:
        model = teacher_model if counted == teacher else load_model(counted)
        ms = f"{step_ms[name]:.0f}" if name in step_ms else "-"
        print(f"| {name} | {model.get_num_params(non_embedding=False):,} | {model.get_num_params_by_part()['mlp']:,} "
              f"| {perplexities[name]:.2f} | {ms} |")
    ratio = perplexities["compressed + fine-tuned"] / perplexities["teacher (dense)"]
    at_init = perplexities["compressed at init"] / perplexities["teacher (dense)"]
    print(f"\ncompressed + fine-tuned perplexity is {ratio:.2f}x the teacher's (at init: {at_init:.2f}x); goal: "
          f"within {RECOVERY_GOAL}x, {'met' if ratio <= RECOVERY_GOAL else 'NOT met'}")


@exit_on_usage_error("quickstart.py")
def main():
    args = parse_args()
    out = args.out_dir
    start = time.time()
    run("1/6 prepare the corpus", [os.path.join("data", "shakespeare", "prepare.py")])
    teacher = train_teacher(args) if args.teacher is None else args.teacher
    teacher_model = load_model(teacher)
    init_path, krony_ckpt, export_dir = compress_finetune_export(args, teacher, teacher_model.config)

    # (name, what perplexity.py scores, what the parameters are counted on): the fine-tuned model is scored
    # as exported, so the export is checked too, and counted as trained, before its factors are multiplied out.
    models = [("teacher (dense)", teacher, teacher), ("compressed at init", init_path, init_path),
              ("compressed + fine-tuned", export_dir, krony_ckpt)]
    perplexities = score(args, models)
    step_ms = {"compressed + fine-tuned": ms_per_iter(os.path.dirname(krony_ckpt))}
    if args.teacher is None:
        step_ms["teacher (dense)"] = ms_per_iter(os.path.join(out, "teacher"))
    print(f"\nquickstart: teacher {teacher}, held-out text {VAL_TOKENS} (first {args.eval_tokens:,} tokens, windows "
          f"of {teacher_model.config.block_size}), {time.time() - start:.0f} s in all\n")
    print_table(models, teacher, teacher_model, perplexities, step_ms)

    runs = {name: read_metrics(os.path.join(ROOT, out, run_dir)) for name, run_dir in
            (("teacher (dense)", "teacher"), ("compressed + fine-tuned", "krony")) if name in step_ms}
    plot_losses(runs, os.path.join(ROOT, out, "losses.png"), "quickstart: loss against iteration")
    print(f"loss curves: {os.path.join(out, 'losses.png')}")


if __name__ == "__main__":
    main()
