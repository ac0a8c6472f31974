"""Evaluation metrics of the two papers: joints, skeleton structure, keypoint regression.

Pure functions on numpy arrays (numpy + scipy only). Every definition is written out in
``docs/metrics.md``; this docstring lists where the papers are loose and what we chose.

Sources: ``skeleton.txt`` (Anciukevicius et al., ICPR 2022) section IV and supplementary VIII,
``autolink.txt`` (He et al., NeurIPS 2022) section 4.1, and issue 4 of this project.

Where the papers are loose, and the definitions we use
------------------------------------------------------
- Matching. "Match predicted and GT joints based on their trajectories ... mean Euclidean
  distance ... Hungarian algorithm". We use ``C[i, j] = mean_t ||pred[t, i] - gt[t, j]||`` and
  ``M = scipy.optimize.linear_sum_assignment(C)`` (min(P, J) pairs; rectangular allowed). GT
  visibility is *not* used: every GT joint counts in every frame (the paper does not mention
  occlusion).
- Precision/recall/F1 are per frame, then averaged over frames; a matched pair is a hit in
  frame t when its distance is ``<= eps`` (the paper says a match is discarded when "larger than
  eps", so equality is a hit). ``f1_t = 0`` when precision_t and recall_t are both 0.
- Consistency: per frame t, ``M_t`` is the optimal assignment of that frame's distances. When a
  frame has several optimal assignments (exact ties, or sums within 1e-9 of the largest distance
  in the video), we take the one that agrees most with the video-level ``M``; without this rule
  the result would depend on the order of the predicted joints. Denominator: T * min(P, J).
- Ties in the video-level cost ``C`` are resolved by scipy's deterministic order. ``dist`` does
  not depend on that choice (it is the optimal cost), the other keys may.
- Empty side (P = 0 or J = 0): precision, recall, f1, consistency are 0, dist is NaN,
  diff = |P - J|; structure metrics are all NaN (no pair to score).
- Structure: adjacencies are symmetrised with logical OR and their diagonals ignored; a
  non-bool ``pred_adj`` is binarised with ``>= 0.5``. Pairs are the unordered pairs of
  predicted joints that are both matched. ``f1 = 2TP / (2TP + FP + FN)``, which is the harmonic
  mean of precision and recall when both are defined, 0 when TP = 0 but there were positives,
  and NaN (0/0) when neither the prediction nor the truth has a positive pair. Any ratio with
  a zero denominator is NaN (so ``bcc`` is NaN when the GT pairs are all links or all non-links).
- Coordinates: the skeleton paper reports distances with "xy pixel coordinates normalised to
  [-1, 1]". With pixel centres at integers 0..S-1 we map ``u = 2 x / (S - 1) - 1`` (the centres
  of the first and last pixels land on -1 and +1, as ``torch.linspace(-1, 1, S)``; x uses the
  width, y the height). :func:`normalise_pixels`.
- Regression (AutoLink 4.1): least squares from detected keypoints to GT joints, inputs in
  pixels with the origin at the top-left pixel centre; three protocols
  (:func:`regression_details`). ``"plain"``: a linear map without bias. ``"h36m"``: the official
  Human3.6M evaluation: no bias, left/right GT exchange, mean + 3 std outlier rejection.
  ``"taichi"``: the official Taichi evaluation: bias, per-coordinate fits and MAE, missing joints
  skipped; we average the per-coordinate MAE where the official code sums it.
  :func:`default_regression_protocol` is ours: ``"h36m"`` for every simulated body, left/right
  pairs from the joint names. The official code regresses from ``[0, 1]``-scaled keypoints,
  which differs from pixels by a scale factor only, so (without bias) the fitted predictions
  are the same up to the half-pixel offset of its convention. Rank-deficient systems use
  numpy's minimum-norm least-squares solution.
- AutoLink adjacency: the shared graph's weights of unordered pairs come from the upper
  triangle (i < j), are divided by their maximum and thresholded at ``>= 0.5``
  (:func:`autolink_adjacency`; ``method="minmax"`` is the alternative).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

# Supplementary VIII of the skeleton paper (Human3.6M, 0.30, is not one of our datasets).
PAPER_EPSILON = {"spiders": 0.20, "cartpoles": 0.15, "swimmers": 0.20, "mwhc": 0.30,
                 "spiders0shot": 0.20}
# Single-body datasets (``cartpole:3``, ``walker``, ...) take the threshold of their family.
_FAMILY = {"spider": "spiders", "cartpole": "cartpoles", "swimmer": "swimmers", "walker": "mwhc",
           "hopper": "mwhc", "cheetah": "mwhc", "manipulator": "mwhc"}


# Rendering variants (``sim.datasets``: part colours, background removed) keep their bodies' scores.
_VARIANT_SUFFIXES = ("-nobg", "-parts", "-bands")


def base_dataset(name: str | None) -> str:
    """``walker-parts-nobg`` -> ``walker``, ``cartpoles-nobg`` -> ``cartpoles``: the dataset whose
    bodies a rendering variant shows (lower case; other names unchanged)."""
    key = str(name).strip().lower()
    for suffix in _VARIANT_SUFFIXES:
        key = key.removesuffix(suffix)
    return key


def paper_epsilon(dataset: str | None) -> float | None:
    """The paper's threshold for ``dataset`` or for its body family (ours; ``walker-parts`` is
    a walker, ``cartpoles-nobg`` Cartpoles); None if neither."""
    key = base_dataset(dataset)
    if key in PAPER_EPSILON:
        return PAPER_EPSILON[key]
    family = _FAMILY.get(key.split(":")[0])
    return PAPER_EPSILON[family] if family else None

# Row order and labels of the paper's tables.
PAPER_DATASETS = ("spiders", "cartpoles", "mwhc", "swimmers", "human36m", "spiders0shot")
DATASET_LABELS = {"spiders": "Spiders", "cartpoles": "Cartpoles", "mwhc": "M+W+H+C",
                  "swimmers": "Swimmers", "human36m": "Human3.6M",
                  "spiders0shot": "Spiders 0-Shot"}

STRUCTURE_KEYS = ("acc", "bcc", "f1", "precision", "recall")            # Table I column order
JOINT_KEYS = ("dist", "consistency", "f1", "precision", "recall", "diff")  # Table II order
HIGHER_IS_BETTER = {"acc": True, "bcc": True, "f1": True, "precision": True, "recall": True,
                    "consistency": True, "dist": False, "diff": False}


def _rows(keys, table):
    return {d: dict(zip(keys, vals)) for d, vals in table.items()}


# Table I of the skeleton paper: structure (Acc, Bcc, F1, Prec, Rec).
PAPER_TABLE_I = {
    "method": "Anciukevicius et al. (paper)",
    "baseline": "Li et al. [28] (paper)",
    "ours": _rows(STRUCTURE_KEYS, {
        "spiders": (0.67, 0.55, 0.22, 0.16, 0.38),
        "cartpoles": (0.95, 0.94, 0.93, 0.99, 0.87),
        "mwhc": (0.72, 0.58, 0.35, 0.39, 0.32),
        "swimmers": (0.89, 0.89, 0.85, 0.89, 0.82),
        "human36m": (0.85, 0.58, 0.27, 0.33, 0.23),
        "spiders0shot": (0.77, 0.62, 0.37, 0.34, 0.40),
    }),
    "baseline_rows": _rows(STRUCTURE_KEYS, {
        "spiders": (0.40, 0.51, 0.21, 0.13, 0.66),
        "cartpoles": (0.56, 0.56, 0.47, 0.41, 0.54),
        "mwhc": (0.58, 0.50, 0.26, 0.21, 0.35),
        "swimmers": (0.55, 0.50, 0.38, 0.42, 0.36),
        "human36m": (0.22, 0.51, 0.21, 0.12, 0.89),
        "spiders0shot": (0.51, 0.55, 0.34, 0.23, 0.63),
    }),
}

# Table II of the skeleton paper: joints (Dist, Constcy, F1, Prec, Rec, Diff).
PAPER_TABLE_II = {
    "method": "Anciukevicius et al. (paper)",
    "baseline": "Kulkarni et al. [11] (paper)",
    "ours": _rows(JOINT_KEYS, {
        "spiders": (0.083, 0.91, 0.87, 0.89, 0.85, 4.3),
        "cartpoles": (0.086, 0.92, 0.84, 0.86, 0.82, 1.2),
        "mwhc": (0.133, 1.0, 0.89, 0.98, 0.82, 1.5),
        "swimmers": (0.066, 0.96, 0.90, 0.96, 0.85, 0.9),
        "human36m": (0.180, 1.0, 0.9, 0.9, 0.9, 0.1),
        "spiders0shot": (0.090, 0.98, 0.70, 0.91, 0.57, 5.4),
    }),
    "baseline_rows": _rows(JOINT_KEYS, {
        "spiders": (0.270, 0.71, 0.33, 0.32, 0.33, 4.4),
        "cartpoles": (0.126, 0.70, 0.72, 0.63, 0.85, 1.9),
        "mwhc": (0.143, 0.71, 0.91, 0.84, 0.99, 1.5),
        "swimmers": (0.083, 0.72, 0.87, 0.77, 0.98, 1.4),
        "human36m": (0.226, 1.0, 0.86, 0.86, 0.86, 0.0),
        "spiders0shot": (0.240, 0.52, 0.47, 0.44, 0.51, 2.5),
    }),
}

# Relative size below which two per-frame assignment costs count as tied (consistency).
_TIE_RTOL = 1e-9


# ----------------------------------------------------------------------------- coordinates

def normalise_pixels(xy, size) -> np.ndarray:
    """Pixel coordinates -> the papers' [-1, 1] convention.

    xy: ``[..., 2]`` pixels, ``[..., 0]`` = x (column), ``[..., 1]`` = y (row), pixel centres at
    integers ``0 .. S-1``. size: ``S`` (square image) or ``(width, height)``.
    Returns float64 ``[..., 2]`` with ``u = 2 * x / (width - 1) - 1``, ``v = 2 * y / (height - 1)
    - 1``: the centre of the first pixel maps to -1, of the last to +1 (``torch.linspace(-1, 1,
    S)``). On a 64-pixel image one unit is 31.5 pixels.
    """
    xy = np.asarray(xy, dtype=np.float64)
    w, h = (size, size) if np.ndim(size) == 0 else size
    if w < 2 or h < 2:
        raise ValueError(f"image size must be at least 2 pixels, got {size}")
    scale = np.array([2.0 / (w - 1), 2.0 / (h - 1)])
    return xy * scale - 1.0


# ----------------------------------------------------------------------------- matching

def pairwise_distances(pred, gt) -> np.ndarray:
    """Per-frame Euclidean distances ``D[t, i, j] = ||pred[t, i] - gt[t, j]||``.

    pred: ``[T, P, 2]``, gt: ``[T, J, 2]`` (same units). Returns float64 ``[T, P, J]``.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.ndim != 3 or gt.ndim != 3 or pred.shape[2] != 2 or gt.shape[2] != 2:
        raise ValueError(f"expected pred [T, P, 2] and gt [T, J, 2], got {pred.shape}, {gt.shape}")
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"pred has {pred.shape[0]} frames, gt has {gt.shape[0]}")
    if pred.shape[0] == 0:
        raise ValueError("a video needs at least one frame")
    diff = pred[:, :, None, :] - gt[:, None, :, :]
    return np.sqrt(np.einsum("tpjc,tpjc->tpj", diff, diff))


