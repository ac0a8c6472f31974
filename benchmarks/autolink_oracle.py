"""Oracle check of AutoLink's reconstruction signal: how much lower is the loss when the decoder
is given the true skeleton (GT joints linked by the GT edges, drawn as AutoLink draws edges)
than when it is given no edge map, or the same fixed pattern for every image?

If the true skeleton barely lowers the loss, the detector gets no reason to put its keypoints on
the body, whatever the optimiser does: that is the first thing to know about a dataset and a
loss. Only the decoder is trained here (official layout), one per condition, same data and seed.

Condition "learned graph" (``--only "learned graph"`` or among all) keeps the true joints as
keypoints but draws them with AutoLink's own shared graph, learned with the decoder from the
official initialisation: does the reconstruction signal alone find the body's links when the
keypoints are perfect? It prints the graph's strongest E edges (E = the true number of links)
and how many are true links.

    python benchmarks/autolink_oracle.py --data shards/walker --steps 300 --loss pixel_grad
    python benchmarks/autolink_oracle.py --data shards/walker --steps 1500 --loss laplacian \
        --mask-grid 16 --set decoder_coords=true --only "no edge map" "learned graph"
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--loss", default="pixel_grad")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--thickness", type=float, default=1e-3)
    ap.add_argument("--mask-grid", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--only", nargs="+", default=None, metavar="CONDITION",
                    help="run only these conditions: 'true skeleton', 'no edge map', "
                         "'fixed pattern', 'learned graph' (default: all)")
    ap.add_argument("--out", default=None, help="JSON results file")
    args = ap.parse_args(argv)

    from kpray.autolink_report import gt_limbs, top_edges
    from kpray.models.autolink import AutoLink, AutoLinkConfig
    from kpray.ops.coords import to_normalised
    from kpray.ops.edge_map import edge_map
    from kpray.train.cli import parse_set_items
    from kpray.train.data import load_episodes

    torch.set_num_threads(max(1, torch.get_num_threads()))
    train = load_episodes(args.data, "train", args.episodes, 8)
    test = load_episodes(args.data, "test", 16, 8)
    size = train[0]["frames"].shape[1]

    def stack(eps):
        x = torch.from_numpy(np.concatenate([e["frames"] for e in eps])).permute(0, 3, 1, 2).float() / 255
        j = torch.from_numpy(np.concatenate([e["joints"] for e in eps])).float()
        adj = torch.from_numpy(eps[0]["adjacency"]).float()
        return x, to_normalised(j, size), adj

    xtr, jtr, adj = stack(train)
    xte, jte, _ = stack(test)
    fixed = torch.rand(jtr.shape[1], 2, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    conditions = {
        "true skeleton": lambda j: j,
        "no edge map": None,
        "fixed pattern": lambda j: fixed.expand_as(j),
        "learned graph": lambda j: j,
    }
    if args.only:
        unknown = set(args.only) - set(conditions)
        if unknown:
            ap.error(f"unknown condition(s) {sorted(unknown)}: choose from {list(conditions)}")
        conditions = {k: v for k, v in conditions.items() if k in args.only}
    results, graphs = {}, {}
    for name, kp_of in conditions.items():
        torch.manual_seed(0)
        cfg = AutoLinkConfig(image_size=size, heatmap_size=size // 4, decoder_width=args.width,
                             detector_width=4, loss=args.loss, pretrained=False,
                             perceptual_resize=0, thickness=args.thickness,
                             mask_grid=args.mask_grid, lr=args.lr,
                             **parse_set_items(args.set))
        model = AutoLink(cfg)
        learned = name == "learned graph"
        params = list(model.decoder.parameters()) + [model.alpha]
        if learned:
            if model.edge_weight_raw.shape[0] != jtr.shape[1]:
                model.edge_weight_raw = torch.nn.Parameter(   # K = J: one keypoint per joint
                    (cfg.edge_init_logit + cfg.edge_init_std * torch.randn(jtr.shape[1], jtr.shape[1]))
                    / cfg.edge_weight_scale)
            params.append(model.edge_weight_raw)
        opt = torch.optim.AdamW(params, lr=args.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(1)

        def run(x, j, g):
            mask = None
            from kpray.models.autolink import random_grid_mask
            mask = random_grid_mask(x.shape[0], size, cfg.mask_grid, cfg.mask_ratio, generator=g)
            if kp_of is None:
                edges = torch.zeros(x.shape[0], 1, size, size)
            elif learned:
                edges = edge_map(j, model.edge_weights(), cfg.thickness, (size, size)).unsqueeze(1)
            else:
                edges = edge_map(kp_of(j), adj, cfg.thickness, (size, size)).unsqueeze(1)
            recon = model.decode(model.to_net(x) * mask, edges)
            return model.perceptual(recon, x)

        t0 = time.perf_counter()
        for step in range(args.steps):
            idx = torch.randint(0, len(xtr), (args.batch_size,), generator=gen)
            loss = run(xtr[idx], jtr[idx], gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            g = torch.Generator().manual_seed(2)
            test_loss = float(np.mean([float(run(xte[i:i + 32], jte[i:i + 32], g))
                                       for i in range(0, len(xte), 32)]))
        results[name] = test_loss
        print(f"{name:15s} test loss {test_loss:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if learned:
            w = model.edge_weights().detach()
            links = set(gt_limbs(adj.numpy()))
            e = len(links)
            top = top_edges(w.numpy(), e)
            hits = sum((a, b) in links for a, b, _ in top)
            chance = e / (len(w) * (len(w) - 1) / 2)
            graphs[name] = {"top_edges": top, "true_links_in_top": hits, "links": e,
                            "chance": chance}
            names = train[0]["meta"].get("joint_names") or list(range(len(w)))
            print(f"learned graph: {hits} of its {e} strongest edges are true links (chance "
                  f"{chance:.2f} each): " + ", ".join(f"{names[a]}-{names[b]} {v:.3f}"
                                                     for a, b, v in top), flush=True)
    base = results.get("no edge map")
    for name, v in results.items():
        if base is not None:
            print(f"{name:15s} {100 * (v / base - 1):+.1f} % against no edge map")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "test_loss": results, "graphs": graphs}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
