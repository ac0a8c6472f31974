"""Do a trained skeleton model's points keep their joint over a video? Per kind of body:

    python benchmarks/point_identity.py CHECKPOINT DATA [--split train] [--episodes 40] \\
        [--radius 4] [--ignore-joint 0]

pi's points (as the model reads them) on every frame of each video are labelled with the true
joint they sit on (nearest, within ``--radius`` pixels; ``kpray.metrics.joint_switches``). For
the points on a joint in at least a quarter of the frames: the fraction of those frames spent on
their most frequent joint, the joints they visit, and how often the joint changes between
consecutive frames. The per-video skeleton (one link matrix for all frames, as the paper's
protocol uses one frame's) can only be right at joints whose point keeps them.
``--ignore-joint`` leaves out joints that a pile of points sits on (the cartpoles' first hinge).
``--track`` first relabels each video's points along their tracks (``tracked``), as
``solver_track_points`` does before the solver: a jump that is two points trading joints then
disappears.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kpray.metrics import joint_switches  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from structure_on_points import checkpoint_videos, tracked, video_maps  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="skeleton run folder or checkpoint_* folder")
    ap.add_argument("data", help="shard folder")
    ap.add_argument("--split", default="test", choices=("train", "test"))
    ap.add_argument("--episodes", type=int, default=40, help="first N episodes (default 40)")
    ap.add_argument("--radius", type=float, default=4.0, help="pixels (default 4)")
    ap.add_argument("--ignore-joint", type=int, action="append", default=[],
                    help="a joint index to leave out (repeatable)")
    ap.add_argument("--track", action="store_true",
                    help="relabel each video's points along their tracks first (track_order)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    model, adapter, episodes = checkpoint_videos("point_identity.py", args.checkpoint, args.data,
                                                 args.split, args.episodes, args.threads)
    _, tracks = video_maps(model, adapter, episodes)
    if args.track:
        tracks = [tracked(t)[1] for t in tracks]
    rows, videos = defaultdict(list), defaultdict(int)
    for ep, tr in zip(episodes, tracks):
        body = str(ep.get("meta", {}).get("body", "?"))
        videos[body] += 1
        rows[body].append(joint_switches(tr, np.asarray(ep["joints"], float), args.radius,
                                         ignore=args.ignore_joint))
    print(f"{sum(videos.values())} {args.split} videos, radius {args.radius:g} px, "
          f"joints left out: {args.ignore_joint or 'none'}"
          f"{', points relabelled along tracks' if args.track else ''}")
    print("| body | videos | points on a joint | frames on a joint | on its most frequent joint "
          "| joints visited | joint changes per consecutive frame |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for body in sorted(rows):
        a = np.concatenate(rows[body])
        if len(a) == 0:
            print(f"| {body} | {videos[body]} | 0 | | | | |")
            continue
        m = a.mean(axis=0)
        print(f"| {body} | {videos[body]} | {len(a) / videos[body]:.1f} | {m[0]:.2f} | {m[1]:.2f} "
              f"| {m[2]:.1f} | {m[3]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
