"""Does the reliance a skeleton start shows early predict how well it ends? Reads finished
probes (``benchmarks/skeleton_probe.py`` folders, e.g. the ``probes/`` of a
``gpu_skeleton_screen.sh`` run trained with ``--set restart_below=0.0``, so that every start is
kept and its step-``restart_step`` reliance is printed), and gives per start the reliance at the
restart decision, its mean over the logged steps 400-600 and over the last 8 logs, against the
final test scores; then Spearman's rho of each reliance against joint F1 and the oracle choice's
joint F1, over all starts and over the kept ones (reliance >= --below), and a scatter plot.

    python benchmarks/start_outcomes.py PROBES_DIR [PROBES_DIR ...] [--below 0.25] [--out fig.png]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np


def decisions(log_text: str) -> dict[int, float]:
    """{step: reliance} of the restart decisions a probe printed ("[restart at ]step N: reliance
    R ..." in its log; Ray's copies of a line collapse into one)."""
    return {int(s): float(r) for s, r in re.findall(r"step (\d+): reliance ([0-9.]+)", log_text)}


def decision_reliance(log_text: str) -> float:
    """The reliance of a probe's first restart decision, NaN when it printed none."""
    found = decisions(log_text)
    return found[min(found)] if found else float("nan")


def window_mean(terms: list[dict], lo: int, hi: int) -> float:
    """Mean of the logged per-batch reliance over steps lo..hi (NaN when none were logged)."""
    vals = [r["reliance"] for r in terms if lo <= r["step"] <= hi and "reliance" in r]
    return float(np.mean(vals)) if vals else float("nan")


def read_probe(folder: str) -> dict | None:
    """One probe's row, or None when it has no comparison (it did not finish)."""
    try:
        c = json.load(open(os.path.join(folder, "comparison.json")))
        terms = [json.loads(line) for line in open(os.path.join(folder, "terms.jsonl"))]
        log = open(folder + ".log").read()
    except (OSError, ValueError):
        return None
    last = [r["reliance"] for r in terms[-8:] if "reliance" in r]
    return {"probe": os.path.basename(folder), "steps": c["steps"],
            "at decision": decision_reliance(log), "steps 400-600": window_mean(terms, 400, 600),
            "last logs": float(np.mean(last)) if last else float("nan"),
            "joint F1": c["rows"]["trained"]["joint_f1"],
            "oracle joint F1": c["rows"].get("oracle choice of points", {}).get("joint_f1", float("nan")),
            "Spearman": c.get("spearman", {}).get("trained", float("nan"))}


RELIANCES = ("at decision", "steps 400-600", "last logs")
OUTCOMES = ("joint F1", "oracle joint F1")


def correlations(rows: list[dict], below: float) -> list[tuple[str, str, int, float, float]]:
    """(reliance, outcome, kept starts, rho over all, rho over the kept) for each pair."""
    from scipy.stats import spearmanr

    kept = [r for r in rows if r["at decision"] >= below]
    out = []
    for rel in RELIANCES:
        for what in OUTCOMES:
            rho = [float(spearmanr([r[rel] for r in g], [r[what] for r in g])[0]) if len(g) > 2
                   else float("nan") for g in (rows, kept)]
            out.append((rel, what, len(kept), *rho))
    return out


def plot(rows: list[dict], below: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = [r["at decision"] for r in rows]
    ax.scatter(x, [r["joint F1"] for r in rows], label="trained: joint F1", color="C0")
    ax.scatter(x, [r["oracle joint F1"] for r in rows], label="oracle choice of its points",
               color="C1", marker="x")
    ax.axvline(below, color="grey", ls="--", lw=1, label=f"restart_below {below:g}")
    ax.axhline(0.60, color="C2", ls=":", lw=1, label="target joint F1 0.60")
    ax.set_xlabel("reliance at the restart decision (step 250)")
    ax.set_ylabel("test joint F1 at the end")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="folders holding probe folders (and their NAME.log)")
    ap.add_argument("--below", type=float, default=0.25, help="the restart threshold: starts "
                    "whose reliance at the decision is under it count as restarted")
    ap.add_argument("--out", default=None, help="scatter plot to write (PNG)")
    args = ap.parse_args(argv)
    folders = sorted(f.rstrip("/") for d in args.dirs for f in glob.glob(os.path.join(d, "*/")))
    rows = [r for r in map(read_probe, folders) if r is not None]
    if not rows:
        print(f"start_outcomes.py: error: no finished probes under {' '.join(args.dirs)}",
              file=sys.stderr)
        return 2
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    print("\n| reliance | outcome | rho, all starts | rho, kept starts |\n| --- | --- | --- | --- |")
    for rel, what, n, rho_all, rho_kept in correlations(rows, args.below):
        print(f"| {rel} | {what} | {rho_all:.2f} ({len(rows)}) | {rho_kept:.2f} ({n}) |")
    if args.out:
        plot(rows, args.below, args.out)
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
