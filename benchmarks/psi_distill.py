"""Can psi learn per-image skeletons when its targets are the structure loss's own optima?

    python benchmarks/psi_distill.py CHECKPOINT DATA \
        --setting '{"near_exclude_endpoints": false, "l_max": 2.0, "weights": {"sparse_joints": 3, "uniform": 10000}}'

pi (and its points) come from CHECKPOINT, frozen. For every train episode, one frame pair (the
link frame and the frame half the video later, as ``structure_on_points.py``; more with
``--pairs-per-episode``) gets the link
matrix that minimises the weighted structure terms under ``--setting`` by greedy toggling
(``structure_on_points.greedy_links``). A fresh psi (``--psi-head``) is then trained by binary
cross-entropy to those per-image optima from the source image and pi's maps, and scored on the
test videos as the model's skeletons are, next to the greedy optima of the test pairs
themselves (what a psi that regressed them perfectly would score). This separates the two
parts of psi's problem: whether the loss's optimum follows the body on these points
(``structure_on_points.py``), and whether psi's network can carry per-image optima to unseen
images.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kpray.data import iter_episodes  # noqa: E402
from kpray.models import skeleton as S  # noqa: E402
from kpray.train.predict import load_model  # noqa: E402
from structure_on_points import (apply_setting, frame_pairs, greedy_links,  # noqa: E402
                                 score_links, score_row)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="skeleton run folder or checkpoint_* folder (pi is frozen)")
    ap.add_argument("data", help="shard folder with train-*.tar and test-*.tar")
    ap.add_argument("--setting", default="{}", metavar="JSON",
                    help="SkeletonConfig fields of the loss whose optima are the targets")
    ap.add_argument("--psi-head", default="fc",
                    choices=sorted(h for h in S.PSI_HEADS if h != "solver"))   # one with weights
    ap.add_argument("--train-episodes", type=int, default=300)
    ap.add_argument("--pairs-per-episode", type=int, default=1, help="train pairs per episode")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, adapter, _, _ = load_model(args.checkpoint)
    model.eval()
    c = apply_setting(model.config, args.setting, psi_head=args.psi_head)

    t0 = time.perf_counter()
    train_eps = list(iter_episodes(args.data, split="train"))[:args.train_episodes]
    test_eps = list(iter_episodes(args.data, split="test"))
    geo_tr, _, x_tr = frame_pairs(model, adapter, train_eps, args.pairs_per_episode, with_images=True)
    geo_te, tracks_te, x_te = frame_pairs(model, adapter, test_eps, with_images=True)
    y_tr = greedy_links(c, *geo_tr)
    y_te = greedy_links(c, *geo_te)
    joints_tr = (y_tr.sum(-1) > 0).sum(-1).float()   # [V] points with a link, per target
    print(f"{len(x_tr)} train pairs, {len(test_eps)} test videos; greedy targets in "
          f"{time.perf_counter() - t0:.0f} s; joints per train target: "
          f"{joints_tr.mean():.2f} (spread {joints_tr.std():.2f})", flush=True)

    psi = S.make_psi(c)
    opt = torch.optim.Adam(psi.parameters(), lr=args.lr)
    i, j = S.upper_pairs(c.num_points, torch.device("cpu"))
    sm_tr = geo_tr[0]
    n = len(x_tr)
    t1 = time.perf_counter()
    psi.train()
    for step in range(args.steps):
        idx = torch.randint(n, (min(args.batch, n),))
        s = psi(x_tr[idx], sm_tr[idx])[:, i, j].clamp(1e-6, 1 - 1e-6)
        loss = F.binary_cross_entropy(s, y_tr[idx][:, i, j])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: BCE {loss.item():.4f}", flush=True)
    psi.eval()
    with torch.no_grad():
        pred = psi(x_te, geo_te[0])
    links = (pred >= c.link_threshold).float()
    print(f"psi trained {args.steps} steps in {time.perf_counter() - t1:.0f} s")
    print(f"\nsetting `{args.setting}`, psi head {args.psi_head}\n")
    print("| links from | joint F1 | dist | count diff | struct F1 | Bcc | joints per body | Spearman |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(score_row("greedy optimum of the test pair (target)", score_links(test_eps, tracks_te, y_te)))
    print(score_row(f"psi ({args.psi_head}) trained on the train pairs' optima",
                    score_links(test_eps, tracks_te, links)))


if __name__ == "__main__":
    main()
