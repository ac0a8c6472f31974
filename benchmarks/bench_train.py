"""Training throughput (images/s) of both models with 1 and 2 DDP workers, through the real
Ray Train path (``kpray.train.build_trainer``), and how long the ranks wait for data.

    python benchmarks/bench_train.py                       # both models, 1 and 2 CPU workers
    python benchmarks/bench_train.py --models skeleton --workers 1 2 4 --gpu

Each configuration runs ``--steps`` warm-up steps (worker start, loader fill: not measured; the
loop checkpoints and resets its timers there), then ``--steps`` measured steps; the figure is the loop's own ``images_per_s`` over the measured
steps (frames entering the model per second, all ranks together: a skeleton-model pair is 2
images), and ``data_wait_frac`` is the fraction of step time spent blocked on ``next(loader)``.
The data are real renders: a small Cartpoles set is generated under ``--data`` when missing.
AutoLink's LPIPS backbone is random here unless ImageNet weights are installed (same cost).
Prints a Markdown table (``--markdown FILE`` also writes it).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ensure_data(path: str) -> str:
    if os.path.exists(os.path.join(path, "manifest.json")):
        return path
    from kpray.datagen import GenSpec, generate

    generate(GenSpec(dataset="cartpoles", episodes=40, test_episodes=4, frames=32, size=64,
                     shard_size=10), path, workers=2, show_progress=False)
    return path


def bench_one(model: str, workers: int, batch: int, data: str, steps: int, gpu: bool,
              model_config: dict, loader_workers: int, cpus_per_worker: float) -> dict:
    from kpray.train import TrainConfig, build_trainer, fit, resolve

    with tempfile.TemporaryDirectory() as storage:
        cfg = resolve(TrainConfig(
            model=model, data=data, preset="cartpoles" if model == "skeleton" else None,
            model_config=model_config, steps=2 * steps, batch_size=batch,
            num_workers=workers, use_gpu=gpu, name=f"bench-{model}-{workers}", storage=storage,
            checkpoint_every=steps, preview_every=0, log_every=10 ** 9, val_every=0,
            val_episodes=0, loader_workers=loader_workers, max_failures=0))
        t = time.perf_counter()
        m = fit(build_trainer(cfg, cpus_per_worker=cpus_per_worker)).metrics
        wall = time.perf_counter() - t
    return {"model": model, "workers": workers, "batch": batch, "images_per_s": m["images_per_s"],
            "step_s": m["step_time_s"], "data_wait_frac": m["data_wait_frac"], "wall_s": wall}


def bench_loader(data: str, mode: str, batch: int, loader_workers: int, n: int = 60) -> float:
    """Images/s that one rank's input pipeline alone delivers (no model)."""
    from kpray.train.data import make_loader

    it = make_loader(data, mode, batch, loader_workers=loader_workers)
    next(it)                                              # start-up and buffer fill
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    return n * batch * (2 if mode == "pair" else 1) / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "kpray-bench-cartpoles"))
    p.add_argument("--models", nargs="+", default=["skeleton", "autolink"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--skeleton-batch", type=int, default=8, help="global pairs (paper: 8)")
    p.add_argument("--autolink-batch", type=int, default=8, help="global images (paper: 64)")
    p.add_argument("--steps", type=int, default=10, help="measured steps (and as many warm-up)")
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--markdown", help="also write the table to this file")
    a = p.parse_args(argv)

    from kpray.train import init_ray

    init_ray(num_cpus=a.num_cpus, log_to_driver=False)
    data = ensure_data(a.data)
    configs = {"skeleton": {}, "autolink": {"pretrained": False}}
    from kpray.losses.autolink import backbone_weights_path

    if os.path.isfile(backbone_weights_path("vgg")):
        configs["autolink"] = {}
    rows = []
    for model in a.models:
        batch = a.skeleton_batch if model == "skeleton" else a.autolink_batch
        for w in a.workers:
            # Ray gives a worker OMP_NUM_THREADS = its CPUs: share the machine's cores fairly
            cpw = max(1, (a.num_cpus or os.cpu_count()) // w)
            r = bench_one(model, w, batch, data, a.steps, a.gpu, configs[model], a.loader_workers,
                          cpw)
            rows.append(r)
            print(f"{model:9s} workers={w} batch={batch}: {r['images_per_s']:.1f} images/s, "
                  f"{r['step_s']:.2f} s/step, data wait {100 * r['data_wait_frac']:.1f} %, "
                  f"run {r['wall_s']:.0f} s", flush=True)
    import torch

    dev = torch.cuda.get_device_name(0) if a.gpu and torch.cuda.is_available() else \
        f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    load = os.getloadavg()[0]
    lines = [f"Device: {dev}; torch {torch.__version__}; {a.steps} measured steps after "
             f"{a.steps} warm-up steps; default (paper) model widths; each worker reserves "
             f"cores/workers CPUs (its torch threads); load average at the end {load:.1f}.", "",
             "| model | workers | global batch | images/s | s/step | data wait |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['workers']} | {r['batch']} | {r['images_per_s']:.1f} | "
                     f"{r['step_s']:.2f} | {100 * r['data_wait_frac']:.1f} % |")
    lines += ["", "Input pipeline alone, one rank (`kpray.train.data.make_loader`, batch 8, no model):", "",
              "| samples | loader processes | images/s |", "| --- | --- | --- |"]
    for mode in ("pair", "frame"):
        for lw in (0, 1):
            ips = bench_loader(data, mode, 8, lw)
            lines.append(f"| {mode} | {lw} | {ips:.0f} |")
    table = "\n".join(lines)
    print(table)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
