"""Time the evaluation of a test split: joint + structure metrics of every video and aggregation.

    python benchmarks/bench_metrics.py [--videos 60] [--frames 90] [--points 30] [--joints 25]

Synthetic videos (GT random walks, predictions = noisy, permuted GT plus spurious points) go
through the same per-video path as ``jobs/evaluate.py`` (``kpray.evaluation.evaluate_video``:
normalisation, distances, video matching, per-frame matchings, structure) and
``kpray.metrics.aggregate``. Data generation is not timed; figures and file writing are not
included. Target (issue 4): 60 x T=90, P=30, J=25 in under 2 s.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from kpray.evaluation import evaluate_video
from kpray.metrics import aggregate


def make_videos(n, T, P, J, size=64, seed=0):
    rng = np.random.default_rng(seed)
    frames = np.broadcast_to(np.zeros((1, size, size, 3), np.uint8), (T, size, size, 3))
    videos = []
    for _ in range(n):
        gt = np.cumsum(rng.normal(0, 1.0, (T, J, 2)), axis=0) + rng.uniform(8, 56, (1, J, 2))
        src = rng.integers(0, J, P)
        pts = gt[:, src] + rng.normal(0, 3.0, (T, P, 2))
        adj = rng.random((P, P)) < 0.1
        gt_adj = np.zeros((J, J), bool)
        parent = [rng.integers(0, j) for j in range(1, J)]     # a random tree
        for j, p in zip(range(1, J), parent):
            gt_adj[j, p] = gt_adj[p, j] = True
        videos.append(({"frames": frames, "joints": gt.astype(np.float32),
                        "adjacency": gt_adj}, pts.astype(np.float32), adj | adj.T))
    return videos


def run(videos, eps=0.2):
    res = [evaluate_video(ep, pts, adj, eps) for ep, pts, adj in videos]
    return aggregate([r["joints"] for r in res]), aggregate([r["structure"] for r in res])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--points", type=int, default=30)
    ap.add_argument("--joints", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    videos = make_videos(args.videos, args.frames, args.points, args.joints)
    run(videos[:2])  # warm-up (imports, caches)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        joints, structure = run(videos)
        times.append(time.perf_counter() - t0)
    times = np.array(times)
    print(f"{args.videos} videos, T={args.frames}, P={args.points}, J={args.joints}: "
          f"median {np.median(times):.3f} s, min {times.min():.3f} s, max {times.max():.3f} s "
          f"over {args.repeats} runs ({platform.processor() or platform.machine()})")
    print(f"  sanity: dist {joints['dist']:.3f}, f1 {joints['f1']:.2f}, "
          f"consistency {joints['consistency']:.2f}, bcc {structure['bcc']:.2f}")


if __name__ == "__main__":
    main()
