"""The evaluation job's logic: predictions + test episodes -> metrics.json, tables.md, figures.

Predictions file format (``.npz``, written e.g. with ``np.savez_compressed``), one pair of
arrays per test episode, keyed by the episode's ``meta["index"]`` (an int):

- ``points_{index}``: ``[T, P, 2]`` float, predicted joint trajectories in pixels of the
  episode's frames (``[..., 0]`` = x = column, ``[..., 1]`` = y = row, pixel centres at integers),
  the same convention as the episodes' ``joints``. T must equal the episode's T; P may be 0.
- ``adj_{index}``: ``[P, P]`` bool predicted adjacency (probabilities are accepted and binarised
  with ``>= 0.5``); read symmetrically (logical OR), diagonal ignored.
- optional ``model``: 0-d string array, the name of the evaluated model (table column title).

For the skeleton model, ``points`` are the foreground points kept by
:func:`kpray.metrics.select_skeleton` (at least one link with probability >= 0.5 in the one
randomly chosen frame) and ``adj`` their binarised links; for AutoLink, its K keypoints and
:func:`kpray.metrics.autolink_adjacency` of its shared graph.

Every episode of the evaluated split (and dataset, if given) needs a prediction and every
prediction an episode; anything else is an :class:`EvaluationError` raised before anything is
written.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from kpray import metrics as M

_KEY = re.compile(r"^(points|adj)_(-?\d+)$")


class EvaluationError(ValueError):
    """Bad input to the evaluation (one-line message meant for the user)."""


def error_exit(prog: str, e: BaseException) -> int:
    """A job's failure as one line on stderr (``prog: error: ...``; the exception's type is named
    unless it is an EvaluationError, whose message is meant for the user); returns exit code 2."""
    import sys

    first = str(e).splitlines()[0] if str(e) else ""
    msg = first if isinstance(e, EvaluationError) else f"{type(e).__name__}: {first}"
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


def load_predictions(path) -> tuple[dict[int, dict], str | None]:
    """Read a predictions ``.npz``.

    Returns ``({index: {"points": [T, P, 2], "adj": [P, P]}}, model name or None)``.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"predictions file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # corrupt zip, not an npz, pickled objects
        raise EvaluationError(f"cannot read predictions file {path}: {e}") from None
    model = None
    if "model" in arrays:
        model = str(arrays.pop("model"))
    preds: dict[int, dict] = {}
    for key, arr in arrays.items():
        m = _KEY.match(key)
        if not m:
            raise EvaluationError(f"{path}: unexpected array {key!r} (expected points_<index>, "
                                  "adj_<index>, model)")
        preds.setdefault(int(m.group(2)), {})[m.group(1)] = arr
    for idx, p in sorted(preds.items()):
        if "points" not in p or "adj" not in p:
            missing = "adj" if "points" in p else "points"
            raise EvaluationError(f"{path}: episode {idx} has no {missing}_{idx}")
        check_prediction(idx, p["points"], p["adj"])
    if not preds:
        raise EvaluationError(f"{path}: no predictions in file")
    return preds, model


def check_prediction(index: int, points: np.ndarray, adj: np.ndarray) -> None:
    """Shapes and values of one video's prediction; raises :class:`EvaluationError`."""
    if points.ndim != 3 or points.shape[2] != 2 or not np.issubdtype(points.dtype, np.number):
        raise EvaluationError(f"points_{index} must be numeric [T, P, 2], got {points.dtype} "
                              f"{points.shape}")
    if not np.isfinite(points).all():
        raise EvaluationError(f"points_{index} has non-finite values")
    p = points.shape[1]
    if adj.shape != (p, p):
        raise EvaluationError(f"adj_{index} must be [{p}, {p}] for {p} points, got {adj.shape}")
    if not (adj.dtype == np.bool_ or np.issubdtype(adj.dtype, np.number)):
        raise EvaluationError(f"adj_{index} must be bool or numeric, got {adj.dtype}")


def epsilon_for(dataset: str, eps: float | None) -> float:
    """The hit threshold: ``eps`` if given, else the paper's for ``dataset``."""
    if eps is not None:
        if not eps > 0:
            raise EvaluationError(f"--eps must be positive, got {eps}")
        return float(eps)
    eps = M.paper_epsilon(dataset)
    if eps is None:
        raise EvaluationError(f"no default epsilon for dataset {dataset!r} (known: "
                              f"{', '.join(M.PAPER_EPSILON)} and their single bodies); pass --eps")
    return eps


