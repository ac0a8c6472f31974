"""An upper bound for AutoLink's keypoint regression on a dataset: the same detector, trained
WITH the ground-truth joints (docs/benchmarks.md, issue 12).

AutoLink's detector learns without labels; if the same network, at the same image size, width
and heatmap size, trained for the same number of steps with the true joints as targets, cannot
bring the keypoint regression below a figure, the self-supervised one cannot either. This
script trains ``OfficialDetector`` with K = J keypoints by L2 to the joints (the loss takes the
better of the joints and their left/right exchange per image, since a body's two legs look alike),
then scores it exactly like a checkpoint: keypoint regression (h36m and plain protocols, fitted
on ``--fit-episodes`` train episodes, scored on every test episode, kpray.evaluation.regression_block)
and the direct error of its keypoints (after the same exchange).

    python benchmarks/autolink_supervised.py runs/learn-autolink/data --steps 3000
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def swap_min_l2(pred: torch.Tensor, gt: torch.Tensor, swap: list[int] | None) -> torch.Tensor:
    """pred, gt [B, J, 2] -> [B] mean over joints of the squared distance, the smaller of gt and
    gt[:, swap] per image (swap None: gt only)."""
    d = (pred - gt).pow(2).sum(-1).mean(-1)
    if swap is not None:
        d = torch.minimum(d, (pred - gt[:, swap]).pow(2).sum(-1).mean(-1))
    return d


def load_body_data(data: str, train_episodes: int, seed: int):
    """Seeds torch, reads ``train_episodes`` train and every test episode of ``data`` (all frames).
    Returns ``(train, test, joint_names, size, frames [N, S, S, 3] uint8 of train, rng)``."""
    from kpray.train.data import load_episodes

    torch.manual_seed(seed)
    train = load_episodes(data, "train", train_episodes, 10 ** 6)
    test = load_episodes(data, "test", 10 ** 6, 10 ** 6)
    frames = np.concatenate([e["frames"] for e in train])
    return (train, test, train[0]["meta"].get("joint_names"), train[0]["frames"].shape[1], frames,
            np.random.default_rng(seed))


def score_keypoints(fit_kp, test_kp, fit, test, names, size: int) -> dict:
    """``kpray.evaluation.regression_block`` of keypoints ``[N, K, 2]`` pixels predicted on the
    episodes ``fit`` (the regression is fitted there) and ``test`` (scored there)."""
    from kpray.evaluation import regression_block

    return regression_block(fit_kp, np.concatenate([e["joints"] for e in fit]), test_kp,
                            np.concatenate([e["joints"] for e in test]), image_size=size,
                            joint_names=names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="shard folder of one body (train and test splits)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--width", type=int, default=16, help="detector_width (recipe: 16)")
    p.add_argument("--heatmap-size", type=int, default=16, help="recipe: 16 at 64 px")
    p.add_argument("--train-episodes", type=int, default=300)
    p.add_argument("--fit-episodes", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from kpray.metrics import lr_swap_permutation
    from kpray.models.autolink import OfficialDetector, official_init_
    from kpray.ops.coords import soft_argmax, to_normalised, to_pixels

    train, test, names, size, frames, rng = load_body_data(a.data, a.train_episodes, a.seed)
    swap = lr_swap_permutation(names) if names else None
    joints = np.concatenate([e["joints"] for e in train]).astype(np.float32)  # [N, J, 2] px
    j = joints.shape[1]

    det = OfficialDetector(j, a.width, size, a.heatmap_size)
    official_init_(det)
    opt = torch.optim.AdamW(det.parameters(), lr=a.lr, weight_decay=1e-3)

    def to_input(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).mul(2).sub(1)

    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        idx = rng.integers(0, len(frames), a.batch_size)
        kp = soft_argmax(det(to_input(frames[idx])))
        loss = swap_min_l2(kp, to_normalised(torch.from_numpy(joints[idx]), size), swap).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == a.steps:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    det.eval()

    def predict(eps):
        with torch.no_grad():
            return np.concatenate([to_pixels(soft_argmax(det(to_input(e["frames"]))), size).numpy()
                                   for e in eps]).astype(np.float64)

    kte = predict(test)
    block = score_keypoints(predict(train[:a.fit_episodes]), kte, train[:a.fit_episodes], test,
                            names, size)
    gte = np.concatenate([e["joints"] for e in test]).astype(np.float64)
    direct = swap_min_l2(torch.from_numpy(kte), torch.from_numpy(gte), swap).sqrt().mean().item()
    print(f"supervised detector (width {a.width}, heatmap {a.heatmap_size}, {size} px, {a.steps} "
          f"steps, {len(train)} train episodes): keypoint regression {block['protocol']} "
          f"{block['error']:.3f}, plain {block['plain_error']:.3f}; direct error (RMS over "
          f"joints, L/R exchange allowed) {direct / size:.3f} of the image; "
          f"{len(test)} test episodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
