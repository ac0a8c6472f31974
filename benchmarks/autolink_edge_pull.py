"""Are an AutoLink checkpoint's keypoints pulled onto the body or off it? And why.

    python benchmarks/autolink_edge_pull.py CHECKPOINT [CHECKPOINT ...] --data SHARDS \
        [--episodes 12] [--every 8] [--repeats 4]

On every ``--every``-th frame of ``--episodes`` test episodes, with ``--repeats`` random masks:

- ``off-body``: fraction of keypoints more than 1.5 px from the object mask;
- ``pull``: for those keypoints, the cosine between the loss's descent direction on the keypoint
  (``-dL/dkp``, the detector left out: the keypoint itself is the variable) and the direction
  to the nearest mask pixel; mean and fraction > 0. Positive: the reconstruction pulls the
  keypoint onto the body;
- ``edge response``: ``AutoLink.edge_map_reliance``'s slope of the reconstruction's brightness
  change on the edge map ([0, 1] units per unit of edge). On a black background (``-nobg``
  datasets) a positive response makes an edge on the body lower the loss, a negative one an
  edge on the background.

Run at the end of the keypoint hold (``keypoint_delay_steps``) it shows which way a run will
go (docs/benchmarks.md, "The sign of the decoder's response to the edges"). With
``--untrained-seeds 0,1,2`` it measures instead the model each seed starts from (the checkpoint
gives only the config), where the sign is already set ("The edge sign chosen at the start").
"""
from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np
import torch


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="AutoLink run folders or checkpoint_* folders")
    ap.add_argument("--data", required=True, help="shard folder with a test split")
    ap.add_argument("--episodes", type=int, default=12, help="test episodes used")
    ap.add_argument("--every", type=int, default=8, help="every n-th frame of each episode")
    ap.add_argument("--repeats", type=int, default=4, help="random masks per frame")
    ap.add_argument("--untrained-seeds", metavar="S,S,...",
                    help="instead: the model of each checkpoint's config as training builds it "
                         "with each of these seeds, before any update (the start's edge response)")
    return ap.parse_args(argv)


def edge_pull(model, frames: np.ndarray, masks: np.ndarray, repeats: int = 4,
              step: int | None = None) -> dict:
    """frames [N, S, S, 3] uint8, masks [N, S, S] bool -> {'off_body', 'pull_mean',
    'pull_positive', 'n_off', 'edge_response'} (see the module docstring). ``step``: the
    training step, for the edge skip's schedule (``edge_skip_steps``)."""
    from scipy.ndimage import distance_transform_edt

    from kpray.models.autolink import random_grid_mask
    from kpray.ops.coords import to_pixels

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    s = x.shape[-1]
    c = model.config
    with torch.no_grad():
        kp0, _ = model.detect(x)
    px = to_pixels(kp0, s).numpy()                                       # [N, K, 2] pixels
    nearest = [distance_transform_edt(~m, return_indices=True) for m in masks]
    g = torch.Generator().manual_seed(0)
    cosines, off, responses = [], [], []
    for rep in range(repeats):
        kp = kp0.clone().requires_grad_()
        mask = random_grid_mask(x.shape[0], s, c.mask_grid, c.mask_ratio, None, g)
        rec = model.decode(model.to_net(x) * mask, model.draw_edges(kp), step)
        (grad,) = torch.autograd.grad(model.perceptual(rec, x), kp)
        with torch.no_grad():
            responses.append(model.edge_map_reliance(x, seed=rep, step=step)["edge_response"])
        for i, (dist, (iy, ix)) in enumerate(nearest):
            for k in range(px.shape[1]):
                cx, cy = np.clip(np.round(px[i, k]).astype(int), 0, s - 1)
                off.append(dist[cy, cx] > 1.5)
                if not off[-1]:
                    continue
                to_body = np.array([ix[cy, cx], iy[cy, cx]], float) - px[i, k]
                v = -grad[i, k].numpy()
                if np.linalg.norm(v) > 0:
                    cosines.append(v @ to_body / (np.linalg.norm(v) * np.linalg.norm(to_body)))
    cosines = np.asarray(cosines)
    return {"off_body": float(np.mean(off)),
            "pull_mean": float(cosines.mean()) if cosines.size else float("nan"),
            "pull_positive": float((cosines > 0).mean()) if cosines.size else float("nan"),
            "n_off": int(cosines.size), "edge_response": float(np.mean(responses))}


def main(argv=None) -> int:
    args = parse_args(argv)
    from kpray.autolink_report import trained_model
    from kpray.data import iter_episodes
    from kpray.evaluation import EvaluationError

    try:
        episodes = list(itertools.islice(iter_episodes(args.data, split="test"), args.episodes))
        if not episodes:
            raise EvaluationError(f"no test episodes in {args.data}")
        models = [(ck, trained_model(ck)) for ck in args.checkpoints]
    except (OSError, ValueError, EvaluationError) as e:
        print(f"autolink_edge_pull.py: error: {e}", file=sys.stderr)
        return 2
    frames = np.concatenate([ep["frames"][::args.every] for ep in episodes])
    masks = np.concatenate([ep["masks"][::args.every] for ep in episodes]).astype(bool)
    print("| checkpoint | step | off-body keypoints | pull: mean cosine (fraction > 0) "
          "| edge response |")
    print("| --- | --- | --- | --- | --- |")
    if args.untrained_seeds:
        from kpray.train.loop import seed_everything

        for ck, (_, adapter, cfg, _) in models:
            for seed in (int(x) for x in args.untrained_seeds.split(",")):
                seed_everything(seed)                          # as rank 0 of a run with this seed
                model = adapter.build(cfg).eval()
                r = edge_pull(model, frames, masks, args.repeats, 0)
                print(f"| {ck}, untrained, seed {seed} | 0 | {r['off_body']:.2f} | "
                      f"{r['pull_mean']:+.2f} ({r['pull_positive']:.2f}, n = {r['n_off']}) | "
                      f"{r['edge_response']:+.3f} |")
        return 0
    for ck, (model, _, _, state) in models:
        r = edge_pull(model, frames, masks, args.repeats, state["step"])
        print(f"| {ck} | {state['step']} | {r['off_body']:.2f} | {r['pull_mean']:+.2f} "
              f"({r['pull_positive']:.2f}, n = {r['n_off']}) | {r['edge_response']:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
