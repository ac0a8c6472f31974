"""Is it the loss or the search? The structure loss of the solver's skeleton against that of the
oracle choice of points, per video (test, or --split train), term by term.

    python benchmarks/solver_vs_oracle.py CHECKPOINT DATA [--set KEY=VALUE ...] [--frames 32] \
        [--split train] [--by-body]

(``--split train`` diagnoses on training videos and leaves the test set untouched.)

For each test video, pi's location maps on K frames spread over it (``solver_frames``) are fixed,
and two link matrices [P, P] are scored by the solver's objective
(``kpray.models.skeleton_solver.structure_objective``, the config's weights):

- ``solver``: what ``psi_head="solver"`` predicts (greedy search from no links);
- ``oracle``: the points a Hungarian matching assigns to true joints (mean distance over the
  video <= eps, as the comparison's "oracle choice of points"), linked as the true joints are.
  As a link matrix its joints are the matched points with a matched true neighbour, so its
  joint F1 is below the comparison's oracle row (which counts every matched point as a joint);
- ``oracle, polished``: greedy search started from the oracle links (does the loss walk away
  from the truth, and where to?).

If the oracle scores lower than the solver, the search misses the loss's optimum; if higher, the
loss itself prefers another skeleton, and the per-term table says which term. ``--set`` changes
model settings as in ``jobs/evaluate.py`` (JSON values; ``weights`` merged). ``--by-body``
adds the same rows per body.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kpray.data import iter_episodes  # noqa: E402
from kpray.losses.skeleton import effective_weights  # noqa: E402
from kpray.models import skeleton as S  # noqa: E402
from kpray.models import skeleton_solver as solver  # noqa: E402
from kpray.ops.coords import to_pixels  # noqa: E402
from kpray.skeleton_report import _video_record, oracle_matches  # noqa: E402
from kpray.train.predict import load_model  # noqa: E402


def oracle_links(ep, points_px: np.ndarray, p: int, eps: float) -> torch.Tensor:
    """[P, P] 0/1: the points matched to true joints (``kpray.skeleton_report.oracle_matches``)
    linked as their true joints are (the comparison's oracle choice, as a link matrix)."""
    rows, cols = oracle_matches(ep, points_px, eps)
    adj = torch.from_numpy(np.asarray(ep["adjacency"], bool)[np.ix_(cols, cols)]).float()
    s = torch.zeros(p, p)
    s[np.ix_(rows, rows)] = adj
    return s


def weighted_terms(c, maps, pts, s: torch.Tensor) -> dict[str, float]:
    """The weighted structure terms of links s [P, P] on K frames (each its own target), as
    ``structure_objective`` sums them; "total" their sum."""
    k, p = pts.shape[:2]
    cov = S.link_coverages(c, maps, maps, pts, pts)
    w = effective_weights(c.loss_weights(), 10 ** 9, 0)
    terms = S.structure_terms(c, s[None].expand(k, p, p), maps, maps, pts, pts, coverage=cov)
    out = {name: float(w[name] * v) for name, v in terms.items()}
    out["total"] = sum(out.values())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="skeleton run folder or checkpoint_* folder")
    ap.add_argument("data", help="shard folder with train-*.tar / test-*.tar")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="model setting (JSON value), as in jobs/evaluate.py")
    ap.add_argument("--frames", type=int, default=None,
                    help="frames per video the losses see (default: the config's solver_frames)")
    ap.add_argument("--eps", type=float, default=0.15)
    ap.add_argument("--episodes", type=int, default=None, help="first N episodes of the split only")
    ap.add_argument("--split", default="test", choices=("train", "test"),
                    help="which episodes (train: diagnose without touching the test set)")
    ap.add_argument("--by-body", action="store_true",
                    help="also the weighted terms per body (which term decides each body's count)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    overrides = {}
    for item in a.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    model, adapter, cfg, _ = load_model(a.checkpoint, "cpu", overrides)
    c = model.config
    k = a.frames or c.solver_frames
    episodes = list(iter_episodes(a.data, a.split))[:a.episodes]
    rows = {"solver": [], "oracle": [], "oracle, polished": []}
    for ep in episodes:
        frames = np.asarray(ep["frames"])
        logits, maps = model.locate(adapter.frames_tensor(model, frames))
        read = model.read_points(logits, maps, video=True)
        track = to_pixels(read, frames.shape[1]).numpy()
        idx = solver.spread_frames(len(frames), k)
        km = maps[idx]
        kp = solver.solver_points(c, km, read[idx])
        links = {"solver": solver.greedy_links(c, km, kp),
                 "oracle": oracle_links(ep, track.astype(np.float64), c.num_points, a.eps)}
        links["oracle, polished"] = solver.greedy_links(c, km, kp, start=links["oracle"])
        for name, s in links.items():
            r = weighted_terms(c, km, kp, s)
            r.update(_video_record(ep, track, s.numpy(), a.eps))
            rows[name].append(r)
    names = ["total", "near", "sparse_joints", "sparse_links", "uniform", "length"]
    print(f"{len(episodes)} {a.split} videos, {k} frames each; weighted terms (mean), then metrics\n")
    print("| links | " + " | ".join(names) + " | joint F1 | struct F1 | joints, 1 to 5 poles |")
    print("|" + " --- |" * (len(names) + 4))
    for name, recs in rows.items():
        per_body: dict = {}
        for r in recs:
            per_body.setdefault(r["body"], []).append(r["joints"])
        body = ", ".join(f"{np.mean(v):.1f}" for _, v in sorted(per_body.items()))
        print(f"| {name} | " + " | ".join(f"{np.mean([r[n] for r in recs]):.2f}" for n in names)
              + f" | {np.mean([r['joint_f1'] for r in recs]):.3f} | "
              f"{np.mean([r['struct_f1'] for r in recs]):.3f} | {body} |")
    if a.by_body:
        print("\n| body | links | " + " | ".join(names) + " | joints | joint F1 |")
        print("|" + " --- |" * (len(names) + 4))
        for body in sorted({r["body"] for r in rows["solver"]}):
            for name, recs in rows.items():
                mine = [r for r in recs if r["body"] == body]
                print(f"| {body} ({len(mine)}) | {name} | "
                      + " | ".join(f"{np.mean([r[n] for r in mine]):.2f}" for n in names)
                      + f" | {np.mean([r['joints'] for r in mine]):.1f} | "
                      f"{np.mean([r['joint_f1'] for r in mine]):.3f} |")
    lower = np.mean([o["total"] < s["total"] - 1e-6 for o, s in zip(rows["oracle"], rows["solver"])])
    print(f"\noracle's loss below the solver's on {lower:.0%} of the videos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
