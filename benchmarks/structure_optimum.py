"""Which skeleton does the structure loss prefer? Free links fitted on ground-truth points.

    python benchmarks/structure_optimum.py shards/cartpoles [--points 16] [--episodes 6]

For each test episode, P points are placed on the ground-truth skeleton (its joints, the rest
spread along its links in proportion to their lengths), and the first half of the frames are
paired with the second half. ``kpray.losses.skeleton.fit_links`` then minimises near + sparse +
length over one free link probability per pair (no network, no image). A loss setting is sound
when the links it keeps are the ground-truth links and its joints the ground-truth joints. The
table compares the open choices (a link explaining its own endpoints or not, summed or averaged
sparsity terms, the exponent p, the joint weight) at the dataset's paper weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kpray.losses import skeleton as L  # noqa: E402
from kpray.ops.coords import to_normalised  # noqa: E402

# (label, fit_links keyword arguments, loss-weight overrides)
SETTINGS = [
    ("self-explained endpoints, both terms summed (literal)",
     dict(exclude_endpoints=False, links_normalise="sum", joints_normalise="sum"), {}),
    ("self-explained endpoints, links mean, joints sum (default)",
     dict(exclude_endpoints=False), {}),
    ("self-explained endpoints, links mean, joints sum, joint weight x10",
     dict(exclude_endpoints=False), {"sparse_joints": 10}),
    ("endpoints excluded, both terms summed",
     dict(exclude_endpoints=True, links_normalise="sum", joints_normalise="sum"), {}),
    ("endpoints excluded, both terms mean", dict(exclude_endpoints=True, joints_normalise="mean"), {}),
    ("endpoints excluded, links mean, joints sum", dict(exclude_endpoints=True), {}),
    ("endpoints excluded, links mean, joints sum, p = 1/3",
     dict(exclude_endpoints=True, sparse_p=1 / 3), {}),
    ("endpoints excluded, links mean, joints sum, joint weight x3", dict(exclude_endpoints=True),
     {"sparse_joints": 3}),
    ("endpoints excluded, links mean, joints sum, joint weight x10", dict(exclude_endpoints=True),
     {"sparse_joints": 10}),
    ("endpoints excluded, links mean, joints sum, joint weight x30", dict(exclude_endpoints=True),
     {"sparse_joints": 30}),
]


def skeleton_points(joints: np.ndarray, adjacency: np.ndarray, p: int) -> tuple[np.ndarray, list]:
    """joints [F, J, 2] pixels -> points [F, P, 2] (the J joints first, then P - J points spread
    along the links by length) and the links as (a, b) index pairs, a < b."""
    j = joints.shape[1]
    if p < j:
        raise SystemExit(f"structure_optimum.py: error: --points {p} < {j} ground-truth joints")
    edges = [(a, b) for a in range(j) for b in range(a + 1, j) if adjacency[a, b]]
    lengths = np.array([np.linalg.norm(joints[0, a] - joints[0, b]) for a, b in edges])
    alloc = np.zeros(len(edges), int)
    for _ in range(p - j):       # the next point goes where the gap between points is widest
        alloc[np.argmax(lengths / (alloc + 1))] += 1
    pts = [joints[:, k] for k in range(j)]
    for (a, b), n in zip(edges, alloc):
        for u in np.arange(1, n + 1) / (n + 1):
            pts.append((1 - u) * joints[:, a] + u * joints[:, b])
    return np.stack(pts, axis=1), edges


def score(links: torch.Tensor, edges: list, j: int) -> dict:
    on = {(a, b) for a in range(links.shape[0]) for b in range(a + 1, links.shape[0])
          if links[a, b] >= 0.5}
    joints = {x for e in on for x in e}
    return {"links": len(on), "true_links": len(edges), "links_on_truth": len(on & set(edges)),
            "joints": len(joints), "true_joints": j, "joints_on_truth": sum(x < j for x in joints)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="shard folder with test-*.tar (e.g. shards/cartpoles)")
    ap.add_argument("--preset", default="cartpoles", choices=sorted(L.PRESETS),
                    help="paper weight row (default: cartpoles)")
    ap.add_argument("--points", type=int, default=16, help="P (default: 16)")
    ap.add_argument("--episodes", type=int, default=6, help="test episodes (default: 6)")
    ap.add_argument("--frames", type=int, default=16, help="frames per episode (default: 16)")
    ap.add_argument("--steps", type=int, default=400, help="Adam steps per fit (default: 400)")
    args = ap.parse_args(argv)

    from kpray.train.data import load_episodes

    torch.manual_seed(0)
    eps = load_episodes(args.data, "test", args.episodes, args.frames)
    if not eps:
        raise SystemExit(f"structure_optimum.py: error: no test episodes under {args.data}")
    size = eps[0]["frames"].shape[1]
    cases = []
    for ep in eps:
        pts, edges = skeleton_points(ep["joints"], ep["adjacency"], args.points)
        pts = to_normalised(torch.tensor(pts, dtype=torch.float32), size)
        half = len(pts) // 2
        cases.append((pts[:half], pts[half:2 * half], edges, ep["joints"].shape[1]))

    base = L.PRESETS[args.preset]
    print(f"{args.preset} weights {base.as_dict()}, P = {args.points}, {len(eps)} test episodes; "
          "means per episode\n")
    print("| setting | links (true) | on true links | joints (true) | on true joints |")
    print("| --- | --- | --- | --- | --- |")
    for label, kwargs, overrides in SETTINGS:
        scale = {k: v * getattr(base, k) for k, v in overrides.items()}
        w = dataclasses.replace(base, **scale)
        rows = [score(L.fit_links(src, tgt, w, steps=args.steps, **kwargs), edges, j)
                for src, tgt, edges, j in cases]
        m = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
        print(f"| {label} | {m['links']:.1f} ({m['true_links']:.1f}) | {m['links_on_truth']:.1f} | "
              f"{m['joints']:.1f} ({m['true_joints']:.1f}) | {m['joints_on_truth']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
