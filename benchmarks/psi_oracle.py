"""Oracle check of psi and the structure losses: train psi alone on points derived from the
ground truth (``kpray/skeleton_oracle.py``), then score its skeletons on test episodes.

    python benchmarks/psi_oracle.py SHARDS [--steps 400] [--set KEY=JSON ...] [--json OUT]

Prints the training trace (structure terms, links per image and their spread over the batch),
the paper's metrics on the test episodes, the predicted link and joint counts per body, and,
for reference, the structure loss of each body's true skeleton against chains of 1..6 links on
the same points (which skeleton the loss prefers, apart from how psi learns). Defaults: P = 16,
psi width 16, the dataset's weights with joint weight 1 (the ``make learn-skeleton`` recipe).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def chain(n: int, p: int) -> np.ndarray:
    a = np.zeros((p, p), bool)
    for k in range(min(n, p - 1)):
        a[k, k + 1] = a[k + 1, k] = True
    return a


def loss_of_skeletons(episodes, cfg, pairs_per_episode: int = 1, seed: int = 0) -> dict:
    """{true joint count: {"true": mean loss, "chain<n>": mean loss}} over frame pairs."""
    from kpray import skeleton_oracle as O
    from kpray.losses.skeleton import effective_weights
    from kpray.models.skeleton import structure_terms
    from kpray.ops.coords import to_normalised

    rng = np.random.default_rng(seed)
    w = effective_weights(cfg.loss_weights(), 0, 0)
    out: dict = defaultdict(lambda: defaultdict(list))
    p = cfg.num_points
    for ep in episodes:
        pts = O.oracle_points(ep["joints"], ep["adjacency"], p)
        size = ep["frames"].shape[1]
        true = np.zeros((p, p), bool)
        j = min(p, ep["adjacency"].shape[0])
        true[:j, :j] = ep["adjacency"][:j, :j]
        for _ in range(pairs_per_episode):
            f = rng.choice(len(pts), 2, replace=False)
            ps, pt = (to_normalised(torch.from_numpy(pts[k][None]), size) for k in f)
            ms, mt = O.one_hot_maps(ps, size), O.one_hot_maps(pt, size)
            for name, adj in [("true", true)] + [(f"chain{n}", chain(n, p)) for n in range(1, 7)]:
                s = torch.from_numpy(adj.astype(np.float32))[None]
                terms = structure_terms(cfg, s, ms, mt, ps, pt)
                out[int(ep["joints"].shape[1])][name].append(float(sum(w[k] * v for k, v in terms.items())))
    return {j: {k: float(np.mean(v)) for k, v in d.items()} for j, d in sorted(out.items())}


def main(argv=None) -> int:
    from kpray import skeleton_oracle as O
    from kpray.losses.skeleton import LossWeights, preset_for_dataset
    from kpray.metrics import paper_epsilon
    from kpray.models.skeleton import SkeletonConfig
    from kpray.train.cli import parse_set_items
    from kpray.train.data import load_episodes
    from kpray.train.models import make_model_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="shard folder with train-*.tar and test-*.tar")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--train-episodes", type=int, default=100)
    ap.add_argument("--test-episodes", type=int, default=30)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="skeleton model config field (repeatable), e.g. --set psi_head=pairwise")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = load_episodes(args.data, "train", args.train_episodes, args.frames)
    test = load_episodes(args.data, "test", args.test_episodes, args.frames)
    if not train or not test:
        print(f"psi_oracle.py: error: need train and test shards under {args.data}", file=sys.stderr)
        return 2
    dataset = str(train[0]["meta"].get("dataset", "cartpoles"))
    preset = preset_for_dataset(dataset) or "cartpoles"
    mc = {"num_points": 16, "psi_width": 16, "ramp_steps": 0}
    mc.update(parse_set_items(args.set))
    cfg = make_model_config("skeleton", preset, mc)
    if "weights" not in mc:
        w = cfg.loss_weights().as_dict()
        cfg = dataclasses.replace(cfg, weights=LossWeights(**{**w, "sparse_joints": 1.0}))
    assert isinstance(cfg, SkeletonConfig)
    t0 = time.time()

    def log(e):
        if e["step"] % 50 == 0 or e["step"] == 1:
            print(f"step {e['step']:5d}  loss {e['loss']:9.2f}  near {e['near']:7.2f}  "
                  f"joints {e['sparse_joints']:7.2f}  uniform {e['uniform']:.3f}  "
                  f"links/image {e['links']:5.1f} (std over batch {e['links_std']:.2f})  "
                  f"{time.time() - t0:.0f}s", flush=True)

    psi, history = O.train_psi(train, cfg, steps=args.steps, seed=args.seed, log=log)
    res = O.evaluate_psi(psi, test, cfg.num_points, paper_epsilon(dataset) or 0.2, seed=args.seed)
    by = defaultdict(list)
    for v in res["videos"]:
        by[v["body"]].append(v)
    print("\nbody        videos  true links  links (min-max)  joints (min-max)  struct F1")
    for body, vs in sorted(by.items()):
        links, joints = [v["links"] for v in vs], [v["joints"] for v in vs]
        print(f"{body:12s} {len(vs):6d} {vs[0]['true_links']:11d}  {np.mean(links):5.1f} ({min(links)}-{max(links)})"
              f"     {np.mean(joints):5.1f} ({min(joints)}-{max(joints)})      "
              f"{np.nanmean([v['struct_f1'] for v in vs]):.2f}")
    m = res["mean"]
    print(f"\nmean over {m['videos']} test videos: struct F1 {m['struct_f1']:.3f}, Bcc {m['bcc']:.3f}, "
          f"joint F1 {m['joint_f1']:.3f}, links {m['links']:.1f}, joints {m['joints']:.1f}")
    prefs = loss_of_skeletons(test, cfg)
    print("\nstructure loss on the oracle points (lower is preferred), by true joint count:")
    for j, d in prefs.items():
        print(f"  J = {j}: " + ", ".join(f"{k} {v:.1f}" for k, v in d.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg.to_dict(), "mean": m,
                                               "videos": res["videos"], "history": history[-1] if history else None,
                                               "loss_of_skeletons": prefs}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
