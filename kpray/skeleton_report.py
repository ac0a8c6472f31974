"""Does the skeleton model learn? A trained checkpoint against three references on test episodes.

- the trained model: joints = points with a link >= 0.5, links from one seeded random frame per
  video (the paper's protocol, as ``kpray.train.predict.predict_from_checkpoint``);
- the untrained model: the same configuration, freshly initialised (seed 0), same protocol;
- the best constant skeleton: one link matrix [P, P] used for every video, on the trained
  model's points; the candidates are the trained model's own thresholded link matrices of all
  test videos, and the one with the highest mean Bcc is kept (for the row "Bcc, NaN videos left
  out", the one highest by that row). A model whose links do not depend on the image scores
  exactly this; beating it means the skeleton follows the image;
- the oracle choice from the trained points: per video, the points that a Hungarian matching
  (mean distance over the video) assigns to true joints within eps, linked as their true joints
  are. It is not a model: it is the best psi could do on these points, so it bounds what a
  better skeleton predictor alone can reach (pi's points must improve to go beyond it);
- the paper's numbers for the dataset (Tables I and II).

Also the image dependence: Spearman's rank correlation, over videos, between the predicted and
the true number of joints (NaN when either is constant), and link and joint counts per body.
Per body and true joint, the share of frames each is found (hits); and where the trained and
untrained points lie, frame by frame (``point_placement``): how much of the true links they can
paint and which true joints some point comes near.
``jobs/compare_skeleton.py`` is the command; ``make learn-skeleton`` ends with it.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np

from kpray.metrics import link_frame, spearman

KEYS = (("joint_f1", "joint F1", True), ("dist", "joint distance", False),
        ("diff", "joint count difference", False), ("consistency", "consistency", True),
        ("bcc", "structure Bcc", True), ("struct_f1", "structure F1", True),
        ("bcc_defined", "structure Bcc, NaN videos left out (as metrics.json)", True))
# Means over videos count an undefined score (NaN) as 0, except these, which leave such videos
# out as ``kpray.metrics.aggregate`` (metrics.json) does. Bcc is NaN where the matched joints'
# true pairs are all links (every 1-pole cartpole: 2 joints, 1 pair), so counted as 0 it caps
# even a perfect skeleton's mean below 1.
NAN_LEFT_OUT = {"bcc_defined"}
# How far a point paints: the transporter's 3x3 splat reaches 1 px along a row or column and
# 1.4 px diagonally, so a true link more than 1.5 px from every point is not painted by any.
SPLAT_REACH_PX = 1.5


def _video_record(ep, points_px, links_pp, eps: float) -> dict:
    """Metrics of one video from points [T, P, 2] pixels and link probabilities [P, P]."""
    from kpray.metrics import select_skeleton

    return _joints_record(ep, *select_skeleton(points_px, links_pp), eps)


def oracle_matches(ep, points_px, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(point indices, true joint indices) [K] each: the points [T, P, 2] pixels matched to true
    joints by a Hungarian matching on the mean distance over the video (``video_matching``,
    normalised units), kept where that mean is <= eps."""
    from kpray.metrics import normalise_pixels, pairwise_distances, video_matching

    points_px, gt = np.asarray(points_px, np.float64), np.asarray(ep["joints"], np.float64)
    size = np.asarray(ep["frames"]).shape[1]
    d = pairwise_distances(normalise_pixels(points_px, size), normalise_pixels(gt, size))
    rows, cols = video_matching(None, None, d)
    ok = d[:, rows, cols].mean(axis=0) <= eps
    return rows[ok], cols[ok]


