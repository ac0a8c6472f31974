"""Do an AutoLink checkpoint's keypoints keep an identity? (docs/benchmarks.md, issue 12)

The keypoint regression (a linear map from the K keypoints to the J joints) only beats a
constant pose when keypoint k means the same body part in every frame. This script separates
"the keypoints are on the body" from "each keypoint tracks one part", for the trained model
and its untrained step-0 twin:

- regression error (fraction of the image side) from all keypoints, plain and h36m protocols,
  without and with a bias column, and from the keypoints' mean alone;
- the same from the true joints' centroid (an oracle that knows where the body is, not its pose);
- per keypoint, its *purity*: the share of test frames in which its nearest GT joint is its most
  frequent nearest joint (1 = always the same joint; 1/J = no identity);
- the mean distance from a keypoint to its nearest joint, and how much each keypoint and each
  joint moves over the test frames (std in pixels).

    python benchmarks/autolink_identity.py runs/learn-autolink/train runs/learn-autolink/data
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def with_bias(x: np.ndarray) -> np.ndarray:
    """``[N, K, 2]`` points -> ``[N, K + 1, 2]`` with a constant point (1, 1): a bias column for
    a regression that has none."""
    return np.concatenate([x, np.ones((len(x), 1, 2))], axis=1)


def purity(kp: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """kp ``[N, K, 2]``, gt ``[N, J, 2]`` -> ``[K]``: for each keypoint, the share of frames whose
    nearest joint is its most frequent nearest joint."""
    near = np.linalg.norm(kp[:, :, None] - gt[:, None], axis=-1).argmin(-1)          # [N, K]
    return np.array([np.bincount(near[:, k], minlength=gt.shape[1]).max() / len(near)
                     for k in range(kp.shape[1])])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="AutoLink run folder (newest checkpoint) or checkpoint_*/")
    p.add_argument("data", help="the dataset's shard folder (test split scored, train split fitted)")
    p.add_argument("--train-episodes", type=int, default=60)
    a = p.parse_args(argv)

    import torch

    from kpray.autolink_report import _train_episodes, trained_model, untrained_model
    from kpray.data import iter_episodes
    from kpray.evaluation import episode_body, most_common_body
    from kpray.metrics import lr_swap_permutation, regression_details
    from kpray.train.predict import _episode_keypoints

    model, adapter, cfg, state = trained_model(a.checkpoint)
    test = list(iter_episodes(a.data, split="test"))
    body = most_common_body(test)
    test = [e for e in test if episode_body(e) == body]
    train = _train_episodes(a.data, body, a.train_episodes)
    size = float(np.asarray(test[0]["frames"]).shape[1])
    gtr = np.concatenate([e["joints"] for e in train]).astype(np.float64)
    gte = np.concatenate([e["joints"] for e in test]).astype(np.float64)
    swap = lr_swap_permutation(body[1]) if body[1] else None

    def reg(xtr, xte, protocol="plain"):
        return regression_details(xtr, gtr, xte, gte, size, protocol=protocol,
                                  swap=swap if protocol == "h36m" else None)["error"]

    def keypoints(m, eps):
        with torch.no_grad():
            return np.concatenate([_episode_keypoints(m, adapter, np.asarray(e["frames"]))
                                   for e in eps])

    print(f"{a.checkpoint} (step {state['step']}): {len(test)} test / {len(train)} train "
          f"episodes, J = {gte.shape[1]}, image {size:.0f} px")
    print("| model | all kp, plain | + bias | h36m | h36m + bias | kp mean, plain | + bias | "
          "kp to nearest joint, px | purity per keypoint | kp std over frames, px |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m in (("untrained", untrained_model(cfg)), (f"step {state['step']}", model)):
        ktr, kte = keypoints(m, train), keypoints(m, test)
        mtr, mte = ktr.mean(1, keepdims=True), kte.mean(1, keepdims=True)
        dist = np.linalg.norm(kte[:, :, None] - gte[:, None], axis=-1).min(-1).mean()
        print(f"| {name} | {reg(ktr, kte):.3f} | {reg(with_bias(ktr), with_bias(kte)):.3f} | "
              f"{reg(ktr, kte, 'h36m'):.3f} | {reg(with_bias(ktr), with_bias(kte), 'h36m'):.3f} | "
              f"{reg(mtr, mte):.3f} | {reg(with_bias(mtr), with_bias(mte)):.3f} | {dist:.1f} | "
              f"{' '.join(f'{v:.2f}' for v in purity(kte, gte))} | "
              f"{' '.join(f'{v:.1f}' for v in kte.std(0).mean(-1))} |")
    ctr, cte = gtr.mean(1, keepdims=True), gte.mean(1, keepdims=True)
    print(f"\nGT centroid alone: plain {reg(ctr, cte):.3f}, with bias "
          f"{reg(with_bias(ctr), with_bias(cte)):.3f}; mean |joint - centroid| = "
          f"{np.linalg.norm(gte - cte, axis=-1).mean() / size:.3f} of the image; joint std over "
          f"frames, px: {' '.join(f'{v:.1f}' for v in gte.std(0).mean(-1))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
