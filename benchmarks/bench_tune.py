"""Search throughput and Ray's per-trial overhead on this machine.

  python benchmarks/bench_tune.py --data SHARDS [--samples 3] [--steps 20]

1. One training run of the tiny budget through ``kpray.train.trainer.run`` (Ray Train, outside
   Tune): wall time.
2. A search of ``--samples`` trials with the same budget, one at a time: wall time per trial,
   trials per hour, and the overhead Tune adds per trial (per-trial time minus the plain run).
3. A plain run with ``--steps`` steps and checkpoints every step vs never (checkpoint cost).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kpray.train.config import TrainConfig, resolve  # noqa: E402
from kpray.train.trainer import init_ray, run  # noqa: E402
from kpray.tune import SearchSpec, run_search  # noqa: E402

TINY = {"pi_width": 16, "psi_width": 16, "background_width": 16, "num_points": 16}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    a = p.parse_args()
    init_ray()
    tmp = tempfile.mkdtemp(prefix="kpray-bench-tune-")
    base = TrainConfig(model="skeleton", data=a.data, preset="cartpoles", steps=a.steps,
                       batch_size=a.batch_size, num_workers=1, checkpoint_every=a.steps,
                       val_episodes=2, preview_every=0, model_config=dict(TINY), storage=tmp)

    def timed_run(name, **kw):
        t0 = time.perf_counter()
        run(resolve(base.replace(name=name, **kw)))
        return time.perf_counter() - t0

    plain = timed_run("plain")
    ckpt_every = timed_run("ckpt-every-step", checkpoint_every=1)
    t0 = time.perf_counter()
    run_search(SearchSpec(model="skeleton", base=base, samples=a.samples, name="search",
                          storage=tmp, max_concurrent=1), progress=False)
    search = time.perf_counter() - t0
    per_trial = search / a.samples
    print(f"budget: {a.steps} steps, batch {a.batch_size}, 1 CPU worker, tiny widths {TINY}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| plain Ray Train run (outside Tune) | {plain:.1f} s |")
    print(f"| search of {a.samples} trials, one at a time | {search:.1f} s |")
    print(f"| wall time per trial | {per_trial:.1f} s |")
    print(f"| trials per hour | {3600 / per_trial:.0f} |")
    print(f"| Tune overhead per trial (per-trial minus plain run) | {per_trial - plain:.1f} s |")
    print(f"| checkpoint cost (every step vs once, per checkpoint) | "
          f"{(ckpt_every - plain) / max(a.steps - 1, 1):.2f} s |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
