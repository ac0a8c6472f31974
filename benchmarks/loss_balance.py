"""How strongly each loss term pulls on pi and psi at initialisation, under readings of eqs. 1-8.

    python benchmarks/loss_balance.py SHARDS [--batches 4] [--set KEY=JSON ...]

For each reading (the paper read literally with eq. 1 a sum over pixels; the same with eq. 1 a
per-pixel mean, which the code did before; our defaults) it prints the norm of each weighted
term's gradient on pi's and on psi's parameters (``SkeletonAdapter.diagnostics``), averaged over
a few real batches of frame pairs with the dataset's weights, and the share of point pairs whose
coverage delta reaches alpha (eq. 5: 0 % means the uniform loss penalises every link alike).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TERMS = ("recon", "contiguity", "near", "sparse_joints", "sparse_links", "uniform", "length", "psi_fit",
         "rigidity")


def main(argv=None) -> int:
    from kpray.losses.skeleton import preset_for_dataset
    from kpray.models.skeleton import PAPER_LITERAL, SkeletonModel, link_coverages
    from kpray.train.cli import parse_set_items
    from kpray.train.data import make_loader, to_device
    from kpray.train.models import make_model_config
    from kpray.train.skeleton_adapter import SkeletonAdapter

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="shard folder with train-*.tar")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="model config field for every reading (e.g. --set num_points=32)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    loader = make_loader(args.data, "pair", 8, seed=args.seed, loader_workers=0)
    batches = [to_device(next(loader), torch.device("cpu"), 64) for _ in range(args.batches)]
    from kpray.data import iter_episodes

    dataset = next(iter(iter_episodes(args.data, split="train")))["meta"]["dataset"]
    preset = preset_for_dataset(dataset) or "cartpoles"
    common = {"num_points": 16, "pi_width": 16, "psi_width": 16, "background_width": 16,
              **parse_set_items(args.set)}
    readings = {"literal, eq. 1 summed": {**PAPER_LITERAL, **common},
                "literal, eq. 1 a mean": {**PAPER_LITERAL, "recon_reduction": "mean", **common},
                "our defaults": common}
    adapter = SkeletonAdapter()
    print(f"{dataset}: weighted gradient norm at initialisation (mean of {args.batches} batches of 8 pairs)")
    print(f"{'reading':24s} {'net':4s} " + " ".join(f"{t:>13s}" for t in TERMS) + "   pairs covered")
    for name, mc in readings.items():
        torch.manual_seed(args.seed)
        model = SkeletonModel(make_model_config("skeleton", preset, mc))
        rows = {"pi": {t: [] for t in TERMS}, "psi": {t: [] for t in TERMS}}
        covered = []
        for batch in batches:
            d = adapter.diagnostics(model, batch, step=10 ** 6)         # past every ramp
            for net in rows:
                for t in TERMS:
                    rows[net][t].append(d.get(f"grad_{net}/{t}", float("nan")))
            with torch.no_grad():
                out = model.run(batch["source"], batch["target"], step=10 ** 6)
                cov = link_coverages(model.config, out["source_maps"], out["target_maps"],
                                     out["source_points"], out["target_points"])
                covered.append(float(np.mean([(c >= model.config.uniform_alpha).float().mean() for c in cov])))
        for net, r in rows.items():
            cells = " ".join(f"{np.nanmean(r[t]):13.3g}" if not np.all(np.isnan(r[t])) else f"{'-':>13s}"
                             for t in TERMS)
            tail = f"   {100 * np.mean(covered):.1f} %" if net == "pi" else ""
            print(f"{name:24s} {net:4s} {cells}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
