"""
Loss curves of train.py runs, from their metrics.jsonl, for users who do not use wandb.

    python plot.py checks/shakespeare_teacher checks/shakespeare_krony -o losses.png

Each RUN_DIR's val loss (points at its evaluations, joined) and training loss (a thin line) against the
iteration, one colour per run. Only the latest run id in a metrics.jsonl is drawn (a resumed run keeps its id).
study.py draws its results with plot_loss_panels (a panel of curves per question) and plot_frontier (quality
against size, every point labelled).
"""

import argparse
import json
import os
import textwrap

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


def robust_limits(values, fence=3.0):
    """(low, high) that hold the values but their outliers: the quartiles widened by `fence` interquartile ranges
    (Tukey's far-out fences), within the values, plus a margin. With a few evaluations per curve, percentiles
    near the ends would be the outliers themselves."""
    import numpy as np
    q1, q3 = np.percentile(values, [25, 75])
    low, high = max(min(values), q1 - fence * (q3 - q1)), min(max(values), q3 + fence * (q3 - q1))
    margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
    return float(low - margin), float(high + margin)


def plot_loss_panels(panels, path, title, reference=None):
    """panels: {panel title: {label: [(iter, loss), ...]}}, one small panel each, the `reference` label drawn
    black and dashed; writes a PNG to path. Each panel's y range is robust (robust_limits): a curve that leaves it
    is marked at the edge and named in the panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    figsize = (max(6.0, 0.5 + 3.2 * columns), max(4.0, 0.4 + 2.6 * rows))
    fig, axes = plt.subplots(rows, columns, figsize=figsize, dpi=100, squeeze=False)
    for ax, (panel_title, curves) in zip(axes.flat, panels.items()):
        ax.set_title(textwrap.fill(panel_title, 48), fontsize=8)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("val loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        curves = {label: points for label, points in curves.items() if points}
        if not curves:
            ax.text(0.5, 0.5, "no finished runs", transform=ax.transAxes, ha="center", fontsize=8)
            continue
        low, high = robust_limits([loss for points in curves.values() for _, loss in points])
        ax.set_ylim(low, high)
        clipped = []
        for i, (label, points) in enumerate(curves.items()):
            colour = "black" if label == reference else f"C{i % 10}"
            ax.plot(*zip(*points), color=colour, linestyle="--" if label == reference else "-", marker="o",
                    markersize=3, linewidth=1.2, label=label)
            above = [it for it, loss in points if loss > high]
            below = [it for it, loss in points if loss < low]
            for its, edge, marker in ((above, high, "^"), (below, low, "v")):
                if its:  # triangles on the edge where the curve leaves the panel
                    ax.plot(its, [edge] * len(its), linestyle="none", marker=marker, markersize=7, clip_on=False,
                            color=colour)
            if above or below:
                clipped.append(label)
        legend_top = 1.0
        if clipped:
            note = textwrap.fill("clipped: " + ", ".join(clipped), 40)
            ax.text(0.5, 0.97, note, transform=ax.transAxes, ha="center", va="top", fontsize=7,
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8))
            legend_top = 0.97 - 0.07 * (note.count("\n") + 1)  # below the note
        ax.legend(fontsize=6.5, loc="best", bbox_to_anchor=(0, 0, 1, legend_top))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pareto_front(points):
    """The (parameters, perplexity) points no other point beats with as few parameters or fewer: the lower-left
    envelope, by increasing parameters."""
    front = []
    for parameters, perplexity in sorted(points):
        if not front or perplexity < front[-1][1]:
            front.append((parameters, perplexity))
    return front


def place_labels(fig, ax, labels, fontsize=7):
    """Annotate each (text, x, y) beside its point, to the right (to the left near the right edge), moved up or
    down, or to the other side, until it overlaps no other label, point or the legend."""
    from matplotlib.transforms import Bbox
    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    pixels = [ax.transData.transform((x, y)) for _, x, y in labels]
    taken = [Bbox([[px - 6, py - 6], [px + 6, py + 6]]) for px, py in pixels]
    if ax.get_legend():
        taken.append(ax.get_legend().get_window_extent(renderer))
    shifts = [0, *(sign * k * (fontsize + 2) for k in range(1, 12) for sign in (1, -1))]  # in points
    for (text, x, y), (px, _) in sorted(zip(labels, pixels), key=lambda pair: pair[1][1]):
        right_first = px < area.x0 + 0.75 * area.width
        annotation = ax.annotate(text, (x, y), xytext=(8, 0), textcoords="offset points", fontsize=fontsize,
                                 va="center")
        for shift, right in ((shift, right) for shift in shifts for right in (right_first, not right_first)):
            annotation.set_position((8 if right else -8, shift))
            annotation.set_horizontalalignment("left" if right else "right")
            box = annotation.get_window_extent(renderer)
            if area.contains(box.x0, box.y0) and area.contains(box.x1, box.y1) and \
                    not any(box.overlaps(other) for other in taken):
                break  # else the last place tried: crowded, but drawn
        taken.append(box)
        if shift:  # a line from the moved label to its point
            ax.annotate("", (x, y), xytext=annotation.get_position(), textcoords="offset points",
                        arrowprops=dict(arrowstyle="-", color="grey", linewidth=0.5, shrinkA=0, shrinkB=4))


def plot_frontier(variants, teacher, path, title, reference=None):
    """Fine-tuned perplexity against parameters, every point labelled, with the Pareto front. variants: {name:
    (parameters, [perplexity per seed])}, the `reference` name (the control) drawn black as a diamond; teacher:
    (parameters, perplexity). Writes a PNG to path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    points, labels = [], []
    for label, (parameters, perplexities) in variants.items():
        marker, colour = ("D", "black") if label == reference else ("o", "C0")
        if perplexities:  # bars: the range over seeds
            mean = sum(perplexities) / len(perplexities)
            ax.errorbar(parameters / 1e6, mean, yerr=[[mean - min(perplexities)], [max(perplexities) - mean]],
                        fmt=marker, color=colour, capsize=3, markersize=5)
            points.append((parameters / 1e6, mean))
            labels.append((label, parameters / 1e6, mean))
    front = pareto_front(points)
    if front:
        ax.step(*zip(*front), where="post", color="C2", linewidth=1, zorder=0, label="Pareto front (fine-tuned)")
    ax.axhline(teacher[1], color="black", linestyle=":", linewidth=0.8, label="teacher, not fine-tuned")
    ax.plot(teacher[0] / 1e6, teacher[1], marker="*", markersize=12, color="grey", linestyle="none", zorder=1)
    labels.append(("teacher", teacher[0] / 1e6, teacher[1]))
    ax.set_xlabel("parameters (millions)")
    ax.set_yscale("log")  # a failed init lands far above the rest
    for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_formatter(StrMethodFormatter("{x:.0f}"))  # 300, not 3 x 10^2
    ax.set_ylabel("val perplexity after fine-tuning (log)")
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.15, y=0.08)  # room for the labels
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    place_labels(fig, ax, labels)  # after the layout: it places them in the final pixels
    fig.savefig(path)
    plt.close(fig)