def video_matching(pred, gt, distances=None) -> tuple[np.ndarray, np.ndarray]:
    """Video-level matching M of predicted to GT joints.

    ``C[i, j] = mean_t ||pred[t, i] - gt[t, j]||``; ``M = linear_sum_assignment(C)``.
    pred: ``[T, P, 2]``, gt: ``[T, J, 2]``; ``distances`` (``[T, P, J]``) skips recomputing them.
    Returns ``(rows, cols)``: int arrays of length min(P, J), predicted joint ``rows[k]`` is
    matched to GT joint ``cols[k]``, rows increasing.
    """
    d = pairwise_distances(pred, gt) if distances is None else distances
    if d.shape[1] == 0 or d.shape[2] == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    rows, cols = linear_sum_assignment(d.mean(axis=0))
    return rows.astype(np.intp), cols.astype(np.intp)


# ----------------------------------------------------------------------------- joints

def joint_metrics(pred, gt, eps: float, matching=None, distances=None) -> dict:
    """Joint detection metrics of one video (skeleton paper, Table II).

    pred: ``[T, P, 2]`` predicted joint trajectories; gt: ``[T, J, 2]`` GT joints; same units
    (the paper's: normalised to [-1, 1], see :func:`normalise_pixels`). eps: hit threshold, in
    those units. ``matching``/``distances``: optional precomputed :func:`video_matching` /
    :func:`pairwise_distances`.

    Returns floats:
      - ``dist``: mean over frames and matched pairs of the distance (NaN when P or J is 0);
      - ``precision``, ``recall``, ``f1``: per-frame ``hits_t / P``, ``hits_t / J`` and their
        harmonic mean (0 if both are 0), averaged over frames; a hit is a matched pair with
        distance ``<= eps``;
      - ``consistency``: fraction over frames t and matched predicted joints i of
        ``M_t(i) == M(i)``, ``M_t`` the optimal assignment of frame t alone (ties favour M);
      - ``diff``: ``|P - J|``.
    """
    d = pairwise_distances(pred, gt) if distances is None else distances
    T, P, J = d.shape
    out = {"dist": math.nan, "precision": 0.0, "recall": 0.0, "f1": 0.0, "consistency": 0.0,
           "diff": float(abs(P - J))}
    if P == 0 or J == 0:
        return out
    rows, cols = video_matching(None, None, d) if matching is None else matching
    rows, cols = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
    d_matched = d[:, rows, cols]                                   # [T, m]
    out["dist"] = float(d_matched.mean())

    hits = (d_matched <= eps).sum(axis=1).astype(np.float64)      # [T]
    precision_t, recall_t = hits / P, hits / J
    denom = precision_t + recall_t
    f1_t = np.divide(2 * precision_t * recall_t, denom, out=np.zeros(T), where=denom > 0)
    out["precision"] = float(precision_t.mean())
    out["recall"] = float(recall_t.mean())
    out["f1"] = float(f1_t.mean())
    out["consistency"] = _consistency(d, rows, cols)
    return out


