"""Does a training run learn? Loss curves and validation metrics against the untrained model,
read from the run's TensorBoard scalars.

    python jobs/train_skeleton.py --data shards/cartpoles --name learn-skeleton ...
    python benchmarks/learning_curves.py runs/learn-skeleton --out docs/figures/learn_skeleton.png

The training loop logs every loss term (``loss/*``) every ``--log-every`` steps and the
validation metrics (``val/*``) at step 0 (the untrained model) and at every checkpoint. This
script draws both against the step and prints a Markdown table: each validation metric at
step 0, at the last step, and its best value (``--markdown FILE`` also writes it).
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Metrics where smaller is better; every other val/* metric is better when larger.
LOWER_IS_BETTER = ("dist", "regression_error", "regression_error_plain", "time_s", "diff")
# Counts and scales: in the table, not on the plot of scores.
COUNTS = ("videos", "num_joints", "num_links", "diff", "alpha")
COUNT_PREFIXES = ("joints_", "links_")        # joints and links per body kind


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """RUN_DIR (STORAGE/NAME, or its logs/tensorboard) -> {tag: [(step, value), ...]} sorted by
    step; a step logged twice (a resumed run) keeps its last value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = run_dir if glob.glob(os.path.join(run_dir, "events.*")) else os.path.join(run_dir, "logs", "tensorboard")
    if not glob.glob(os.path.join(tb, "events.*")):
        raise SystemExit(f"learning_curves.py: error: no TensorBoard events under {tb}")
    acc = EventAccumulator(tb, size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        by_step = {e.step: e.value for e in acc.Scalars(tag)}
        out[tag] = sorted(by_step.items())
    return out


def summary_rows(scalars: dict) -> list[tuple[str, float, float, float, int]]:
    """(metric, at step 0, at the last step, best, last step) for every val/* tag."""
    rows = []
    for tag, series in sorted(scalars.items()):
        if not tag.startswith("val/") or tag.endswith("time_s"):
            continue
        name = tag[4:]
        values = [v for _, v in series if math.isfinite(v)]
        if not values:
            continue
        first = dict(series).get(0, math.nan)
        low = name.endswith(LOWER_IS_BETTER)
        rows.append((name, first, series[-1][1], min(values) if low else max(values), series[-1][0]))
    return rows


def plot(scalars: dict, title: str, path: str) -> None:
    losses = {t: s for t, s in scalars.items() if t.startswith("loss/")}
    vals = {t: s for t, s in scalars.items() if t.startswith("val/") and not t.endswith("time_s")
            and t[4:] not in COUNTS and not t[4:].startswith(COUNT_PREFIXES)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for tag, s in sorted(losses.items()):
        steps, v = zip(*s)
        if min(v) > 0:
            ax.plot(steps, v, label=tag[5:], lw=1)
        else:   # terms that are negative by construction (near, contiguity): magnitude, dashed
            ax.plot(steps, [abs(x) for x in v], "--", label=f"|{tag[5:]}|", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training loss terms (unweighted)")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    for tag, s in sorted(vals.items()):
        steps, v = zip(*s)
        ax.plot(steps, v, "o-", ms=3, label=tag[4:])
    ax.set_xlabel("step (0: untrained)")
    ax.set_title("validation metrics (counts in the table)")
    ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows, title: str) -> str:
    lines = [f"**{title}**", "", "| metric | untrained (step 0) | last | best | last step |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {n} | {a:.4g} | {b:.4g} | {c:.4g} | {s} |" for n, a, b, c, s in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder STORAGE/NAME of a training job")
    ap.add_argument("--out", help="PNG to write (default RUN/learning_curves.png)")
    ap.add_argument("--title", help="figure title (default: the run's name)")
    ap.add_argument("--markdown", help="also write the table to this file")
    a = ap.parse_args(argv)
    scalars = read_scalars(a.run)
    title = a.title or os.path.basename(os.path.normpath(a.run))
    out = a.out or os.path.join(a.run, "learning_curves.png")
    plot(scalars, title, out)
    table = markdown(summary_rows(scalars), title)
    print(table)
    print(f"figure: {out}")
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
