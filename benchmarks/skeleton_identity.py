"""Do a skeleton checkpoint's points cover the true joints frame by frame, and keep them over a video?

    python benchmarks/skeleton_identity.py CHECKPOINT --data SHARDS [--episodes 30] [--eps 0.15]

The joint metrics match predicted joints to true joints once per video (Hungarian on the mean
distance over the video, the paper's protocol), so a point that sits on a joint in every frame
but on a different joint from frame to frame scores as a miss. On ``--episodes`` test episodes
this prints, for pi's points (all P of them: the best that psi could pick):

- per true joint name: the share of frames with some point within eps ("covered"), and the
  share of videos whose matched point is within eps on average ("kept");
- the recall of true joints by an exclusive choice of points, matched in each frame
  separately against one matching per video. The gap between the two is what the points'
  lack of identity over time costs the joint scores;
- how much the distance between two kept points varies over a video (relative spread: mean
  absolute deviation over the mean), for pairs whose true joints are linked (a bone) and pairs
  that skip a hinge, beside the same for the true joints. On the truth a bone varies less than
  a skipping pair; if pi's points show no such gap, no length cue (``solver_rigidity``) can
  tell a bone from a shortcut on them.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def relative_spread(a: np.ndarray, b: np.ndarray) -> float:
    """How much the distance between two tracks a, b [T, 2] varies over the T frames: mean
    absolute deviation from its mean, over its mean (0 for a pair that keeps its distance)."""
    length = np.linalg.norm(np.asarray(a, float) - np.asarray(b, float), axis=-1)
    return float(np.abs(length - length.mean()).mean() / max(length.mean(), 1e-9))


def identity_report(points_px: np.ndarray, joints_px: np.ndarray, size: int, eps: float,
                    adjacency: np.ndarray | None = None) -> dict:
    """points_px [T, P, 2], joints_px [T, J, 2] pixels -> {'covered' [J], 'kept' [J] bool,
    'recall_frame', 'recall_video'} (normalised units for eps, as the joint metrics); with the
    true ``adjacency`` [J, J] also 'spread': {"bone" | "skip": [(points', true joints'
    relative_spread)]} over the pairs of kept joints."""
    from scipy.optimize import linear_sum_assignment

    from kpray.metrics import normalise_pixels, pairwise_distances, video_matching

    d = pairwise_distances(normalise_pixels(points_px, size), normalise_pixels(joints_px, size))
    rows, cols = video_matching(None, None, d)                       # d: [T, P, J]
    j = joints_px.shape[1]
    kept = np.zeros(j, bool)
    kept[cols] = d[:, rows, cols].mean(axis=0) <= eps
    per_frame = []
    for dt in d:
        r, c = linear_sum_assignment(dt)
        per_frame.append((dt[r, c] <= eps).sum() / j)
    out = {"covered": (d.min(axis=1) <= eps).mean(axis=0), "kept": kept,
           "recall_frame": float(np.mean(per_frame)),
           "recall_video": float((d[:, rows, cols] <= eps).sum(axis=1).mean() / j)}
    if adjacency is not None:
        point_of = {int(c): int(r) for r, c in zip(rows, cols) if kept[c]}
        out["spread"] = {"bone": [], "skip": []}
        for u, v in itertools.combinations(sorted(point_of), 2):
            kind = "bone" if adjacency[u, v] else "skip"
            out["spread"][kind].append((relative_spread(points_px[:, point_of[u]], points_px[:, point_of[v]]),
                                        relative_spread(joints_px[:, u], joints_px[:, v])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="skeleton run folder or checkpoint_* folder")
    ap.add_argument("--data", required=True, help="shard folder with a test split")
    ap.add_argument("--episodes", type=int, default=30, help="test episodes used")
    ap.add_argument("--eps", type=float, default=None,
                    help="match threshold, normalised units (default: the paper's for the dataset)")
    args = ap.parse_args(argv)

    from kpray.data import iter_episodes
    from kpray.evaluation import EvaluationError
    from kpray.metrics import paper_epsilon
    from kpray.train.models import get_adapter
    from kpray.train.predict import load_checkpoint

    try:
        episodes = list(itertools.islice(iter_episodes(args.data, split="test"), args.episodes))
        if not episodes:
            raise EvaluationError(f"no test episodes in {args.data}")
        state, cfg = load_checkpoint(args.checkpoint)
        if cfg.model != "skeleton":
            raise EvaluationError(f"{args.checkpoint} holds a {cfg.model} model, not a skeleton model")
    except (OSError, ValueError, EvaluationError) as e:
        print(f"skeleton_identity.py: error: {e}", file=sys.stderr)
        return 2
    eps = args.eps or paper_epsilon(str(episodes[0]["meta"].get("dataset", ""))) or 0.2
    adapter = get_adapter("skeleton")
    model = adapter.build(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    covered, kept = collections.defaultdict(list), collections.defaultdict(list)
    recall_f, recall_v = [], []
    spread = {"bone": [], "skip": []}
    for ep in episodes:
        points = adapter.points(model, ep["frames"])
        r = identity_report(np.asarray(points, float), np.asarray(ep["joints"], float),
                            ep["frames"].shape[1], eps, np.asarray(ep["adjacency"], bool))
        for kind in spread:
            spread[kind] += r["spread"][kind]
        for name, c, k in zip(ep["meta"]["joint_names"], r["covered"], r["kept"]):
            covered[name].append(c)
            kept[name].append(k)
        recall_f.append(r["recall_frame"])
        recall_v.append(r["recall_video"])
    print(f"{args.checkpoint}: {len(episodes)} test videos, eps {eps}, P = {cfg.model_config.get('num_points', '?')}")
    print("| true joint | videos | frames with a point within eps | videos whose matched point stays within eps |")
    print("| --- | --- | --- | --- |")
    for name in sorted(covered):
        print(f"| {name} | {len(covered[name])} | {np.mean(covered[name]):.2f} | {np.mean(kept[name]):.2f} |")
    print(f"recall of the true joints by an exclusive choice of points: matched per frame "
          f"{np.mean(recall_f):.2f}, one matching per video {np.mean(recall_v):.2f}")
    print("\n| pairs of kept joints | pairs | points: relative spread of their distance, median (q25-q75) "
          "| true joints: the same |")
    print("| --- | --- | --- | --- |")
    for kind, label in (("bone", "linked (a bone)"), ("skip", "not linked (skipping a hinge)")):
        if spread[kind]:
            q = np.percentile(np.asarray(spread[kind]), [50, 25, 75], axis=0)     # [3, 2]
            print(f"| {label} | {len(spread[kind])} | " + " | ".join(
                f"{q[0, i]:.3f} ({q[1, i]:.3f}-{q[2, i]:.3f})" for i in range(2)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