def joint_hit_rates(pred, gt, eps: float, matching=None, distances=None) -> np.ndarray:
    """Which true joints a video's prediction finds: float64 ``[J]``, for each GT joint the
    share of frames in which the predicted joint matched to it (:func:`video_matching`) lies
    within ``eps``; 0 for a GT joint no predicted joint is matched to. pred ``[T, P, 2]``, gt
    ``[T, J, 2]``, same units; ``matching``/``distances`` as in :func:`joint_metrics`. Its sum
    over joints is the mean number of hits per frame (``recall * J``)."""
    d = pairwise_distances(pred, gt) if distances is None else distances
    out = np.zeros(d.shape[2])
    if d.shape[1] == 0 or d.shape[2] == 0:
        return out
    rows, cols = video_matching(None, None, d) if matching is None else matching
    rows, cols = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
    out[cols] = (d[:, rows, cols] <= eps).mean(axis=0)
    return out


def joint_reach_rates(points, gt, eps: float) -> np.ndarray:
    """How near the points come to each true joint, frame by frame: float64 ``[J]``, for each GT
    joint the share of frames in which *some* point lies within ``eps`` (no matching: a point
    may serve a different joint in each frame). points ``[T, P, 2]``, gt ``[T, J, 2]``, same
    units. It bounds :func:`joint_hit_rates` of any choice of these points as joints (one point
    per joint over the whole video); where reach is high and hits are low, the points pass by
    the joint but no one point stays on it."""
    d = pairwise_distances(points, gt)
    if d.shape[1] == 0:
        return np.zeros(d.shape[2])
    return (d.min(axis=1) <= eps).mean(axis=0)