def oracle_choice(ep, points_px, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The best joints psi could pick among the points: (joints [T, K, 2] pixels, adj [K, K]):
    the ``oracle_matches`` of points_px [T, P, 2], linked as the true joints they match."""
    rows, cols = oracle_matches(ep, points_px, eps)
    adj = np.asarray(ep["adjacency"], bool)[np.ix_(cols, cols)]
    return np.asarray(points_px, np.float64)[:, rows], adj


def _joint_names(ep, count: int) -> list:
    """The true joints' names from the episode's meta, else their indices 0 .. count - 1."""
    return list(ep.get("meta", {}).get("joint_names") or range(count))


def _joints_record(ep, joints, adj, eps: float) -> dict:
    """Metrics of one video from joints [T, K, 2] pixels and adjacency [K, K]."""
    from kpray.evaluation import evaluate_video

    r = evaluate_video(ep, joints, adj, eps)
    hits = r["hits"]
    return {"hits": hits.tolist(),
            "joint_names": _joint_names(ep, len(hits)),
            "joint_f1": r["joints"]["f1"], "dist": r["joints"]["dist"], "diff": r["joints"]["diff"],
            "consistency": r["joints"]["consistency"], "bcc": r["structure"]["bcc"],
            "bcc_defined": r["structure"]["bcc"],
            "struct_f1": r["structure"]["f1"], "joints": int(joints.shape[1]),
            "links": int(np.triu(adj, 1).sum()), "true_joints": int(np.asarray(ep["joints"]).shape[1]),
            "body": str(ep.get("meta", {}).get("body", "?"))}


def _mean(records: list[dict]) -> dict:
    """Means over videos; an undefined score (NaN) counts as 0 for higher-is-better keys (except
    ``NAN_LEFT_OUT``)."""
    out = {}
    for k, _, higher in KEYS:
        a = np.array([r[k] for r in records], dtype=np.float64)
        if higher and k not in NAN_LEFT_OUT:
            a = np.nan_to_num(a, nan=0.0)
        a = a[~np.isnan(a)]
        out[k] = float(a.mean()) if a.size else math.nan
    out["joints"] = float(np.mean([r["joints"] for r in records])) if records else math.nan
    return out


def per_body(records: list[dict]) -> dict:
    """{body: {"videos", "true_joints", "joints", "links", "hits", "joint_names"}} (means over
    the body's videos; "hits" per true joint, in the body's joint order, where every video of
    the body has the same joints, else empty)."""
    groups = defaultdict(list)
    for r in records:
        groups[r["body"]].append(r)
    out = {}
    for b, g in sorted(groups.items()):
        names = [r.get("joint_names") for r in g]
        same = "hits" in g[0] and all(n == names[0] for n in names)
        out[b] = {"videos": len(g), "true_joints": float(np.mean([r["true_joints"] for r in g])),
                  "joints": float(np.mean([r["joints"] for r in g])),
                  "links": float(np.mean([r["links"] for r in g])),
                  "hits": np.mean([r["hits"] for r in g], axis=0).tolist() if same else [],
                  "joint_names": [str(n) for n in names[0]] if same else []}
    return out


def point_placement(episodes: list[dict], preds: list[tuple], eps: float) -> dict:
    """Where the points lie, frame by frame and whatever their links: {body: {"coverage",
    "reach", "joint_names"}}, means over the body's videos of ``kpray.metrics.skeleton_coverage``
    (share of the true links within ``SPLAT_REACH_PX`` of a point, sampled every 0.5 px) and of
    ``joint_reach_rates`` (per true joint, the share of frames with some point within eps,
    normalised units). preds: (points [T, P, 2] pixels, links) per episode."""
    from kpray.metrics import joint_reach_rates, normalise_pixels, skeleton_coverage

    groups = defaultdict(list)
    for ep, (pts, _) in zip(episodes, preds):
        size = np.asarray(ep["frames"]).shape[1]
        gt, adj = np.asarray(ep["joints"], np.float64), np.asarray(ep["adjacency"], bool)
        names = [str(n) for n in _joint_names(ep, gt.shape[1])]
        groups[str(ep.get("meta", {}).get("body", "?"))].append(
            (skeleton_coverage(pts, gt, adj, SPLAT_REACH_PX, 0.5),
             joint_reach_rates(normalise_pixels(pts, size), normalise_pixels(gt, size), eps), names))
    out = {}
    for body, g in sorted(groups.items()):
        same = all(len(r) == len(g[0][1]) and n == g[0][2] for _, r, n in g)
        out[body] = {"coverage": float(np.nanmean([c for c, _, _ in g])),
                     "reach": np.mean([r for _, r, _ in g], axis=0).tolist() if same else [],
                     "joint_names": g[0][2] if same else []}
    return out


def _predict_all(adapter, model, episodes, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(points [T, P, 2] pixels, links [P, P] of one seeded random frame) per episode."""
    out = []
    for ep in episodes:
        f = link_frame(seed, int(ep.get("meta", {}).get("index", 0)), len(ep["frames"]))
        p = adapter.predict(model, ep["frames"], link_frame=f)
        out.append((p["points"], p["links"][f]))
    return out


def compare_skeleton(checkpoint: str, episodes: list[dict], eps: float | None = None,
                     seed: int = 0, dataset: str | None = None, overrides: dict | None = None) -> dict:
    """The comparison (see the module docstring) as a dict: ``rows`` {name: means}, ``paper``,
    ``spearman`` {name: rho}, ``bodies`` {name: per_body}, ``eps``, ``videos``. ``overrides``:
    model config fields changed at loading (``kpray.train.predict.load_checkpoint``)."""
    import torch

    from kpray.evaluation import EvaluationError
    from kpray.metrics import PAPER_TABLE_I, PAPER_TABLE_II, paper_epsilon
    from kpray.train.models import get_adapter
    from kpray.train.predict import load_checkpoint

    if not episodes:
        raise EvaluationError("no test episodes to compare on")
    state, cfg = load_checkpoint(checkpoint, overrides)
    if cfg.model != "skeleton":
        raise EvaluationError(f"{checkpoint} holds a {cfg.model} model; this compares skeleton models")
    dataset = dataset or str(episodes[0].get("meta", {}).get("dataset", ""))
    if eps is None:
        eps = paper_epsilon(dataset) or 0.2
    adapter = get_adapter("skeleton")
    trained = adapter.build(cfg)
    trained.load_state_dict(state["model"])
    torch.manual_seed(seed)
    untrained = adapter.build(cfg)
    preds = {}
    for name, model in (("trained", trained), ("untrained", untrained)):
        model.eval()
        preds[name] = _predict_all(adapter, model, episodes, seed)
    records = {name: [_video_record(ep, pts, links, eps) for ep, (pts, links) in zip(episodes, p)]
               for name, p in preds.items()}
    figure = skeletons_figure(episodes, preds["trained"], trained.config.link_threshold)

    # the best constant skeleton on the trained points
    thr = trained.config.link_threshold
    candidates = {np.asarray(links >= thr).tobytes(): (links >= thr).astype(np.float64)
                  for _, links in preds["trained"]}
    best, best_bcc, best_defined = None, -1.0, math.nan
    for adj in candidates.values():
        recs = [_video_record(ep, pts, adj, eps) for ep, (pts, _) in zip(episodes, preds["trained"])]
        m = _mean(recs)
        if m["bcc"] > best_bcc:
            best, best_bcc = recs, m["bcc"]
        if not math.isnan(m["bcc_defined"]) and not m["bcc_defined"] <= best_defined:
            best_defined = m["bcc_defined"]
    records["best constant skeleton"] = best
    records["oracle choice of points"] = [_joints_record(ep, *oracle_choice(ep, pts, eps), eps)
                                          for ep, (pts, _) in zip(episodes, preds["trained"])]

    from kpray.losses.skeleton import preset_for_dataset

    family = preset_for_dataset(dataset)           # cartpole:3 -> cartpoles, walker -> mwhc
    family = family if family in PAPER_TABLE_I["ours"] else None
    paper = {}
    if family is not None:
        t1, t2 = PAPER_TABLE_I["ours"][family], PAPER_TABLE_II["ours"][family]
        paper = {"joint_f1": t2["f1"], "dist": t2["dist"], "diff": t2["diff"],
                 "consistency": t2["consistency"], "bcc": t1["bcc"], "struct_f1": t1["f1"]}
    rows = {name: _mean(r) for name, r in records.items()}
    rows["best constant skeleton"]["bcc_defined"] = best_defined
    return {"dataset": dataset, "paper_dataset": family, "eps": eps, "videos": len(episodes),
            "steps": int(state.get("step", 0)), "rows": rows,
            "spearman": {name: spearman([x["joints"] for x in r], [x["true_joints"] for x in r])
                         for name, r in records.items()},
            "bodies": {name: per_body(r) for name, r in records.items()},
            "placement": {name: point_placement(episodes, p, eps) for name, p in preds.items()},
            "paper": paper, "figure": figure}


def to_markdown(c: dict) -> str:
    """The comparison as Markdown tables (metrics, then link and joint counts per body)."""
    names = list(c["rows"])
    head = "| metric | " + " | ".join(names) + " | paper (full scale) |"
    paper = f", paper's row: {c['paper_dataset']}" if c.get("paper_dataset") else ""
    lines = [f"Skeleton model on {c['dataset']} after {c['steps']} steps: {c['videos']} test "
             f"videos, eps {c['eps']}{paper}", "", head, "|" + " --- |" * (len(names) + 2)]
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    for k, label, higher in KEYS:
        arrow = "higher" if higher else "lower"
        lines.append(f"| {label} ({arrow} is better) | " + " | ".join(fmt(c["rows"][n][k]) for n in names)
                     + f" | {fmt(c['paper'].get(k))} |")
    lines.append("| predicted joints per video | " + " | ".join(fmt(c["rows"][n]["joints"]) for n in names)
                 + " | |")
    lines.append("| Spearman(predicted, true joint count) | "
                 + " | ".join(fmt(c["spearman"][n]) for n in names) + " | |")
    lines += ["", "| body | videos | true joints | " + " | ".join(f"{n}: joints / links" for n in names) + " |",
              "|" + " --- |" * (3 + len(names))]
    bodies = c["bodies"][names[0]]
    for b, info in bodies.items():
        cells = [f"{c['bodies'][n][b]['joints']:.1f} / {c['bodies'][n][b]['links']:.1f}" for n in names]
        lines.append(f"| {b} | {info['videos']} | {info['true_joints']:.0f} | " + " | ".join(cells) + " |")
    if any(info.get("hits") for info in bodies.values()):
        lines += ["", "Share of frames in which a true joint is found (its matched predicted joint "
                  "within eps), per true joint in the body's order:", "",
                  "| body | true joints | " + " | ".join(names) + " |",
                  "|" + " --- |" * (2 + len(names))]
        for b, info in bodies.items():
            cells = [" ".join(f"{h:.2f}" for h in c["bodies"][n][b].get("hits", [])) for n in names]
            lines.append(f"| {b} | {' '.join(info.get('joint_names', []))} | " + " | ".join(cells) + " |")
    placement = c.get("placement") or {}
    if placement:
        who = list(placement)
        lines += ["", f"Where the points lie, frame by frame (no matching): the share of the true links "
                  f"within {SPLAT_REACH_PX:g} px of a point (what 3x3 splats can paint), and per true "
                  "joint the share of frames in which some point lies within eps (an upper bound on "
                  "the share above, which holds one point per joint over the video):", "",
                  "| body | true joints | " + " | ".join(f"{n}: links covered | {n}: joints reached"
                                                         for n in who) + " |",
                  "|" + " --- |" * (2 + 2 * len(who))]
        for b in placement[who[0]]:
            cells = [f"{placement[n][b]['coverage']:.2f} | "
                     + " ".join(f"{r:.2f}" for r in placement[n][b]["reach"]) for n in who]
            lines.append(f"| {b} | {' '.join(placement[who[0]][b]['joint_names'])} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def skeletons_figure(episodes: list[dict], preds: list[tuple], thr: float = 0.5, scale: int = 3):
    """One test frame per body kind (sorted by name), side by side: the frame with the true
    skeleton above, the predicted joints and links below. preds: (points [T, P, 2] pixels,
    links [P, P]) per episode, as ``_predict_all``. Returns a PIL image."""
    from kpray.metrics import select_skeleton
    from kpray.train.adapter import draw_points, grid

    first = {}
    for ep, pr in zip(episodes, preds):
        first.setdefault(str(ep.get("meta", {}).get("body", "?")), (ep, pr))
    top, bottom = [], []
    for body in sorted(first):
        ep, (pts, links) = first[body]
        frames = np.asarray(ep["frames"])
        t = len(frames) // 2
        top.append(draw_points(frames[t], np.asarray(ep["joints"])[t],
                               np.asarray(ep["adjacency"], bool), scale=scale))
        joints, adj = select_skeleton(pts, links, thr)
        bottom.append(draw_points(frames[t], joints[t], adj, scale=scale))
    return grid([top, bottom])


def write_comparison(c: dict, out_dir: str) -> tuple[str, str]:
    """OUT/comparison.json, OUT/comparison.md and OUT/skeletons.png (one test frame per body:
    true skeleton above, predicted below); returns the first two paths."""
    os.makedirs(out_dir, exist_ok=True)
    pj, pm = os.path.join(out_dir, "comparison.json"), os.path.join(out_dir, "comparison.md")
    c = dict(c)
    figure = c.pop("figure", None)
    if figure is not None:
        figure.save(os.path.join(out_dir, "skeletons.png"))
    with open(pj + ".tmp", "w") as f:
        json.dump(c, f, indent=2, sort_keys=True, default=float)
    with open(pm + ".tmp", "w") as f:
        f.write(to_markdown(c))
    os.replace(pj + ".tmp", pj)
    os.replace(pm + ".tmp", pm)
    return pj, pm
