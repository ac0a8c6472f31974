"""Does AutoLink learn? A trained checkpoint against the untrained model on test episodes.

- the trained model: the run's newest checkpoint (or the ``checkpoint_*`` folder given);
- the untrained model: the same configuration built as the training loop builds it at step 0
  (``kpray.train.loop.train_func``: ``seed_everything(cfg.seed + 1000 * rank)`` then
  ``adapter.build(cfg)``), with rank 0's seed. This is **exact**: DDP broadcasts rank 0's
  parameters, and every trainable parameter and buffer of ``AutoLink`` is drawn before its
  frozen loss network is built, so building it here with ``loss="pixel_grad"`` and
  ``pretrained=False`` (no VGG to construct) leaves the weights unchanged; it holds for the same
  torch version (CPU initialisation either way). Tested in ``tests/test_autolink_report.py``.

Rows of the table, for each model (``compare_autolink``):

1. keypoint regression error (``kpray.train.predict.autolink_regression``): fitted on up to
   ``regression_episodes`` train split episodes of the test set's most common body, scored on
   the test episodes of that body; ``regression_error`` under our default protocol (h36m with
   the body's left/right swap) and ``regression_error_plain``; fractions of the image size;
2. ``spread_ratio``: mean over all test frames of the keypoints' mean pairwise distance over
   the same mean for the GT joints (``kpray.metrics.keypoint_spread``; every body pooled);
3. joint and structure metrics (``kpray.evaluation.evaluate_video`` with the model's
   thresholded shared graph, ``adapter._adjacency``), averaged over test videos as training's
   validation does (``kpray.train.adapter.score_metrics``: an undefined score counts as 0);
4. limb agreement of the learned graph (:func:`limb_agreement`) on the most common body.

``jobs/compare_autolink.py`` is the command; it writes OUT/comparison.{json,md} and
OUT/autolink_graph.png (:func:`graph_figure`).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

FIGURE = "autolink_graph.png"

# (key, label, higher is better, target: (op, value) or None)
KEYS = (("regression_error", "keypoint regression error, default protocol", False, ("<=", 0.09)),
        ("regression_error_plain", "keypoint regression error, plain", False, ("<=", 0.09)),
        ("spread_ratio", "spread ratio (keypoints / GT joints)", True, (">=", 0.6)),
        ("joint_f1", "joint F1", True, (">=", 0.65)),
        ("dist", "joint distance", False, None),
        ("bcc", "structure Bcc", True, None),
        ("struct_f1", "structure F1", True, None),
        ("limb_same_or_adjacent", "top-E edges on the same or adjacent limb", True, None),
        ("limb_random_same_or_adjacent", "  random pairs: same or adjacent limb", None, None),
        ("limb_same", "top-E edges on the same limb", True, None),
        ("limb_random_same", "  random pairs: same limb", None, None),
        ("limb_distance_px", "keypoint to its limb, median px", False, None))
ROWS = ("untrained", "trained")


# ----------------------------------------------------------------------------- limb agreement

def segment_distances(points, a, b) -> np.ndarray:
    """Distances from points ``[N, K, 2]`` to segments ``a``-``b`` ``[N, E, 2]`` each:
    ``[N, K, E]`` (a degenerate segment is its point)."""
    p = np.asarray(points, np.float64)[:, :, None, :]          # [N, K, 1, 2]
    a = np.asarray(a, np.float64)[:, None, :, :]               # [N, 1, E, 2]
    ab = np.asarray(b, np.float64)[:, None, :, :] - a
    den = (ab ** 2).sum(-1)
    t = np.where(den > 0, ((p - a) * ab).sum(-1) / np.where(den > 0, den, 1.0), 0.0)
    closest = a + np.clip(t, 0.0, 1.0)[..., None] * ab
    return np.linalg.norm(p - closest, axis=-1)


def gt_limbs(adjacency) -> list[tuple[int, int]]:
    """The GT edges (limb segments) ``(i, j)``, ``i < j``, of a ``[J, J]`` adjacency."""
    adj = np.asarray(adjacency).astype(bool)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(adj | adj.T, 1)))]


def top_edges(edge_weights, n: int) -> list[tuple[int, int, float]]:
    """The ``n`` heaviest unordered pairs ``(i, j, weight)`` of a ``[K, K]`` graph (weight of
    {i, j}: ``w[i, j]`` with ``i < j``), heaviest first; ties in row-major pair order."""
    w = np.asarray(edge_weights, np.float64)
    iu, ju = np.triu_indices(w.shape[0], k=1)
    order = np.argsort(-w[iu, ju], kind="stable")[:max(0, int(n))]
    return [(int(iu[o]), int(ju[o]), float(w[iu[o], ju[o]])) for o in order]


def limb_agreement(keypoints, joints, adjacency, edge_weights, n_edges: int | None = None) -> dict:
    """Do the strongest edges of AutoLink's graph link keypoints on the same limb?

    keypoints ``[N, K, 2]`` and joints ``[N, J, 2]``: pixels, the same N frames (one body kind);
    adjacency ``[J, J]``: the GT skeleton, whose E edges are the limbs; edge_weights ``[K, K]``.

    Each keypoint k is assigned to the limb it lies closest to: the argmin over limbs of the
    median over the frames of its distance to the limb's segment (ties: the first limb). The
    ``n_edges`` (default E) heaviest pairs of the graph are then scored: ``same_or_adjacent`` is
    the fraction whose two keypoints are on the same limb or on two limbs sharing a joint,
    ``same`` the fraction on the same limb. ``random_same_or_adjacent`` / ``random_same``: the
    same fractions expected of as many keypoint pairs drawn at random (without replacement) —
    exactly the fraction among all ``K (K - 1) / 2`` pairs.

    Returns those four, ``n_edges``, ``limbs`` [(i, j)], ``assignment`` [K] (limb index per
    keypoint), ``distance_px`` [K] (each keypoint's median distance to its limb),
    ``median_distance_px`` (their median) and ``edges`` [(i, j, weight)]. The fractions are NaN
    when the body has no limb or K < 2.
    """
    kp, gt = np.asarray(keypoints, np.float64), np.asarray(joints, np.float64)
    if kp.ndim != 3 or gt.ndim != 3 or kp.shape[0] != gt.shape[0] or kp.shape[2] != 2:
        raise ValueError(f"keypoints [N, K, 2] and joints [N, J, 2] of the same frames needed, got "
                         f"{kp.shape} and {gt.shape}")
    k = kp.shape[1]
    limbs = gt_limbs(adjacency)
    n_edges = len(limbs) if n_edges is None else int(n_edges)
    n_edges = min(n_edges, k * (k - 1) // 2)
    nan = {"same_or_adjacent": math.nan, "same": math.nan, "random_same_or_adjacent": math.nan,
           "random_same": math.nan, "n_edges": n_edges, "limbs": limbs, "assignment": [],
           "distance_px": [], "median_distance_px": math.nan, "edges": []}
    if not limbs or k < 2 or kp.shape[0] == 0 or n_edges < 1:
        return nan
    ia, ib = np.array([l[0] for l in limbs]), np.array([l[1] for l in limbs])
    med = np.median(segment_distances(kp, gt[:, ia], gt[:, ib]), axis=0)     # [K, E]
    assign = med.argmin(axis=1)
    dist = med[np.arange(k), assign]
    # limbs that are the same or share a joint: [E, E]
    ends = [set(l) for l in limbs]
    near = np.array([[bool(e & f) for f in ends] for e in ends])
    same_kk = assign[:, None] == assign[None, :]
    near_kk = near[assign][:, assign]
    edges = top_edges(edge_weights, n_edges)
    iu, ju = np.triu_indices(k, k=1)
    return {"same_or_adjacent": float(np.mean([near_kk[i, j] for i, j, _ in edges])),
            "same": float(np.mean([same_kk[i, j] for i, j, _ in edges])),
            "random_same_or_adjacent": float(near_kk[iu, ju].mean()),
            "random_same": float(same_kk[iu, ju].mean()), "n_edges": n_edges, "limbs": limbs,
            "assignment": [int(a) for a in assign], "distance_px": [float(d) for d in dist],
            "median_distance_px": float(np.median(dist)), "edges": edges}


# ----------------------------------------------------------------------------- models

def _prediction_config(cfg):
    """The checkpoint's config, built without the perceptual network's weights or VGG (the
    loss network is not part of the state dict and is not needed to predict)."""
    return cfg.replace(model_config={**cfg.model_config, "pretrained": False, "loss": "pixel_grad"})


def trained_model(checkpoint: str):
    """``(model, adapter, cfg, state)`` of an AutoLink checkpoint (run folder: newest), in eval
    mode on the CPU; ``cfg`` is the checkpoint's own config. EvaluationError when there is no
    checkpoint or it holds another model."""
    from kpray.evaluation import EvaluationError
    from kpray.train.models import get_adapter
    from kpray.train.predict import load_checkpoint

    state, cfg = load_checkpoint(checkpoint)
    if cfg.model != "autolink":
        raise EvaluationError(f"{checkpoint} holds a {cfg.model} model; this compares AutoLink models")
    adapter = get_adapter("autolink")
    model = adapter.build(_prediction_config(cfg))
    model.load_state_dict(state["model"])
    model.eval()
    return model, adapter, cfg, state


def untrained_model(cfg, init_choice: int | None = None):
    """The run's step-0 AutoLink, exactly (see the module docstring): ``seed_everything(cfg.seed)``
    (rank 0's seed in ``train_func``) then ``adapter.build``; in eval mode on the CPU.
    ``init_choice``: the start a run with ``init_candidates`` > 1 chose at step 0 (its
    checkpoint's ``init_choice`` buffer); that start's weights are loaded."""
    from kpray.train.loop import seed_everything
    from kpray.train.models import get_adapter

    seed_everything(cfg.seed)
    model = get_adapter("autolink").build(_prediction_config(cfg))
    if init_choice is not None and init_choice >= 1:
        model.load_state_dict(model.candidate_state(int(init_choice)))
    model.eval()
    return model


# ----------------------------------------------------------------------------- comparison

def _spread_ratio(kps: list, episodes: list) -> float:
    """Mean per-frame keypoint spread over all test frames / the same for the GT joints (every
    body pooled; videos with fewer than 2 GT joints left out). NaN when nothing is left."""
    from kpray.metrics import keypoint_spread

    pairs = [(kp, np.asarray(ep["joints"])) for kp, ep in zip(kps, episodes)
             if np.asarray(ep["joints"]).shape[1] >= 2 and len(kp)]
    num = sum(keypoint_spread(kp) * len(kp) for kp, _ in pairs)
    den = sum(keypoint_spread(gt) * len(gt) for _, gt in pairs)
    return num / den if den > 0 else math.nan


def _train_episodes(data: str, body, limit: int) -> list:
    """Up to ``limit`` train split episodes of ``body`` from ``data`` (FileNotFoundError: none)."""
    from kpray.data import iter_episodes
    from kpray.evaluation import episode_body

    out = []
    for ep in iter_episodes(data, split="train"):
        if ep.get("meta", {}).get("split", "train") == "train" and episode_body(ep) == body:
            out.append(ep)
            if len(out) >= limit:
                break
    return out


def compare_autolink(checkpoint: str, episodes: list[dict], data: str | None = None,
                     eps: float | None = None, regression_episodes: int = 60) -> dict:
    """The comparison (module docstring) as a dict: ``rows`` {untrained, trained: {KEYS}},
    ``targets``, ``regression`` {name: block}, ``limbs`` {name: limb_agreement}, ``body``,
    ``dataset``, ``eps``, ``videos``, ``steps``, ``checkpoint``; ``figure`` (a matplotlib figure,
    popped by :func:`write_comparison`). ``data``: the shard folder whose train split the
    regression is fitted on (None, or ``regression_episodes`` 0: no regression)."""
    from kpray.evaluation import (EvaluationError, episode_body, evaluate_video,
                                  most_common_body)
    from kpray.train.adapter import epsilon_for, score_metrics
    from kpray.train.predict import _episode_keypoints, autolink_regression

    if not episodes:
        raise EvaluationError("no test episodes to compare on")
    if regression_episodes < 0:
        raise EvaluationError(f"--regression-episodes must be >= 0, got {regression_episodes}")
    if eps is not None and not eps > 0:
        raise EvaluationError(f"--eps must be positive, got {eps}")
    trained, adapter, cfg, state = trained_model(checkpoint)
    choice = state["model"].get("init_choice")
    untrained = untrained_model(cfg, None if choice is None else int(choice))
    models = {"untrained": untrained, "trained": trained}
    eps = float(eps) if eps is not None else epsilon_for(cfg, episodes)
    body = most_common_body(episodes)
    on_body = [i for i, ep in enumerate(episodes) if episode_body(ep) == body]
    gt_adj = np.asarray(episodes[on_body[0]]["adjacency"], bool)

    train, skipped = [], None
    if data is None or regression_episodes == 0:
        skipped = "turned off"
    else:
        try:
            train = _train_episodes(data, body, regression_episodes)
        except FileNotFoundError:
            skipped = f"no train split shards in {data}"
        if not train and skipped is None:
            skipped = f"no train split episode of the test body ({body[0]} joints)"

    rows, regression, limbs, kps = {}, {}, {}, {}
    for name, model in models.items():
        kp = [_episode_keypoints(model, adapter, np.asarray(ep["frames"])) for ep in episodes]
        kps[name] = kp
        adj = adapter._adjacency(model)
        m = score_metrics([evaluate_video(ep, k, adj, eps) for ep, k in zip(episodes, kp)])
        w = model.edge_weights().detach().cpu().numpy()
        la = limb_agreement(np.concatenate([kp[i] for i in on_body]),
                            np.concatenate([np.asarray(episodes[i]["joints"]) for i in on_body]),
                            gt_adj, w)
        la["edge_weights"] = w.tolist()
        limbs[name] = la
        if train:
            regression[name] = autolink_regression(model, adapter, train, episodes,
                                                   max_train_episodes=regression_episodes)
        else:
            regression[name] = {"error": None, "plain_error": None, "skipped": skipped}
        reg = regression[name]
        rows[name] = {
            "regression_error": math.nan if reg["error"] is None else reg["error"],
            "regression_error_plain": math.nan if reg["plain_error"] is None else reg["plain_error"],
            "spread_ratio": _spread_ratio(kp, episodes),
            "joint_f1": m["val_joint_f1"], "dist": m["val_dist"], "bcc": m["val_bcc"],
            "struct_f1": m["val_struct_f1"],
            "limb_same_or_adjacent": la["same_or_adjacent"],
            "limb_random_same_or_adjacent": la["random_same_or_adjacent"],
            "limb_same": la["same"], "limb_random_same": la["random_same"],
            "limb_distance_px": la["median_distance_px"]}
    dataset = str(episodes[0].get("meta", {}).get("dataset", cfg.preset or "?"))
    figure = graph_figure(episodes, kps, {n: limbs[n]["edge_weights"] for n in models})
    return {"dataset": dataset, "eps": eps, "videos": len(episodes),
            "steps": int(state.get("step", 0)), "checkpoint": str(checkpoint),
            "keypoints": int(cfg.model_config.get("num_keypoints", kps["trained"][0].shape[1])),
            "body": {"joints": body[0], "joint_names": list(body[1]) if body[1] else None,
                     "limbs": len(gt_limbs(gt_adj)), "videos": len(on_body)},
            "rows": rows, "targets": {k: list(t) for k, _, _, t in KEYS if t},
            "regression": regression, "limbs": limbs,
            "untrained_model": f"the run's exact step-0 weights (seed {cfg.seed}, rank 0 of train_func)",
            "figure": figure}


# ----------------------------------------------------------------------------- output

def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def to_markdown(c: dict) -> str:
    """The comparison as a Markdown table: metric | untrained | trained | target."""
    b = c["body"]
    reg = c["regression"].get("trained", {})
    note = (f"; regression: {reg['skipped']}" if reg.get("skipped") else
            f"; regression fitted on {reg.get('n_train_episodes')} train episodes")
    lines = [f"AutoLink on {c['dataset']} after {c['steps']} steps: {c['videos']} test videos, "
             f"eps {c['eps']}, K = {c['keypoints']} keypoints; limb agreement on the "
             f"{b['joints']}-joint body ({b['videos']} videos, E = {b['limbs']} limbs){note}",
             "", "| metric | untrained | trained | target |", "| --- | --- | --- | --- |"]
    for k, label, higher, target in KEYS:
        arrow = "" if higher is None else (" (higher is better)" if higher else " (lower is better)")
        t = f"{target[0]} {target[1]}" if target else ""
        lines.append(f"| {label}{arrow} | " + " | ".join(_fmt(c["rows"][n][k]) for n in ROWS)
                     + f" | {t} |")
    return "\n".join(lines) + "\n"


def graph_figure(episodes: list[dict], kps: dict, weights: dict, n_frames: int = 4):
    """A matplotlib figure: for ``n_frames`` test frames of different episodes (rows), the
    trained model's keypoints (one colour per keypoint) with its top-E edges (gold; E = the body's
    GT edge count; line width by weight), the GT skeleton, and the untrained model's keypoints
    with its top-E edges; on the right, the trained and the untrained [K, K] edge-weight matrices
    (a strip below each gives the keypoints' colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt

    from kpray.preview import joint_colours

    n = min(n_frames, len(episodes))
    picks = [round(i * (len(episodes) - 1) / max(1, n - 1)) for i in range(n)] if n > 1 else [0]
    fig = plt.figure(figsize=(4 * 2.6, max(2, n) * 2.6))
    gs = fig.add_gridspec(max(2, n), 4)
    k = kps["trained"][0].shape[1]
    colours = [tuple(c / 255 for c in rgb) for rgb in joint_colours(k)]

    def keypoint_panel(ax, frame, pts, w, n_edges, title):
        ax.imshow(frame)
        edges = top_edges(w, n_edges)
        top = max([e[2] for e in edges] + [1e-12])
        for i, j, wt in edges:
            ax.plot([pts[i, 0], pts[j, 0]], [pts[i, 1], pts[j, 1]], "-", color="gold",
                    lw=0.5 + 3.5 * wt / top, alpha=0.9, zorder=2)
        ax.scatter(pts[:, 0], pts[:, 1], s=30, c=colours, edgecolors="black", linewidths=0.6,
                   zorder=3)
        ax.set_title(title, fontsize=8)

    for r, e in enumerate(picks):
        ep = episodes[e]
        frames, gt = np.asarray(ep["frames"]), np.asarray(ep["joints"])
        t = len(frames) // 2
        limbs = gt_limbs(ep["adjacency"])
        idx = ep.get("meta", {}).get("index", e)
        ax = fig.add_subplot(gs[r, 0])
        keypoint_panel(ax, frames[t], kps["trained"][e][t], np.asarray(weights["trained"]),
                       len(limbs), f"trained, top {len(limbs)} edges (ep {idx}, t {t})")
        ax = fig.add_subplot(gs[r, 1])
        ax.imshow(frames[t])
        for i, j in limbs:
            ax.plot([gt[t, i, 0], gt[t, j, 0]], [gt[t, i, 1], gt[t, j, 1]], "-", color="white", lw=2)
        ax.scatter(gt[t, :, 0], gt[t, :, 1], s=30, c="red", edgecolors="black", linewidths=0.6,
                   zorder=3)
        ax.set_title("GT skeleton", fontsize=8)
        ax = fig.add_subplot(gs[r, 2])
        keypoint_panel(ax, frames[t], kps["untrained"][e][t], np.asarray(weights["untrained"]),
                       len(limbs), "untrained")
    rows = max(2, n)
    for pos, name in ((slice(0, rows // 2), "trained"), (slice(rows // 2, rows), "untrained")):
        ax = fig.add_subplot(gs[pos, 3])
        im = ax.imshow(np.asarray(weights[name]), cmap="viridis")
        for tick, rgb in zip(range(k), colours):      # keypoint colours as in the frames
            ax.add_patch(matplotlib.patches.Rectangle((tick - 0.5, k - 0.45), 1, 0.4, color=rgb,
                                                      clip_on=False))
        ax.set_title(f"{name} edge weights [K, K]", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in fig.axes:
        if ax.get_images() and "edge weights" not in ax.get_title():
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def write_comparison(c: dict, out_dir: str) -> tuple[str, str]:
    """OUT/comparison.json (NaN as null), OUT/comparison.md and OUT/autolink_graph.png; returns
    the first two paths."""
    os.makedirs(out_dir, exist_ok=True)
    pj, pm = os.path.join(out_dir, "comparison.json"), os.path.join(out_dir, "comparison.md")
    c = dict(c)
    figure = c.pop("figure", None)
    if figure is not None:
        import matplotlib.pyplot as plt

        figure.savefig(os.path.join(out_dir, FIGURE), dpi=100)
        plt.close(figure)
        c["figure"] = FIGURE
    with open(pj + ".tmp", "w") as f:
        json.dump(_nan_to_none(c), f, indent=2, sort_keys=True, default=float)
    with open(pm + ".tmp", "w") as f:
        f.write(to_markdown(c))
    os.replace(pj + ".tmp", pj)
    os.replace(pm + ".tmp", pm)
    return pj, pm


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, np.generic):
        return _nan_to_none(x.item())
    return x