def skeleton_coverage(points, gt, adjacency, radius: float, spacing: float) -> float:
    """Share of the true skeleton that lies within ``radius`` of some point, mean over frames:
    each true link (``adjacency`` ``[J, J]``) is sampled every ``spacing`` or closer (both
    ends included) and each frame's share is taken over all the samples of all its links.
    points ``[T, P, 2]``, gt ``[T, J, 2]``, same units as radius and spacing. NaN where the
    skeleton has no link. With radius the transporter's splat reach, what the points can paint."""
    if not spacing > 0:
        raise ValueError(f"spacing must be > 0, got {spacing}")
    pts, gt = np.asarray(points, np.float64), np.asarray(gt, np.float64)
    i, j = np.nonzero(np.triu(_bool_adjacency(adjacency, "adjacency"), 1))
    if len(i) == 0:
        return math.nan
    if pts.shape[1] == 0:
        return 0.0
    share = []
    for p, g in zip(pts, gt):
        samples = []
        for a, b in zip(g[i], g[j]):
            n = int(math.ceil(np.linalg.norm(b - a) / spacing)) + 1
            samples.append(a + (b - a) * np.linspace(0.0, 1.0, max(n, 2))[:, None])
        s = np.concatenate(samples)                                          # [N, 2]
        d = np.sqrt(((s[:, None] - p[None]) ** 2).sum(-1)).min(axis=1)
        share.append(float((d <= radius).mean()))
    return float(np.mean(share))


