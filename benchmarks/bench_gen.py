"""Data-generation scaling and storage.

  python benchmarks/bench_gen.py [--dataset cartpoles] [--episodes 32] [--workers 1 2]

1. Scaling: the same dataset rendered end to end by ``kpray.datagen.generate`` with each worker
   count (Ray already started; actor start-up included): wall time, frames/s, speed-up.
2. Storage: bytes per frame on disk (tar files / frames, everything included) for the default
   WebP shards, and the same episodes re-encoded with PNG and JPEG for comparison.
"""
import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kpray.data import encode_episode, iter_episodes  # noqa: E402
from kpray.datagen import GenSpec, _init_ray, generate  # noqa: E402


def tar_bytes(samples) -> int:
    """Size of a tar holding these samples (headers and padding included)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for k, v in s.items():
                if k.startswith("__"):
                    continue
                ti = tarfile.TarInfo(f"{s['__key__']}.{k}")
                ti.size = len(v)
                tar.addfile(ti, io.BytesIO(v))
    return len(buf.getvalue())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cartpoles")
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--storage-datasets", nargs="*", default=["cartpoles", "spiders", "swimmers", "mwhc"])
    a = p.parse_args()
    _init_ray()
    print(f"dataset={a.dataset} episodes={a.episodes}+1 frames={a.frames} size={a.size} cpus={os.cpu_count()}")
    print("| workers | wall s | episodes/s | frames/s | speed-up |")
    print("|---|---|---|---|---|")
    base = None
    for w in a.workers:
        tmp = tempfile.mkdtemp(prefix="kpray-bench-")
        spec = GenSpec(dataset=a.dataset, episodes=a.episodes, test_episodes=1, frames=a.frames,
                       size=a.size, shard_size=a.shard_size)
        t0 = time.perf_counter()
        generate(spec, tmp, workers=w, show_progress=False, preview=False)
        dt = time.perf_counter() - t0
        base = base or dt
        eps = a.episodes + 1
        print(f"| {w} | {dt:.1f} | {eps / dt:.2f} | {eps * a.frames / dt:.0f} | {base / dt:.2f}x |")
        shutil.rmtree(tmp)

    print("\n| dataset | webp (default) B/frame | png B/frame | jpg q90 B/frame | raw RGB B/frame |")
    print("|---|---|---|---|---|")
    for ds in a.storage_datasets:
        tmp = tempfile.mkdtemp(prefix="kpray-bench-")
        n = 8
        m = generate(GenSpec(dataset=ds, episodes=n, test_episodes=1, frames=a.frames, size=a.size,
                             shard_size=n), tmp, workers=min(2, max(a.workers)), show_progress=False,
                     preview=False)
        eps = list(iter_episodes(tmp, "train"))
        frames = n * a.frames
        alt = {c: tar_bytes(encode_episode(e, f"k{i}", frame_codec=c) for i, e in enumerate(eps)) / frames
               for c in ("png", "jpg")}
        webp = m["splits"]["train"]["bytes"] / frames
        print(f"| {ds} | {webp:.0f} | {alt['png']:.0f} | {alt['jpg']:.0f} | {a.size * a.size * 3} |")
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
