"""Do pi's points land on the object? The skeleton model's point extractor, trained alone.

    python benchmarks/points_on_object.py shards/cartpoles [--steps 100] [--set KEY=JSON ...]

Trains the skeleton model in-process (no Ray) with every structure weight at 0, so that only
reconstruction and contiguity move pi, at P = 16 and widths 16 unless --set says otherwise. Every
25 steps it reports, on 48 test frames (6 episodes x 8), where the points are:

- on object: fraction of points whose arg-max pixel is on the object (its segmentation mask,
  dilated by one pixel); "chance" is the fraction of pixels that are
- mass on object: mean location-map mass on those pixels (noise-free maps at the step's temperature)
- peak: mean of each map's largest probability (1 / 4096 is a uniform 64x64 map)
- distinct: distinct arg-max pixels among the P points of a frame (P: all apart; 1: collapsed)

Compare Gumbel settings with e.g. ``--set gumbel_noise=false --set gumbel_tau_start=0.1``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kpray.data import iter_episodes  # noqa: E402
from kpray.models.skeleton import gumbel_location_maps  # noqa: E402
from kpray.train.cli import parse_set_items  # noqa: E402
from kpray.train.config import ConfigError, TrainConfig  # noqa: E402
from kpray.train.data import make_loader, to_device  # noqa: E402
from kpray.train.models import get_adapter  # noqa: E402

NO_STRUCTURE = {"near": 0, "sparse_joints": 0, "sparse_links": 0, "uniform": 0, "length": 0}


def test_frames(data: str, episodes: int = 6, every: int = 8):
    """-> frames [N, 3, H, W] float in [0, 1], object masks dilated by one pixel [N, H, W]."""
    frames, masks = [], []
    for ep in iter_episodes(data, "test"):
        frames.append(ep["frames"][::every])
        masks.append(ep["masks"][::every])
        if len(frames) >= episodes:
            break
    if not frames:
        raise SystemExit(f"error: no test episodes under {data}")
    x = torch.tensor(np.concatenate(frames)).permute(0, 3, 1, 2).float() / 255
    m = torch.tensor(np.concatenate(masks)).float()
    return x, F.max_pool2d(m[:, None], 3, 1, 1)[:, 0]


@torch.no_grad()
def where_points_are(model, frames, masks, step: int) -> dict:
    model.eval()
    logits = model.pi(frames)
    model.train()
    maps = gumbel_location_maps(logits, model.gumbel_temperature(step), noise=False)
    arg = logits.flatten(2).argmax(-1)                                       # [N, P]
    return {"on object": float(masks.flatten(1).gather(1, arg).mean()),
            "mass on object": float((maps * masks[:, None]).sum((-1, -2)).mean()),
            "peak": float(maps.flatten(2).amax(-1).mean()),
            "distinct": float(np.mean([len(set(a.tolist())) for a in arg]))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="dataset folder with train-*.tar and test-*.tar shards")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="skeleton model config field (repeatable)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    mc = dict(pi_width=16, psi_width=16, background_width=16, num_points=16,
              gumbel_anneal_steps=args.steps, weights=dict(NO_STRUCTURE))
    try:
        mc.update(parse_set_items(args.set))
    except ConfigError as e:
        raise SystemExit(f"points_on_object.py: error: {e}") from None
    cfg = TrainConfig(model="skeleton", data=args.data, preset="cartpoles", model_config=mc)
    adapter = get_adapter("skeleton")
    model = adapter.build(cfg)
    opt = model.configure_optimizer()
    frames, masks = test_frames(args.data)
    print(f"settings: {json.dumps({k: v for k, v in mc.items() if k != 'weights'})}")
    print(f"chance (object pixels, dilated): {float(masks.mean()):.3f}")
    print("| step | on object | mass on object | peak | distinct | recon |")
    print("| --- | --- | --- | --- | --- | --- |")
    loader = make_loader(args.data, "pair", args.batch_size, seed=args.seed, loader_workers=0)
    t0, terms = time.time(), {}
    for step in range(args.steps + 1):
        if step % 25 == 0 or step == args.steps:
            r = where_points_are(model, frames, masks, step)
            recon = f"{terms['recon']:.4f}" if step else "-"
            print(f"| {step} | {r['on object']:.3f} | {r['mass on object']:.3f} | {r['peak']:.4f} "
                  f"| {r['distinct']:.1f} | {recon} |", flush=True)
        if step == args.steps:
            break
        b = to_device(next(loader), torch.device("cpu"), model.config.image_size)
        loss, terms = model((b["source"], b["target"]), step)
        opt.zero_grad()
        loss.backward()
        model.clip_gradients()
        opt.step()
    print(f"{args.steps} steps in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