def _consistency(d: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    """Fraction of (t, i in M) with per-frame assignment M_t(i) == M(i); d: [T, P, J]."""
    T, P, J = d.shape
    m = len(rows)
    # Among a frame's optimal assignments prefer those agreeing with M: subtract a bonus too
    # small to beat any assignment that is better by more than _TIE_RTOL * max distance.
    scale = float(d.max()) or 1.0
    bonus = np.zeros((P, J))
    bonus[rows, cols] = _TIE_RTOL * scale / (m + 1)
    target = np.full(P, -1, dtype=np.intp)
    target[rows] = cols
    agree = 0
    for t in range(T):
        r_t, c_t = linear_sum_assignment(d[t] - bonus)
        agree += int(np.count_nonzero(target[r_t] == c_t))
    return agree / (T * m)


# ----------------------------------------------------------------------------- structure

def _bool_adjacency(adj, name: str) -> np.ndarray:
    a = np.asarray(adj)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be square [N, N], got shape {a.shape}")
    if a.dtype != np.bool_:
        a = a >= 0.5
    a = a | a.T
    np.fill_diagonal(a, False)
    return a


def structure_metrics(pred_adj, gt_adj, pred, gt, matching=None) -> dict:
    """Skeleton structure metrics of one video (skeleton paper, Table I).

    pred_adj: ``[P, P]`` bool (non-bool is binarised ``>= 0.5``; symmetrised with OR);
    gt_adj: ``[J, J]`` bool; pred ``[T, P, 2]`` / gt ``[T, J, 2]`` only give the video-level
    matching M (or pass ``matching=(rows, cols)``).

    Over every unordered pair {i1, i2} of predicted joints both matched in M (to j1, j2):
    predicted = ``pred_adj[i1, i2]``, true = ``gt_adj[j1, j2]``. Returns ``acc``, ``bcc`` (mean of
    TPR and TNR), ``precision``, ``recall`` (= TPR), ``f1`` (= 2TP / (2TP + FP + FN)), plus the
    counts ``n_pairs``, ``tp``, ``fp``, ``tn``, ``fn``. A ratio with denominator 0 is NaN.
    """
    pa = _bool_adjacency(pred_adj, "pred_adj")
    ga = _bool_adjacency(gt_adj, "gt_adj")
    if matching is None:
        matching = video_matching(pred, gt)
    rows, cols = (np.asarray(x, dtype=np.intp) for x in matching)
    if pa.shape[0] < (rows.max() + 1 if len(rows) else 0):
        raise ValueError(f"pred_adj is {pa.shape} but the matching uses joint {rows.max()}")
    if ga.shape[0] < (cols.max() + 1 if len(cols) else 0):
        raise ValueError(f"gt_adj is {ga.shape} but the matching uses joint {cols.max()}")
    iu, ju = np.triu_indices(len(rows), k=1)
    predicted = pa[rows[iu], rows[ju]]
    true = ga[cols[iu], cols[ju]]
    tp = int(np.count_nonzero(predicted & true))
    fp = int(np.count_nonzero(predicted & ~true))
    fn = int(np.count_nonzero(~predicted & true))
    tn = int(np.count_nonzero(~predicted & ~true))
    n = tp + fp + fn + tn
    tpr, tnr = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {"acc": _ratio(tp + tn, n), "bcc": (tpr + tnr) / 2, "precision": _ratio(tp, tp + fp),
            "recall": tpr, "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "n_pairs": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


# ----------------------------------------------------------------------------- regression

REGRESSION_PROTOCOLS = ("plain", "h36m", "taichi")
# Our choice for every simulated body (see default_regression_protocol and docs/metrics.md).
DEFAULT_REGRESSION_PROTOCOL = "h36m"
_MAX_SWAP_ROUNDS = 100   # guard on the h36m swap iteration (the official loop has none)


def _flat_points(a, name: str) -> np.ndarray:
    """``[N, K, 2]`` or ``[N, 2K]`` -> float64 ``[N, 2K]``; ValueError otherwise."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3 and a.shape[2] == 2:
        a = a.reshape(a.shape[0], -1)
    if a.ndim != 2 or a.shape[1] % 2:
        raise ValueError(f"{name} must be [N, K, 2] or [N, 2K], got shape {a.shape}")
    return a


def _mean_joint_l2(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Flat ``[N, 2J]`` pair -> ``[N]`` mean over joints of the L2 distance."""
    d = (pred - gt).reshape(pred.shape[0], -1, 2)
    return np.sqrt(np.einsum("njc,njc->nj", d, d)).mean(axis=1)


def lr_swap_permutation(joint_names: Sequence[str] | None) -> list[int] | None:
    """The left/right swap of a body's GT joints, from their names.

    joint_names: the ``J`` names of an episode's joints (``meta["joint_names"]``). Two names are a
    pair when they differ only by a left/right marker: suffix ``_l``/``_r`` or ``_left``/
    ``_right``, or prefix ``l_``/``r_`` or ``left_``/``right_`` (case-insensitive), e.g. walker's
    ``knee_r``/``knee_l``. Returns ``perm`` (length J) with ``perm[a] = b`` and ``perm[b] = a`` for
    every pair and ``perm[j] = j`` otherwise, so that ``gt[:, perm]`` is the GT with left and right
    exchanged; None when no pair exists (or ``joint_names`` is None).
    """
    if joint_names is None:
        return None
    names = [str(n) for n in joint_names]
    markers = [(r"^(.*)_(l|r)$", {"l": "r", "r": "l"}),
               (r"^(.*)_(left|right)$", {"left": "right", "right": "left"}),
               (r"^(l|r)_(.*)$", {"l": "r", "r": "l"}),
               (r"^(left|right)_(.*)$", {"left": "right", "right": "left"})]
    index = {n.lower(): i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise ValueError(f"joint names are not unique: {names}")
    perm = list(range(len(names)))
    found = False
    for i, name in enumerate(names):
        low = name.lower()
        for pattern, other in markers:
            m = re.match(pattern, low)
            if not m:
                continue
            if pattern.startswith("^(.*)"):
                stem, side = m.group(1), m.group(2)
                mate = f"{stem}_{other[side]}"
            else:
                side, stem = m.group(1), m.group(2)
                mate = f"{other[side]}_{stem}"
            j = index.get(mate)
            if stem and j is not None and j != i and perm[i] == i and perm[j] == j:
                perm[i], perm[j] = j, i
                found = True
                break
    return perm if found else None


def default_regression_protocol(joint_names: Sequence[str] | None = None) -> dict:
    """Our keypoint-regression protocol for a simulated body: ``{"protocol", "swap"}``.

    Every simulated body (spiders, cartpoles, swimmers, walker, hopper, cheetah, manipulator) is
    evaluated with the ``"h36m"`` protocol of :func:`regression_error`: our bodies are full
    articulated figures observed in every frame, as Human3.6M's people are (no missing joints,
    unlike Taichi's), so AutoLink's Human3.6M procedure fits best. Its left/right swap comes from
    the joint names (:func:`lr_swap_permutation`, e.g. walker's ``*_r``/``*_l``); a body with no
    such pair gets ``swap=None``, and the protocol then reduces to the bias-free fit with the
    mean + 3 std outlier rejection. ``"plain"`` (no swap, no outlier rejection) and ``"taichi"``
    (bias, per-coordinate MAE) stay selectable in :func:`regression_error`.

    joint_names: ``J`` names (``meta["joint_names"]``) or None.
    """
    return {"protocol": DEFAULT_REGRESSION_PROTOCOL, "swap": lr_swap_permutation(joint_names)}


def regression_error(train_kp, train_gt, test_kp, test_gt, image_size: float,
                     protocol: str = "plain", swap: Sequence[int] | None = None,
                     min_swaps: int = 10, outlier_sigma: float | None = 3.0) -> float:
    """AutoLink's keypoint-regression error (section 4.1), as a fraction of the image size.

    The figure of :func:`regression_details` (see it for the arguments and the protocols);
    multiply by 100 for the papers' percentages.
    """
    return regression_details(train_kp, train_gt, test_kp, test_gt, image_size,
                              protocol=protocol, swap=swap, min_swaps=min_swaps,
                              outlier_sigma=outlier_sigma)["error"]


def regression_details(train_kp, train_gt, test_kp, test_gt, image_size: float,
                       protocol: str = "plain", swap: Sequence[int] | None = None,
                       min_swaps: int = 10, outlier_sigma: float | None = 3.0) -> dict:
    """Keypoint regression from detected keypoints to GT joints (AutoLink section 4.1).

    train_kp: ``[N, K, 2]`` (or ``[N, 2K]``) detected keypoints of the fitting set, train_gt:
    ``[N, J, 2]`` (or ``[N, 2J]``) its GT joints; test_kp ``[M, K, 2]``, test_gt ``[M, J, 2]``; all
    in pixels (origin at the top-left pixel centre). image_size: the side ``S`` in pixels (square
    images); errors are divided by it.

    protocol:
      - ``"plain"``: ``W`` ``[2K, 2J]`` without bias by least squares on the train set; error =
        mean over test samples and joints of ``||x W - y||_2 / S``. ``swap``, ``min_swaps`` and
        ``outlier_sigma`` are ignored.
      - ``"h36m"``: the official Human3.6M evaluation (``regress_kp``/``test_epoch_end`` of
        ``datasets/h36m.py``). Train: fit ``W`` (no bias); while more than ``min_swaps`` samples
        have a smaller mean joint error with their GT's left/right labels exchanged
        (``gt[:, swap]``), exchange them and refit. Then drop the samples whose mean joint error
        is not below ``mean + outlier_sigma * std`` (``std`` with ddof 1, as torch's; none dropped
        when std is 0 up to rounding, below 1e-9 px, or when ``outlier_sigma`` is None) and
        refit. Test: with that ``W``, the same exchange iteration on the test GT (while more
        than ``min_swaps`` would swap); error = mean over test samples of the mean over joints
        of the L2 distance, / S. As in the official loops, the last round's ``<= min_swaps``
        candidates are left unswapped.
        ``swap=None``: no exchange (fit, outlier rejection, refit).
      - ``"taichi"``: the official Taichi evaluation (``datasets/taichi.py``): one regression
        WITH bias per GT coordinate (``2J`` of them, features ``[x, 1]``), each fitted on the
        train samples where that coordinate is present; error = per coordinate, the mean
        absolute error over the test samples where it is present; then **the mean over
        coordinates**, / S. Missing coordinates are non-finite (NaN) in the GT: the official
        code marks them with -1, which in our pixel convention is a valid (off-image) position.
        The official code reports the **sum** over coordinates of the per-coordinate MAE in
        pixels (of 256-pixel images); we average over coordinates and divide by S so that the
        figure is comparable across bodies with different numbers of joints and across image
        sizes (sum / (2J * S) of the official figure). Coordinates with no train or no test
        sample present are skipped (NaN error if none is left). ``swap``/``outlier_sigma`` are
        ignored.

    swap: a permutation of the ``J`` GT joint indices (:func:`lr_swap_permutation`) or None.
    Least squares use ``numpy.linalg.lstsq`` (minimum-norm solution if rank-deficient; the
    official code inverts ``X^T X``).

    Returns ``{"error", "protocol", "n_train", "n_train_used", "n_train_swapped",
    "n_test_swapped"}``: ``n_train_used`` is the number of train samples in the final fit
    (after outlier rejection), ``n_*_swapped`` the samples whose GT ends up left/right exchanged
    (0 outside ``"h36m"``).
    """
    if protocol not in REGRESSION_PROTOCOLS:
        raise ValueError(f"unknown regression protocol {protocol!r} (use one of "
                         f"{', '.join(REGRESSION_PROTOCOLS)})")
    xtr, ytr = _flat_points(train_kp, "train_kp"), _flat_points(train_gt, "train_gt")
    xte, yte = _flat_points(test_kp, "test_kp"), _flat_points(test_gt, "test_gt")
    if xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0]:
        raise ValueError(f"keypoints and GT must have the same number of samples: train "
                         f"{xtr.shape[0]} vs {ytr.shape[0]}, test {xte.shape[0]} vs {yte.shape[0]}")
    if xtr.shape[1] != xte.shape[1] or ytr.shape[1] != yte.shape[1]:
        raise ValueError("train and test must have the same numbers of keypoints and joints: "
                         f"{xtr.shape[1] // 2} vs {xte.shape[1] // 2} keypoints, "
                         f"{ytr.shape[1] // 2} vs {yte.shape[1] // 2} joints")
    if xtr.shape[0] == 0 or xte.shape[0] == 0:
        raise ValueError("regression needs at least one train and one test sample")
    if not (np.isfinite(xtr).all() and np.isfinite(xte).all()):
        raise ValueError("detected keypoints must be finite")
    if protocol != "taichi" and not (np.isfinite(ytr).all() and np.isfinite(yte).all()):
        raise ValueError(f"GT has non-finite values; only protocol 'taichi' skips missing "
                         f"(NaN) joints, not {protocol!r}")
    if not np.isscalar(image_size) or not float(image_size) > 0:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size!r}")
    n_joints = ytr.shape[1] // 2
    out = {"protocol": protocol, "n_train": int(xtr.shape[0]), "n_train_used": int(xtr.shape[0]),
           "n_train_swapped": 0, "n_test_swapped": 0}
    if protocol == "plain":
        w, *_ = np.linalg.lstsq(xtr, ytr, rcond=None)
        out["error"] = float(_mean_joint_l2(xte @ w, yte).mean() / image_size)
    elif protocol == "taichi":
        out["error"] = _taichi_error(xtr, ytr, xte, yte) / float(image_size)
        out["n_train_used"] = int(np.isfinite(ytr).all(axis=1).sum())
    else:
        perm = _check_swap(swap, n_joints)
        if int(min_swaps) < 0:
            raise ValueError(f"min_swaps must be >= 0, got {min_swaps}")
        if outlier_sigma is not None and not outlier_sigma > 0:
            raise ValueError(f"outlier_sigma must be positive or None, got {outlier_sigma}")
        out.update(_h36m_error(xtr, ytr, xte, yte, perm, int(min_swaps), outlier_sigma))
        out["error"] = out["error"] / float(image_size)
    return out


def _check_swap(swap, n_joints: int) -> np.ndarray | None:
    """Joint permutation -> flat coordinate permutation ``[2J]`` (None stays None)."""
    if swap is None:
        return None
    p = np.asarray(swap)
    if p.ndim != 1 or len(p) != n_joints or not np.issubdtype(p.dtype, np.integer) \
            or sorted(p.tolist()) != list(range(n_joints)):
        raise ValueError(f"swap must be a permutation of the {n_joints} GT joint indices, "
                         f"got {list(np.ravel(swap))}")
    return np.stack([2 * p, 2 * p + 1], axis=1).ravel()


def _swap_round(pred: np.ndarray, y: np.ndarray, perm, min_swaps: int) -> tuple[np.ndarray, bool]:
    """One exchange round: returns (per-sample error of the y it keeps, whether y changed)."""
    dist = _mean_joint_l2(pred, y)
    if perm is None:
        return dist, False
    swapped = y[:, perm]
    should = dist > _mean_joint_l2(pred, swapped)
    if int(should.sum()) > min_swaps:
        y[should] = swapped[should]
        return dist, True
    return dist, False


_FIT_NOISE_PX = 1e-9   # a spread of fit residuals below this (pixels) is float rounding


def _h36m_error(xtr, ytr, xte, yte, perm, min_swaps: int, sigma) -> dict:
    ytr, yte = ytr.copy(), yte.copy()
    ytr0, yte0 = ytr.copy(), yte.copy()
    for _ in range(_MAX_SWAP_ROUNDS):               # fit set: swap and refit
        w, *_ = np.linalg.lstsq(xtr, ytr, rcond=None)
        dist, changed = _swap_round(xtr @ w, ytr, perm, min_swaps)
        if not changed:
            break
    keep = np.ones(len(dist), dtype=bool)
    if sigma is not None and len(dist) > 1:
        std = dist.std(ddof=1)
        if std > _FIT_NOISE_PX:  # an exact fit's residuals are rounding: nothing is an outlier
            keep = dist < dist.mean() + sigma * std
    if not keep.all():
        w, *_ = np.linalg.lstsq(xtr[keep], ytr[keep], rcond=None)
    pred = xte @ w
    for _ in range(_MAX_SWAP_ROUNDS):               # test set: swap with the fixed fit
        dist, changed = _swap_round(pred, yte, perm, min_swaps)
        if not changed:
            break
    return {"error": float(dist.mean()), "n_train_used": int(keep.sum()),
            "n_train_swapped": int((ytr != ytr0).any(axis=1).sum()),
            "n_test_swapped": int((yte != yte0).any(axis=1).sum())}


def _taichi_error(xtr, ytr, xte, yte) -> float:
    """Mean over GT coordinates of the test MAE (pixels) of per-coordinate fits with bias."""
    ftr = np.concatenate([xtr, np.ones((len(xtr), 1))], axis=1)
    fte = np.concatenate([xte, np.ones((len(xte), 1))], axis=1)
    scores = []
    for c in range(ytr.shape[1]):
        tr, te = np.isfinite(ytr[:, c]), np.isfinite(yte[:, c])
        if not tr.any() or not te.any():
            continue
        beta, *_ = np.linalg.lstsq(ftr[tr], ytr[tr, c], rcond=None)
        scores.append(np.abs(fte[te] @ beta - yte[te, c]).mean())
    return float(np.mean(scores)) if scores else math.nan


def keypoint_spread(points) -> float:
    """Mean over images of the mean pairwise Euclidean distance between an image's points.

    points: ``[N, K, 2]`` (any units; the result is in the same units), K >= 2. For each image,
    the mean over the ``K (K - 1) / 2`` unordered pairs ``i < j`` of ``||p_i - p_j||``; then the
    mean over the N images.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != 2:
        raise ValueError(f"points must be [N, K, 2], got shape {p.shape}")
    if p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"spread needs at least one image and two points, got shape {p.shape}")
    iu, ju = np.triu_indices(p.shape[1], k=1)
    return float(np.linalg.norm(p[:, iu] - p[:, ju], axis=2).mean())


def spread_ratio(kp, gt) -> float:
    """``keypoint_spread(kp) / keypoint_spread(gt)``: how spread the detected keypoints are
    relative to the GT joints (issue 12 asks for >= 0.6; keypoints collapsed onto a point give
    0). kp: ``[N, K, 2]``, gt: ``[N, J, 2]``, same units and images. NaN when the GT spread is 0.
    """
    kp, gt = np.asarray(kp), np.asarray(gt)
    if kp.ndim == 3 and gt.ndim == 3 and kp.shape[0] != gt.shape[0]:
        raise ValueError(f"kp has {kp.shape[0]} images, gt has {gt.shape[0]}")
    den = keypoint_spread(gt)
    return keypoint_spread(kp) / den if den > 0 else math.nan


def joint_switches(points, joints, radius: float, min_on: float = 0.25,
                   ignore=()) -> np.ndarray:
    """How well each predicted point keeps one true joint over a video.

    points: ``[T, P, 2]``, joints: ``[T, J, 2]``, same units; radius: in those units. A point is
    on joint j in frame t when j is its nearest joint and nearer than ``radius``. Returns one
    row per point that is on a joint (other than those in ``ignore``) in at least ``min_on`` of
    the T frames, float64 ``[P', 4]``: that fraction of frames; the fraction of its on-joint
    frames spent on its most frequent joint; the number of distinct joints it visits; and, over
    consecutive frames both on a joint, the fraction in which the joint changes.
    """
    d = pairwise_distances(points, joints)                                   # [T, P, J]
    label = np.where(d.min(axis=2) < radius, d.argmin(axis=2), -1)           # [T, P]
    rows = []
    for lab in label.T:
        on = (lab >= 0) & ~np.isin(lab, list(ignore))
        if on.mean() < min_on:
            continue
        seen = lab[lab >= 0]
        both = (lab[1:] >= 0) & (lab[:-1] >= 0)
        changes = np.count_nonzero(both & (lab[1:] != lab[:-1]))
        rows.append((on.mean(), np.bincount(seen).max() / len(seen), len(np.unique(seen)),
                     changes / max(np.count_nonzero(both), 1)))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


# ----------------------------------------------------------------------------- model outputs

def skeleton_joints(points, link_prob, thr: float = 0.5) -> np.ndarray:
    """Indices of the skeleton model's joints: points with at least one link of probability >= thr.

    points: ``[P, 2]`` (only its length is used, to check shapes); link_prob: ``[P, P]`` link
    probabilities (either triangle may hold a pair: the matrix is read symmetrically; the diagonal
    is ignored). Returns increasing int indices ``[P']``.
    """
    p = np.asarray(link_prob, dtype=np.float64)
    n = np.asarray(points).shape[0]
    if p.shape != (n, n):
        raise ValueError(f"link_prob must be [{n}, {n}] for {n} points, got {p.shape}")
    linked = (p >= thr) | (p.T >= thr)
    np.fill_diagonal(linked, False)
    return np.flatnonzero(linked.any(axis=1))


def select_skeleton(points, link_prob, thr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Skeleton model's joints and adjacency for one video.

    points: ``[T, P, 2]`` foreground point trajectories; link_prob: ``[P, P]`` from the one frame
    chosen for the video. Returns ``(joints [T, P', 2], adj [P', P'] bool)`` with the points kept
    by :func:`skeleton_joints` and ``adj = link_prob >= thr`` among them (symmetrised).
    """
    points = np.asarray(points)
    idx = skeleton_joints(np.empty((points.shape[1], 2)), link_prob, thr)
    adj = _bool_adjacency(np.asarray(link_prob, dtype=np.float64) >= thr, "link_prob")
    return points[:, idx], adj[np.ix_(idx, idx)]


def link_frame(seed: int, index: int, frames: int) -> int:
    """The frame whose predicted links stand for a whole video: one random frame, as the paper
    does, seeded by ``seed`` and the episode ``index`` so every evaluation picks the same one."""
    return int(np.random.default_rng([seed, index]).integers(frames))


def autolink_adjacency(edge_weights, method: str = "max", thr: float = 0.5) -> np.ndarray:
    """AutoLink's shared graph -> bool adjacency ``[K, K]``.

    edge_weights: ``[K, K]`` non-negative weights (after AutoLink's SoftPlus); the weight of the
    unordered pair {i, j} is ``edge_weights[min(i, j), max(i, j)]`` (upper triangle). Normalised
    to [0, 1] over the pairs, then ``>= thr``:
      - ``"max"`` (default): ``w / max(w)``;
      - ``"minmax"``: ``(w - min(w)) / (max(w) - min(w))``.
    A graph whose normalisation is undefined (max 0, or all weights equal for minmax) has no
    link. Returns a symmetric bool matrix with a False diagonal.
    """
    w = np.asarray(edge_weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"edge_weights must be [K, K], got {w.shape}")
    k = w.shape[0]
    iu, ju = np.triu_indices(k, k=1)
    pair = w[iu, ju]
    adj = np.zeros((k, k), dtype=bool)
    if pair.size == 0:
        return adj
    if method == "max":
        top = pair.max()
        norm = pair / top if top > 0 else np.zeros_like(pair)
    elif method == "minmax":
        lo, hi = pair.min(), pair.max()
        norm = (pair - lo) / (hi - lo) if hi > lo else np.zeros_like(pair)
    else:
        raise ValueError(f"unknown method {method!r} (use 'max' or 'minmax')")
    keep = norm >= thr
    adj[iu[keep], ju[keep]] = True
    return adj | adj.T


# ----------------------------------------------------------------------------- aggregation

def aggregate(per_video: Sequence[Mapping] | Iterable[Mapping]) -> dict:
    """Dataset-level figures: mean over videos of every numeric key, ignoring NaN.

    per_video: dicts as returned by the metric functions (non-numeric values are skipped).
    Returns ``{key: mean, ..., "n_videos": N, "nan_count": {key: number of NaN videos}}``; a key
    that is NaN in every video has mean NaN.
    """
    per_video = list(per_video)
    keys: list[str] = []
    for rec in per_video:
        for k, v in rec.items():
            if k not in keys and _is_number(v):
                keys.append(k)
    out: dict = {}
    nan_count: dict = {}
    for k in keys:
        vals = np.array([float(rec[k]) for rec in per_video if k in rec and _is_number(rec[k])])
        finite = vals[~np.isnan(vals)]
        out[k] = float(finite.mean()) if finite.size else math.nan
        nan_count[k] = int(vals.size - finite.size)
    out["n_videos"] = len(per_video)
    out["nan_count"] = nan_count
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def spearman(x, y) -> float:
    """Spearman's rank correlation; NaN when either side is constant or has < 3 values."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(spearmanr(x, y).statistic)
