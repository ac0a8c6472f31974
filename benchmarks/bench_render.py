"""Rendering throughput of ``sim.render_episode``: frames/s per process (RGB + segmentation +
ground truth + physics, everything an episode costs), for quality "fast" and "full".

    python benchmarks/bench_render.py --episodes 6 --frames 90 --size 64 --dataset spiders

Episodes are indices 0..N-1 of the dataset's train split (seed 0); the first episode of each
quality is a warm-up (GL context creation, imports) and is not timed.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sim import DATASET_NAMES, render_episode  # noqa: E402


def bench(dataset: str, quality: str, episodes: int, frames: int, size: int) -> tuple[float, list]:
    render_episode(dataset, "train", 0, 10_000, frames=8, size=size, quality=quality)  # warm-up
    times, bodies = [], []
    for i in range(episodes):
        t0 = time.perf_counter()
        ep = render_episode(dataset, "train", 0, i, frames=frames, size=size, quality=quality)
        times.append(time.perf_counter() - t0)
        bodies.append(ep["meta"]["body"])
    return episodes * frames / sum(times), bodies


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--quality", choices=("fast", "full", "both"), default="both")
    ap.add_argument("--dataset", default="all",
                    help=f"a dataset name ({', '.join(DATASET_NAMES)}, or e.g. spider:5) or 'all' "
                         "for spiders, cartpoles, swimmers and mwhc")
    args = ap.parse_args(argv)
    datasets = ["spiders", "cartpoles", "swimmers", "mwhc"] if args.dataset == "all" else [args.dataset]
    qualities = ["fast", "full"] if args.quality == "both" else [args.quality]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"MUJOCO_GL={os.environ['MUJOCO_GL']}, {args.episodes} episodes x {args.frames} frames, "
          f"{args.size}x{args.size}, RGB + segmentation, one process")
    print("| dataset | quality | frames/s | bodies |")
    print("| --- | --- | --- | --- |")
    for ds in datasets:
        for q in qualities:
            fps, bodies = bench(ds, q, args.episodes, args.frames, args.size)
            print(f"| {ds} | {q} | {fps:.0f} | {', '.join(bodies)} |", flush=True)


if __name__ == "__main__":
    main()
