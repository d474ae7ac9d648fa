"""
Loss curves of train.py runs, from their metrics.jsonl, for users who do not use wandb.

    python plot.py checks/shakespeare_teacher checks/shakespeare_krony -o losses.png

Each RUN_DIR's val loss (points at its evaluations, joined) and training loss (a thin line) against the
iteration, one colour per run. Only the latest run id in a metrics.jsonl is drawn (a resumed run keeps its id).
"""

import argparse
import json
import os

from common import UsageError, exit_on_usage_error


def read_metrics(run_dir):
    """The records of the latest run in run_dir/metrics.jsonl."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UsageError(f"{path} not found: give train.py out_dir folders")
    with open(path) as f:
        try:
            records = [json.loads(line) for line in f if line.strip()]
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} is not JSON lines ({e})") from None
    if not records:
        raise UsageError(f"{path} is empty")
    last_run = records[-1].get("run")
    return [r for r in records if r.get("run") == last_run]


def plot_losses(runs, path, title="loss against iteration"):
    """runs: {label: records}; writes a PNG to path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for i, (label, records) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        steps = [(r["iter"], r["loss"]) for r in records if "loss" in r]
        evals = [(r["iter"], r["val_loss"]) for r in records if "val_loss" in r]
        if steps:
            ax.plot(*zip(*steps), color=colour, alpha=0.35, linewidth=0.8)
        if evals:  # past ten runs the colours repeat: the markers tell them apart
            ax.plot(*zip(*evals), color=colour, marker="os^D"[i // 10 % 4], markersize=3, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (val: points; train: thin line)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@exit_on_usage_error("plot.py")
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="train.py out_dir folders")
    parser.add_argument("-o", "--out", default="losses.png", help="the PNG to write (default losses.png)")
    args = parser.parse_args(argv)
    if not args.out.endswith(".png"):
        raise UsageError(f"-o {args.out}: give a .png file name")
    runs = {os.path.basename(os.path.normpath(d)) or d: read_metrics(d) for d in args.run_dirs}
    plot_losses(runs, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