def evaluate_video(episode: Mapping, points, adj, eps: float) -> dict:
    """Metrics of one video. episode: dict with ``frames`` ``[T, H, W, 3]``, ``joints``
    ``[T, J, 2]`` pixels, ``adjacency`` ``[J, J]``; points ``[T, P, 2]`` pixels; adj ``[P, P]``.
    Coordinates are normalised to [-1, 1] (:func:`kpray.metrics.normalise_pixels`) before the
    joint metrics, so ``eps`` and ``dist`` are in the paper's units.

    Returns ``{"P", "J", "joints": {...}, "structure": {...}, "matching": (rows, cols),
    "hits": [J]}`` (``hits``: :func:`kpray.metrics.joint_hit_rates`, which true joints are found).
    """
    frames, gt = np.asarray(episode["frames"]), np.asarray(episode["joints"])
    h, w = frames.shape[1:3]
    pred_n = M.normalise_pixels(points, (w, h))
    gt_n = M.normalise_pixels(gt, (w, h))
    d = M.pairwise_distances(pred_n, gt_n)
    matching = M.video_matching(None, None, d)
    return {"P": int(pred_n.shape[1]), "J": int(gt_n.shape[1]),
            "joints": M.joint_metrics(pred_n, gt_n, eps, matching=matching, distances=d),
            "structure": M.structure_metrics(adj, episode["adjacency"], None, None,
                                             matching=matching),
            "matching": matching,
            "hits": M.joint_hit_rates(None, None, eps, matching=matching, distances=d)}


def evaluate_videos(episodes: Iterable[Mapping], predictions: Mapping[int, Mapping], out_dir,
                    eps: float | None = None, dataset: str | None = None, split: str = "test",
                    model_name: str = "ours", n_figures: int = 4,
                    extra: Mapping | None = None) -> dict:
    """Evaluate every episode of ``split`` (and ``dataset``) against ``predictions`` and write
    ``out_dir/metrics.json``, ``out_dir/tables.md`` and ``out_dir/figures/*.png``.

    episodes: dicts as yielded by ``kpray.data.iter_episodes``; predictions: ``{index: {"points":
    [T, P, 2] pixels, "adj": [P, P]}}`` (see the module docstring); eps: overrides the paper's
    per-dataset epsilon; n_figures: videos per dataset drawn (first by index; 0 for none);
    extra: top-level blocks added to ``metrics.json`` (e.g. ``{"regression": ...}`` of
    :func:`regression_block`; may not replace the standard keys). Everything is validated and
    computed before the first file is written. Returns the ``metrics.json`` content.
    """
    videos, keep_frames, seen = [], {}, set()
    for ep in episodes:
        meta = ep.get("meta", {})
        if meta.get("split", split) != split or (dataset and meta.get("dataset") != dataset):
            continue
        idx, ds = int(meta["index"]), str(meta.get("dataset", dataset or "unknown"))
        if idx in seen:
            raise EvaluationError(f"two evaluated episodes have index {idx}; pass --dataset")
        seen.add(idx)
        if idx not in predictions:
            raise EvaluationError(f"no prediction for episode {idx} ({ds}, {split})")
        pts = np.asarray(predictions[idx]["points"])
        adj = np.asarray(predictions[idx]["adj"])
        check_prediction(idx, pts, adj)
        gt = np.asarray(ep["joints"])
        if pts.shape[0] != gt.shape[0]:
            raise EvaluationError(f"points_{idx} has {pts.shape[0]} frames, episode has "
                                  f"{gt.shape[0]}")
        e = epsilon_for(ds, eps)
        res = evaluate_video(ep, pts, adj, e)
        videos.append({"index": idx, "dataset": ds, "eps": e, "P": res["P"], "J": res["J"],
                       "joints": res["joints"], "structure": res["structure"]})
        n_kept = sum(1 for k in keep_frames.values() if k["dataset"] == ds)
        if n_kept < n_figures:  # keep frames only for the videos we draw (memory)
            keep_frames[idx] = {"dataset": ds, "frames": np.asarray(ep["frames"]), "gt": gt,
                                "gt_adj": np.asarray(ep["adjacency"]), "points": pts,
                                "adj": adj, "matching": res["matching"]}
    if not videos:
        raise EvaluationError(f"no episodes of split {split!r}"
                              + (f" and dataset {dataset!r}" if dataset else "") + " in the data")
    unused = sorted(set(predictions) - seen)
    if unused:
        raise EvaluationError(f"{len(unused)} predictions have no evaluated episode (first: "
                              f"{unused[:5]})")

    summary = summarise(videos, model_name, split)
    for key, value in (extra or {}).items():
        if key in summary:
            raise EvaluationError(f"extra block {key!r} would replace a standard metrics.json key")
        summary[key] = value
    # Everything is validated: write.
    from kpray import plots, report

    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    report.write_metrics_json(out_dir / "metrics.json", summary)
    report.write_markdown_tables(out_dir / "tables.md", summary["datasets"], model_name,
                                 eps={d: r["eps"] for d, r in summary["datasets"].items()})
    for idx, k in sorted(keep_frames.items()):
        name = f"{k['dataset']}_{idx:05d}"
        plots.plot_video_skeletons(fig_dir / f"{name}_skeleton.png", k["frames"], k["points"],
                                   k["adj"], k["gt"], k["gt_adj"], matching=k["matching"],
                                   title=f"{M.DATASET_LABELS.get(k['dataset'], k['dataset'])} "
                                         f"episode {idx}")
        plots.plot_connectivity(fig_dir / f"{name}_connectivity.png", k["adj"], k["gt_adj"],
                                matching=k["matching"], title=f"episode {idx}")
    return summary