FAMILY_COLOUR = {"kronecker": "C0", "lowrank": "C1", "allocated": "C4", "drop_blocks": "C2", "dense": "C3",
                 "monarch": "C5"}
INIT_MARKER = {"act": "o", "vl": "s"}  # any other init, or none: "^"
FRONTIER_CEILING = 1.5
FRONTIER_PANELS = (("parameters", 1e-6, "parameters without wpe (millions)"),
                   ("macs", 1e-6, "weight multiply-adds per token (millions)"),
                   ("step_ms", 1, "train step ms (forward, backward, AdamW)"),
                   ("decode_ms", 1, "decode ms/token (batch 1, KV cache)"))


def plot_family_frontier(points, teacher, path, title):
    """Four panels of fine-tuned perplexity, each with the Pareto front over every point: against parameters
    (without wpe), multiply-adds per token, train step time and decode time per token. points: [{"family",
    "init", "parameters", "macs", "step_ms", "decode_ms", "perplexities" (per seed), "distilled"}], a colour per
    family (FAMILY_COLOUR), a marker per init (INIT_MARKER), hollow when distilled; teacher: the same keys for the
    control (the teacher fine-tuned, a black diamond) and "perplexity", the teacher's own (a dotted line).
    Students beyond FRONTIER_CEILING times the teacher's perplexity are named in the title, not drawn. Writes a
    PNG to path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4), dpi=90, sharey=True, layout="constrained")
    axes = axes.flatten()
    means = {key: [] for key, _, _ in FRONTIER_PANELS}
    every_value, labelled = [teacher["perplexity"]], []
    for point in points + [dict(teacher, family="control")]:
        if not point["perplexities"]:
            continue
        values = point["perplexities"]
        mean = sum(values) / len(values)
        control = point["family"] == "control"
        marker = "D" if control else INIT_MARKER.get(point.get("init"), "^")
        colour = FAMILY_COLOUR.get(point["family"], "black")
        distilled = point.get("distilled", False)  # hollow: trained with the teacher's logits
        label = " ".join(part for part in (point["family"], point.get("init"), "+ KD" if distilled else "") if part)
        every_value += values
        labelled.append((label, mean))
        for ax, (key, scale, _) in zip(axes, FRONTIER_PANELS):
            ax.errorbar(point[key] * scale, mean, yerr=[[mean - min(values)], [max(values) - mean]], fmt=marker,
                        color=colour, markerfacecolor="white" if distilled else colour, capsize=2, markersize=5,
                        label=label)
            means[key].append((point[key] * scale, mean))
    for ax, (key, _, xlabel) in zip(axes, FRONTIER_PANELS):
        front = pareto_front(means[key])
        if front:
            ax.step(*zip(*front), where="post", color="grey", linewidth=1, zorder=0, label="Pareto front")
        ax.axhline(teacher["perplexity"], color="black", linestyle=":", linewidth=0.8, label="teacher")
        ax.set_xlabel(xlabel)
        ax.set_yscale("log")
        for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_formatter(StrMethodFormatter("{x:.1f}"))
        ax.grid(alpha=0.3)
    # a student far behind the rest (a dense one from scratch) would flatten them into one line
    shown = [value for value in every_value if value <= FRONTIER_CEILING * teacher["perplexity"]]
    low, high = min(shown) / 1.01, max(shown) * 1.01
    for ax in axes:
        ax.set_ylim(low, high)
    for ax in axes[::2]:
        ax.set_ylabel("val perplexity after fine-tuning (log)")
    above = [f"{label} {mean:.1f}" for label, mean in labelled if mean > high]
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one legend entry per family, init and distillation
    fig.legend(unique.values(), unique.keys(), fontsize=7, loc="outside right upper")
    fig.suptitle(title + (f"\nabove the charts: {', '.join(above)}" if above else ""), fontsize=10)
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
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise UsageError(f"-o {args.out}: no such folder {folder}")
    runs = {os.path.basename(os.path.normpath(d)) or d: read_metrics(d) for d in args.run_dirs}
    plot_losses(runs, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
