"""Oracle check of AutoLink's detector: do keypoints acquire an identity when the shared graph is
the body's true skeleton from the start? (docs/benchmarks.md, issue 12)

With the true joints as keypoints, AutoLink's graph learns the walker's skeleton exactly
(``autolink_oracle.py``, condition "learned graph"). This is the converse: K = J keypoints, the
graph FIXED to the true links (weight ``--link-weight`` on each link, ~0 elsewhere), and the
detector and decoder trained end to end by the usual reconstruction loss. ``--graph learned``
is the control: the same loop and K with the graph learned from the official initialisation.
Both use the `make learn-autolink` recipe (64 px, widths 16, heatmap 16, Laplacian loss,
decoder coordinates, batch 16, lr 3e-4). Scored like a checkpoint: the keypoint regression
(h36m and plain, fitted on 60 train episodes, every test episode).

    python benchmarks/autolink_graph_oracle.py runs/learn-autolink/data --graph true --steps 3000
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="shard folder of one body (train and test splits)")
    p.add_argument("--graph", choices=("true", "learned"), default="true")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--link-weight", type=float, default=1.0)
    p.add_argument("--train-episodes", type=int, default=300)
    p.add_argument("--fit-episodes", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from autolink_supervised import load_body_data, score_keypoints

    from kpray.autolink_report import gt_limbs, top_edges
    from kpray.models.autolink import AutoLink, AutoLinkConfig
    from kpray.ops.coords import to_pixels

    train, test, names, size, frames, rng = load_body_data(a.data, a.train_episodes, a.seed)
    adj = torch.from_numpy(np.asarray(train[0]["adjacency"], np.float32))   # [J, J]
    j = adj.shape[0]
    cfg = AutoLinkConfig(image_size=size, heatmap_size=16, num_keypoints=j, thickness=1e-3,
                         detector_width=16, decoder_width=16, decoder_coords=True,
                         loss="laplacian", lr=3e-4)
    model = AutoLink(cfg)
    if a.graph == "true":
        # softplus(scale * raw) = link_weight on links, ~2e-9 elsewhere; frozen
        target = torch.where(adj > 0, torch.log(torch.expm1(torch.tensor(a.link_weight))),
                             torch.tensor(-20.0))
        with torch.no_grad():
            model.edge_weight_raw.copy_(target / cfg.edge_weight_scale)
        model.edge_weight_raw.requires_grad_(False)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=cfg.lr,
                            betas=cfg.betas, weight_decay=cfg.weight_decay)

    def batch(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)

    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        loss, _ = model(batch(frames[rng.integers(0, len(frames), 16)]), step=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == a.steps:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    model.eval()

    def predict(eps):
        with torch.no_grad():
            return np.concatenate([to_pixels(model.detect(batch(e["frames"]))[0], size).numpy()
                                   for e in eps]).astype(np.float64)

    block = score_keypoints(predict(train[:a.fit_episodes]), predict(test), train[:a.fit_episodes],
                            test, names, size)
    links = set(gt_limbs(adj.numpy()))
    e = len(links)
    hits = sum((i, k) in links for i, k, _ in top_edges(model.edge_weights().detach().numpy(), e))
    print(f"graph {a.graph}, K = J = {j}, {a.steps} steps: keypoint regression {block['protocol']} "
          f"{block['error']:.3f}, plain {block['plain_error']:.3f}, spread ratio "
          f"{block['spread_ratio']:.2f}; {hits} of the graph's {e} strongest edges are true links")
    return 0


if __name__ == "__main__":
    sys.exit(main())
