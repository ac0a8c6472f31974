"""Evaluation figures (matplotlib, Agg backend; nothing opens a window).

- :func:`plot_video_skeletons`: for a few frames of one video, as the skeleton paper's figure 3:
  the input frame, the predicted skeleton and joints, the GT skeleton and joints. A predicted
  joint takes the colour of the GT joint it is matched to (grey when unmatched), so identity
  switches over time are visible.
- :func:`plot_connectivity`: predicted vs GT connectivity matrices, the predicted one reordered
  so that its row/column k is the predicted joint matched to GT joint k (unmatched predicted
  joints last).

All inputs are numpy arrays: frames ``[T, H, W, 3]`` uint8, points ``[T, N, 2]`` in pixels
(x, y; pixel centres at integers), adjacency ``[N, N]`` bool.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_UNMATCHED = (0.6, 0.6, 0.6)


def joint_colours(n_gt: int, matching=None, n_pred: int | None = None):
    """Colours ``(gt [J, 3], pred [P, 3])``: GT joint j gets a hue; a predicted joint the hue of
    its matched GT joint (``matching = (rows, cols)``), grey when unmatched."""
    cmap = plt.get_cmap("hsv")
    gt = np.array([cmap(j / max(n_gt, 1))[:3] for j in range(n_gt)]).reshape(n_gt, 3)
    n_pred = 0 if n_pred is None else n_pred
    pred = np.tile(np.array(_UNMATCHED), (n_pred, 1))
    if matching is not None and n_pred:
        rows, cols = matching
        pred[np.asarray(rows, dtype=int)] = gt[np.asarray(cols, dtype=int)]
    return gt, pred


def _draw_skeleton(ax, frame, points, adj, colours, title):
    ax.imshow(frame, interpolation="nearest")
    h, w = frame.shape[:2]
    adj = np.asarray(adj)
    adj = adj if adj.dtype == np.bool_ else adj >= 0.5  # probabilities: the metrics' 0.5
    iu, ju = np.nonzero(np.triu(adj | adj.T, k=1))  # read symmetrically, as the metrics do
    for a, b in zip(iu, ju):
        ax.plot(points[[a, b], 0], points[[a, b], 1], "-", color="white", lw=1.5, alpha=0.9)
    if len(points):
        ax.scatter(points[:, 0], points[:, 1], s=18, c=colours, edgecolors="black",
                   linewidths=0.5, zorder=3)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_video_skeletons(path, frames, pred_points, pred_adj, gt_points, gt_adj, matching=None,
                         frame_ids=None, n_frames: int = 4, title: str | None = None) -> Path:
    """Save a grid (one row per frame, columns input / predicted / GT) as a PNG.

    frames ``[T, H, W, 3]`` uint8; pred_points ``[T, P, 2]`` and gt_points ``[T, J, 2]`` pixels;
    pred_adj ``[P, P]`` and gt_adj ``[J, J]`` bool; matching ``(rows, cols)`` colours predicted
    joints by their GT match; frame_ids: frames to show (default ``n_frames`` evenly spaced).
    """
    frames = np.asarray(frames)
    pred_points, gt_points = np.asarray(pred_points), np.asarray(gt_points)
    T = frames.shape[0]
    if frame_ids is None:
        frame_ids = np.unique(np.linspace(0, T - 1, min(n_frames, T)).round().astype(int))
    gt_col, pred_col = joint_colours(gt_points.shape[1], matching, pred_points.shape[1])
    fig, axes = plt.subplots(len(frame_ids), 3, figsize=(6, 2 * len(frame_ids)), squeeze=False)
    for r, t in enumerate(frame_ids):
        axes[r, 0].imshow(frames[t], interpolation="nearest")
        axes[r, 0].set_title(f"input, frame {t}", fontsize=8)
        axes[r, 0].axis("off")
        _draw_skeleton(axes[r, 1], frames[t], pred_points[t], pred_adj, pred_col,
                       f"predicted ({pred_points.shape[1]} joints)")
        _draw_skeleton(axes[r, 2], frames[t], gt_points[t], gt_adj, gt_col,
                       f"ground truth ({gt_points.shape[1]} joints)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def connectivity_order(n_pred: int, matching) -> np.ndarray:
    """Order of predicted joints for display: matched ones by their GT index, then the rest."""
    rows, cols = (np.asarray(x, dtype=int) for x in matching)
    matched = rows[np.argsort(cols, kind="stable")]
    rest = np.setdiff1d(np.arange(n_pred), rows)
    return np.concatenate([matched, rest]).astype(int)


def plot_connectivity(path, pred_adj, gt_adj, matching=None, title: str | None = None) -> Path:
    """Save predicted vs GT connectivity matrices side by side as a PNG.

    pred_adj ``[P, P]``, gt_adj ``[J, J]`` (bool or probabilities in [0, 1]); with ``matching``
    the predicted matrix is reordered by :func:`connectivity_order` and its axes labelled by the
    matched GT joint ("-" when unmatched).
    """
    # read symmetrically (as the metrics do), so a one-triangle matrix shows every link
    pred_adj = np.asarray(pred_adj, dtype=float)
    pred_adj = np.maximum(pred_adj, pred_adj.T)
    gt_adj = np.asarray(gt_adj, dtype=float)
    gt_adj = np.maximum(gt_adj, gt_adj.T)
    n_pred = pred_adj.shape[0]
    order = np.arange(n_pred) if matching is None else connectivity_order(n_pred, matching)
    labels = [str(i) for i in order]
    if matching is not None:
        to_gt = dict(zip(np.asarray(matching[0]).tolist(), np.asarray(matching[1]).tolist()))
        labels = [f"{to_gt[i]}" if i in to_gt else "-" for i in order.tolist()]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    for ax, mat, ticks, name in ((axes[0], pred_adj[np.ix_(order, order)], labels,
                                  "predicted (rows: matched GT joint)"),
                                 (axes[1], gt_adj, [str(j) for j in range(gt_adj.shape[0])],
                                  "ground truth")):
        ax.set_title(name, fontsize=8)
        if mat.size == 0:  # no joints: imshow cannot draw an empty matrix
            ax.text(0.5, 0.5, "no joints", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([]), ax.set_yticks([])
            continue
        ax.imshow(mat, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(ticks)), ticks, fontsize=5)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
