"""How fast is the skeleton solver's greedy search (``psi_head="solver"``), and does the fast
search find exactly the links of the reference one? On a trained checkpoint's test videos:

    python benchmarks/solver_speed.py CHECKPOINT DATA [--episodes 8] [--threads 2]

Per video, the solver's ``solver_frames`` frames (as the model predicts a video's skeleton) are
searched twice: ``greedy_links`` (``LinkCosts``: a toggle scored from each point's two best links)
and ``greedy_links_by_objective`` (every candidate scored by ``structure_objective`` afresh).
Prints seconds per video for each, the speed-up and how many videos got identical links.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kpray.models import skeleton_solver as solver  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from structure_on_points import checkpoint_videos, video_maps  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="skeleton run folder or checkpoint_* folder")
    ap.add_argument("data", help="shard folder with test-*.tar")
    ap.add_argument("--episodes", type=int, default=8, help="first N test episodes (default 8)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    model, adapter, episodes = checkpoint_videos("solver_speed.py", args.checkpoint, args.data,
                                                 "test", args.episodes, args.threads)
    c = model.config
    maps, _ = video_maps(model, adapter, episodes)
    seconds = {"fast": 0.0, "reference": 0.0}
    same = 0
    for m in maps:
        m = m[solver.spread_frames(m.shape[0], c.solver_frames)].float()
        pts = solver.solver_points(c, m)
        found = {}
        for name, search in (("fast", solver.greedy_links), ("reference", solver.greedy_links_by_objective)):
            t0 = time.perf_counter()
            found[name] = search(c, m, pts)
            seconds[name] += time.perf_counter() - t0
        same += bool(torch.equal(found["fast"], found["reference"]))
    n = len(maps)
    frames = len(solver.spread_frames(maps[0].shape[0], c.solver_frames))
    print(f"P = {c.num_points}, {frames} frames per video, {n} videos, {args.threads} threads")
    print("| search | s per video | identical links |")
    print("| --- | --- | --- |")
    print(f"| reference (every candidate scored afresh) | {seconds['reference'] / n:.2f} | |")
    print(f"| fast (LinkCosts) | {seconds['fast'] / n:.2f} | {same} of {n} |")
    print(f"speed-up: {seconds['reference'] / max(seconds['fast'], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
