"""Label-free criteria for choosing among AutoLink starts: which one predicts the keypoints' quality?

For each AutoLink checkpoint (run folder: its newest), measured on the same held-out *train*
frames (no labels used) with the same seeded masks, in eval mode:

- ``loss``: the reconstruction loss (the training objective) with the edge map as drawn;
- ``loss_no_edges``: the same with the edge map zeroed; ``edge_reliance`` = their ratio - 1;
- ``edge_response``: whether the edges brighten (> 0) or darken the reconstruction;
- ``keypoint_spread``: mean distance between an image's keypoints (normalised units).

Beside them, ``--metrics NAME=FILE`` adds a run's validation metrics (``--metrics-out`` JSON:
``val_joint_f1``, ``val_regression_error``), and the script prints the Spearman correlation of
each criterion with them over the runs.

    python benchmarks/autolink_start_criteria.py --data runs/ws3/data runs/ms3-i3 runs/ms3-i0 \
        --metrics runs/ms3-i3=runs/ms3-i3.json --metrics runs/ms3-i0=runs/ms3-i0.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def criteria(checkpoint: str, frames: torch.Tensor, seed: int = 0, chunk: int = 32) -> dict:
    """frames [N, 3, S, S] in [0, 1] -> the mean of each criterion over chunks of ``chunk``
    frames (masks seeded by ``seed`` + chunk index, so every checkpoint sees the same masks)."""
    from kpray.models.autolink import keypoint_spread
    from kpray.train.models import get_adapter
    from kpray.train.predict import load_checkpoint

    state, cfg = load_checkpoint(checkpoint)
    model = get_adapter("autolink").build(cfg)       # the run's own loss (laplacian: no weights)
    model.load_state_dict(state["model"])
    model.eval()
    rows = []
    with torch.no_grad():
        for i in range(0, len(frames), chunk):
            x = frames[i:i + chunk]
            r = model.edge_map_reliance(x, seed=seed + i)
            r["keypoint_spread"] = float(keypoint_spread(model.detect(x)[0]))
            rows.append(r)
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    out["step"] = int(state.get("step", -1))
    return out


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic) if ok.sum() >= 3 else math.nan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="AutoLink run or checkpoint folders")
    p.add_argument("--data", required=True, help="shard folder; its train split gives the frames")
    p.add_argument("--episodes", type=int, default=40, help="last N of the first 300 train episodes")
    p.add_argument("--frames", type=int, default=8, help="frames per episode (evenly spaced)")
    p.add_argument("--metrics", action="append", default=[], metavar="RUN=FILE",
                   help="a run's validation metrics JSON (--metrics-out), to correlate with")
    p.add_argument("--out", help="also write the table as JSON here")
    a = p.parse_args(argv)

    from kpray.train.data import load_episodes

    eps = load_episodes(a.data, "train", 300, a.frames)[-a.episodes:]
    if not eps:
        p.error(f"no train episodes in {a.data}")
    frames = torch.from_numpy(np.concatenate([e["frames"] for e in eps])).permute(0, 3, 1, 2)
    frames = frames.float() / 255
    metrics = {}
    for m in a.metrics:
        run, _, path = m.partition("=")
        with open(path) as f:
            metrics[os.path.normpath(run)] = json.load(f)
    table = []
    for run in a.runs:
        row = {"run": run, **criteria(run, frames)}
        v = metrics.get(os.path.normpath(run), {})
        row["val_joint_f1"] = v.get("val_joint_f1", math.nan)
        row["val_regression_error"] = v.get("val_regression_error", math.nan)
        table.append(row)
    keys = ["step", "loss", "loss_no_edges", "edge_reliance", "edge_response", "keypoint_spread",
            "val_joint_f1", "val_regression_error"]
    print(f"{len(frames)} train frames ({len(eps)} episodes)")
    print("| run | " + " | ".join(keys) + " |")
    print("|" + " --- |" * (len(keys) + 1))
    for r in table:
        print(f"| {r['run']} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
    if metrics:
        for target in ("val_joint_f1", "val_regression_error"):
            print(f"Spearman with {target}: " + ", ".join(
                f"{k} {spearman([r[k] for r in table], [r[target] for r in table]):+.2f}"
                for k in keys[1:6]))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(table, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
