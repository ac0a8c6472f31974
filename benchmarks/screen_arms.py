"""A screen's probes grouped by arm, against issue 11's targets: per arm the mean and range of
each test metric, how many starts meet each target and how many meet all, and a strip plot.

    python benchmarks/screen_arms.py PROBES_DIR [PROBES_DIR ...] [--out fig.png]

Reads the ``comparison.json`` of each finished probe (``benchmarks/skeleton_probe.py`` folders,
e.g. the ``probes/`` of ``gpu_skeleton_screen.sh``). A probe's arm is its name without the
data and seed parts (``p4-s20-base`` -> ``base``, ``long-p5-s21`` -> ``long``): one start of
one change is not evidence (a kept start of the recipe ends anywhere in joint F1 0.37-0.65), so
a change is screened over several starts and read per arm.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys

import numpy as np

# issue 11's targets: (comparison.json field, label, the test a start passes)
TARGETS = (
    ("joint_f1", "joint F1 >= 0.60", lambda t, const: t["joint_f1"] >= 0.60),
    ("dist", "distance <= 0.15", lambda t, const: t["dist"] <= 0.15),
    ("diff", "count diff <= 1.5", lambda t, const: t["diff"] <= 1.5),
    ("bcc_defined", "Bcc >= 0.75 and above the constant",
     lambda t, const: t["bcc_defined"] >= 0.75 and t["bcc_defined"] > const["bcc_defined"]),
    ("struct_f1", "structure F1 >= 0.60", lambda t, const: t["struct_f1"] >= 0.60),
    ("spearman", "Spearman >= 0.5", lambda t, const: t["spearman"] >= 0.5),
)
LINES = {"joint_f1": 0.60, "dist": 0.15, "diff": 1.5, "bcc_defined": 0.75, "struct_f1": 0.60,
         "spearman": 0.5}


def arm_of(name: str) -> str:
    """A probe's name without its data (``p4``) and seed (``s20``) parts."""
    kept = [t for t in name.split("-") if not re.fullmatch(r"[ps]\d+", t)]
    return "-".join(kept) or name


def read_probe(folder: str) -> dict | None:
    """{probe, arm, steps, trained {metric: value, spearman}, constant {...}}; None when the
    probe has no comparison (it did not finish)."""
    try:
        c = json.load(open(os.path.join(folder, "comparison.json")))
    except (OSError, ValueError):
        return None
    name = os.path.basename(folder.rstrip("/"))
    trained = dict(c["rows"]["trained"], spearman=c.get("spearman", {}).get("trained", math.nan))
    return {"probe": name, "arm": arm_of(name), "steps": c["steps"], "trained": trained,
            "constant": c["rows"]["best constant skeleton"]}


def meets(probe: dict) -> dict[str, bool]:
    """{target label: met} for one probe (NaN meets nothing)."""
    return {label: bool(test(probe["trained"], probe["constant"])) for _, label, test in TARGETS}


def summary(probes: list[dict]) -> dict[str, dict]:
    """{arm: {"n", "steps" (mean), "mean" {metric}, "min" {metric}, "max" {metric}, "met" {target:
    starts}, "all" (starts meeting every target)}}, arms in order of first appearance."""
    out: dict[str, dict] = {}
    for arm in dict.fromkeys(p["arm"] for p in probes):
        group = [p for p in probes if p["arm"] == arm]
        values = {key: np.array([p["trained"][key] for p in group], float) for key, _, _ in TARGETS}
        passed = [meets(p) for p in group]
        out[arm] = {"n": len(group), "steps": float(np.mean([p["steps"] for p in group])),
                    "mean": {k: float(np.nanmean(v)) for k, v in values.items()},
                    "min": {k: float(np.nanmin(v)) for k, v in values.items()},
                    "max": {k: float(np.nanmax(v)) for k, v in values.items()},
                    "met": {label: sum(m[label] for m in passed) for _, label, _ in TARGETS},
                    "all": sum(all(m.values()) for m in passed)}
    return out


def plot(probes: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(p["arm"] for p in probes))
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(2.3 * len(TARGETS), 3.2))
    rng = np.random.default_rng(0)           # jitter only
    for ax, (key, label, _) in zip(axes, TARGETS):
        for i, arm in enumerate(arms):
            ys = [p["trained"][key] for p in probes if p["arm"] == arm]
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(ys)), ys, s=14, color=f"C{i}")
            ax.plot([i - 0.25, i + 0.25], [np.nanmean(ys)] * 2, color="k", lw=1.5)
        ax.axhline(LINES[key], color="grey", ls="--", lw=1)
        ax.set_xticks(range(len(arms)), arms, rotation=30, fontsize=8)
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="folders holding probe folders")
    ap.add_argument("--out", default=None, help="strip plot to write (PNG)")
    args = ap.parse_args(argv)
    folders = sorted(f for d in args.dirs for f in glob.glob(os.path.join(d, "*/")))
    probes = [p for p in map(read_probe, folders) if p is not None]
    if not probes:
        print(f"screen_arms.py: error: no finished probes under {' '.join(args.dirs)}",
              file=sys.stderr)
        return 2
    labels = [label for _, label, _ in TARGETS]
    print("| arm | starts | steps | " + " | ".join(f"{k}: mean (range), met" for k, _, _ in TARGETS)
          + " | all met |\n|" + " --- |" * (len(TARGETS) + 4))
    for arm, s in summary(probes).items():
        cells = [f"{s['mean'][k]:.3f} ({s['min'][k]:.2f} to {s['max'][k]:.2f}), {s['met'][lab]}"
                 for (k, _, _), lab in zip(TARGETS, labels)]
        print(f"| {arm} | {s['n']} | {s['steps']:.0f} | " + " | ".join(cells) + f" | {s['all']} |")
    if args.out:
        plot(probes, args.out)
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
