"""Data-generation scaling and storage: the same dataset rendered with 1 and with N Ray workers.

  python benchmarks/bench_gen.py [--dataset cartpoles] [--episodes 16] [--workers 1 2]

Prints, per worker count: wall time, episodes/s and frames/s end to end (Ray start excluded,
actor start-up included), the speed-up over 1 worker, and bytes per frame on disk (PNG and JPEG).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kpray.datagen import GenSpec, _init_ray, generate  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cartpoles")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    _init_ray()
    rows, base = [], None
    for codec in ("png", "jpg"):
        for w in (a.workers if codec == "png" else a.workers[:1]):
            tmp = tempfile.mkdtemp(prefix="kpray-bench-")
            spec = GenSpec(dataset=a.dataset, episodes=a.episodes, test_episodes=1, frames=a.frames,
                           size=a.size, shard_size=a.shard_size, frame_codec=codec)
            t0 = time.perf_counter()
            m = generate(spec, tmp, workers=w, show_progress=False, preview=False)
            dt = time.perf_counter() - t0
            eps = a.episodes + 1
            if codec == "png" and base is None:
                base = dt
            rows.append((codec, w, dt, eps / dt, eps * a.frames / dt, base / dt, m["bytes_per_frame"]))
            shutil.rmtree(tmp)
    print(f"dataset={a.dataset} episodes={a.episodes}+1 frames={a.frames} size={a.size} cpus={os.cpu_count()}")
    print("| codec | workers | wall s | episodes/s | frames/s | speed-up | bytes/frame |")
    print("|---|---|---|---|---|---|---|")
    for codec, w, dt, e, f, s, b in rows:
        print(f"| {codec} | {w} | {dt:.1f} | {e:.2f} | {f:.0f} | {s:.2f}x | {b:.0f} |")


if __name__ == "__main__":
    main()
