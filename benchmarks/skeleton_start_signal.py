"""Which random start of the skeleton model puts its points on the body? Train several starts
(one per --seeds entry, same data) for a few hundred steps each and print, at each --at step,
label-free quantities beside the fraction of points on the object (needs the ground-truth mask):

    python benchmarks/skeleton_start_signal.py --seeds 0,1,2 --at 50,100,250 -- TRAIN FLAGS

TRAIN FLAGS are those of ``jobs/train_skeleton.py`` (``--data``, ``--preset``, ``--set ...``).
Label-free, on the first --episodes test videos (source frame 0, every 4th frame a target, eval
mode): ``reliance``, the share of the background-only error that the points remove,
1 - mse(reconstruction) / mse(background), 0 when the background network paints the body and the
points add nothing; ``mse``, the reconstruction's per-pixel error; ``train_rel``, the same
share on the training batches of the 50 steps before (what ``restart_step`` decides on, from
the model's logged ``reliance``). ``on_object`` is
``val_points_on_object``'s measure. One process, no Ray; prints one row per (seed, step).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from skeleton_probe import split_flags, train_step  # noqa: E402


def main(argv=None) -> int:
    ours, train = split_flags(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (one start each)")
    ap.add_argument("--at", default="50,100,250", help="comma-separated steps to measure at")
    ap.add_argument("--episodes", type=int, default=8, help="test videos measured on")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(ours)

    import numpy as np
    import torch

    from kpray.data import iter_episodes
    from kpray.train.cli import build_parser, config_from_args
    from kpray.train.data import make_loader, to_device
    from kpray.train.loop import seed_everything
    from kpray.train.models import get_adapter
    from kpray.train.skeleton_adapter import points_on_mask

    torch.set_num_threads(args.threads)
    at = sorted(int(s) for s in args.at.split(","))
    adapter = get_adapter("skeleton")
    base = config_from_args(build_parser("skeleton").parse_args(train), "skeleton")
    episodes = list(iter_episodes(base.data, split="test"))[:args.episodes]
    print(f"{'seed':>4} {'step':>5} {'reliance':>8} {'train_rel':>9} {'mse':>8} {'on_object':>9} {'s':>5}",
          flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = base.replace(seed=seed)
        seed_everything(seed)
        model = adapter.build(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        loader = make_loader(cfg.data, "pair", cfg.batch_size, seed=seed, loader_workers=1)
        t0, step, logged = time.time(), 0, []
        while step < at[-1]:
            batch = to_device(next(loader), torch.device("cpu"), model.config.image_size)
            model.train()
            logged.append(float(train_step(model, opt, cfg, batch, step)[1]["reliance"]))
            step += 1
            if step not in at:
                continue
            model.eval()
            rel, mse, on = [], [], []
            for ep in episodes:
                frames = adapter.frames_tensor(model, ep["frames"])
                tgt = frames[::4]
                r = model.point_reliance(frames[:1].expand(len(tgt), -1, -1, -1), tgt)
                rel.append(r["reliance"])
                mse.append(r["mse"])
                on.append(points_on_mask(adapter.points(model, ep["frames"]), ep["masks"]))
            print(f"{seed:>4} {step:>5} {np.mean(rel):8.3f} {np.mean(logged[-50:]):9.3f} "
                  f"{np.mean(mse):8.5f} {np.mean(on):9.3f} "
                  f"{time.time() - t0:5.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