def summarise(videos: list[dict], model_name: str, split: str) -> dict:
    """Per-dataset aggregates of per-video records (the ``metrics.json`` content)."""
    datasets = {}
    for ds in sorted({v["dataset"] for v in videos}):
        vs = [v for v in videos if v["dataset"] == ds]
        datasets[ds] = {"eps": vs[0]["eps"], "n_videos": len(vs),
                        "joints": M.aggregate([v["joints"] for v in vs]),
                        "structure": M.aggregate([v["structure"] for v in vs])}
    return {"model": model_name, "split": split, "definitions": "docs/metrics.md",
            "datasets": datasets, "videos": sorted(videos, key=lambda v: (v["dataset"],
                                                                         v["index"]))}



# ----------------------------------------------------------------------------- regression

def episode_body(episode: Mapping) -> tuple[int, tuple[str, ...] | None]:
    """The body kind of an episode, for the regression: ``(J, joint names or None)``.

    Episodes can be pooled in one regression only when their GT joints mean the same thing,
    i.e. when this signature is equal (the names come from ``meta["joint_names"]``)."""
    names = episode.get("meta", {}).get("joint_names")
    return int(np.asarray(episode["joints"]).shape[1]), (tuple(names) if names else None)


def most_common_body(episodes: Iterable[Mapping]) -> tuple[int, tuple[str, ...] | None]:
    """The most frequent :func:`episode_body` among ``episodes`` (ties: the first seen)."""
    bodies = [episode_body(ep) for ep in episodes]
    if not bodies:
        raise EvaluationError("no episodes to choose a body for the regression from")
    return max(dict.fromkeys(bodies), key=bodies.count)


def regression_block(train_kp, train_gt, test_kp, test_gt, image_size: float,
                     joint_names=None, protocol: str | None = None) -> dict:
    """The ``"regression"`` block of ``metrics.json``: AutoLink's keypoint regression.

    train_kp ``[N, K, 2]`` / train_gt ``[N, J, 2]``: detected keypoints and GT joints of the
    fitting frames (train split episodes of one body kind); test_kp ``[M, K, 2]`` / test_gt
    ``[M, J, 2]``: the scored frames (test split, same body); all in pixels of square frames of
    side ``image_size``. joint_names: the J names (``meta["joint_names"]``), for the left/right
    swap. protocol: ``"h36m"``, ``"plain"`` or ``"taichi"`` (see
    :func:`kpray.metrics.regression_details`); None: ours,
    :func:`kpray.metrics.default_regression_protocol` (``"h36m"`` with the swap from the names).

    Returns ``{"protocol", "error", "plain_error", "spread_ratio", "n_train_frames",
    "n_test_frames", "joints", "swap", "n_train_used", "n_train_swapped", "n_test_swapped",
    "image_size"}``: ``error`` under ``protocol`` and ``plain_error`` under ``"plain"``, both as
    fractions of the image size; ``spread_ratio`` = :func:`kpray.metrics.spread_ratio` of the test
    frames' keypoints and GT; ``swap`` the joint permutation used (None: none).
    """
    default = M.default_regression_protocol(joint_names)
    protocol = default["protocol"] if protocol is None else protocol
    if protocol not in M.REGRESSION_PROTOCOLS:
        raise EvaluationError(f"unknown regression protocol {protocol!r} (use one of "
                              f"{', '.join(M.REGRESSION_PROTOCOLS)})")
    swap = default["swap"] if protocol == "h36m" else None
    try:
        d = M.regression_details(train_kp, train_gt, test_kp, test_gt, image_size,
                                 protocol=protocol, swap=swap)
        plain = M.regression_error(train_kp, train_gt, test_kp, test_gt, image_size)
        spread = M.spread_ratio(test_kp, test_gt)
    except ValueError as e:
        raise EvaluationError(f"regression: {e}") from None
    return {"protocol": protocol, "error": d["error"], "plain_error": plain,
            "spread_ratio": spread, "n_train_frames": int(len(train_kp)),
            "n_test_frames": int(len(test_kp)), "joints": int(np.asarray(test_gt).shape[1]),
            "swap": swap, "n_train_used": d["n_train_used"],
            "n_train_swapped": d["n_train_swapped"], "n_test_swapped": d["n_test_swapped"],
            "image_size": float(image_size)}
