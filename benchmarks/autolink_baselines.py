"""Reference figures for reading AutoLink's results on a dataset (docs/benchmarks.md, issue 12).

1. Keypoints at initialisation: the mean distance between an image's keypoints and the std of a
   keypoint over images, for the official detector + init and for our earlier one (test frames
   upsampled to 128 px, eval mode, 3 seeds).
2. What the keypoint regression gives without any keypoint: a constant regressor (the mean pose)
   and the body's true centroid (an oracle), with the h36m and plain protocols, fitted on
   ``--train-episodes`` train episodes and scored on every test episode.

    python benchmarks/autolink_baselines.py --data runs/learn-autolink/data
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def init_spread(data: str, seeds: int = 3) -> dict:
    from kpray.models.autolink import AutoLink, AutoLinkConfig, keypoint_spread
    from kpray.train.data import load_episodes

    eps = load_episodes(data, "test", 8, 4)
    x = torch.from_numpy(np.concatenate([e["frames"] for e in eps])).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    out = {}
    for name, kw in (("official", {}),
                     ("earlier (skip detector, torch init)",
                      {"detector": "skip", "init": "torch", "decoder": "unet"})):
        vals = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = AutoLink(AutoLinkConfig(loss="pixel_grad", **kw)).eval()
            with torch.no_grad():
                kp, _ = model.detect(x)
            # normalised units * 64 = pixels at 128 px
            vals.append((float(keypoint_spread(kp)) * 64, float(kp.std(0).mean()) * 64))
        out[name] = np.mean(vals, axis=0).tolist()
    return out


def regression_baselines(data: str, train_episodes: int = 60) -> dict:
    from kpray.data import iter_episodes
    from kpray.metrics import lr_swap_permutation, regression_details

    tr = [e for _, e in zip(range(train_episodes), iter_episodes(data, split="train"))]
    te = list(iter_episodes(data, split="test"))
    gtr = np.concatenate([e["joints"] for e in tr])
    gte = np.concatenate([e["joints"] for e in te])
    size = tr[0]["frames"].shape[1]
    swap = lr_swap_permutation(te[0]["meta"].get("joint_names"))

    def ones(n):
        return np.ones((n, 1, 2))

    inputs = {"constant (mean pose)": (ones(len(gtr)), ones(len(gte))),
              "true centroid + constant": (np.concatenate([gtr.mean(1, keepdims=True), ones(len(gtr))], 1),
                                           np.concatenate([gte.mean(1, keepdims=True), ones(len(gte))], 1))}
    return {name: {"h36m": regression_details(a, gtr, b, gte, size, protocol="h36m", swap=swap)["error"],
                   "plain": regression_details(a, gtr, b, gte, size)["error"]}
            for name, (a, b) in inputs.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="shard folder with train-*.tar and test-*.tar")
    ap.add_argument("--train-episodes", type=int, default=60)
    args = ap.parse_args(argv)
    print("| detector + init | mean distance between an image's keypoints (px at 128) | std of a keypoint over images (px) |")
    print("| --- | --- | --- |")
    for name, (within, across) in init_spread(args.data).items():
        print(f"| {name} | {within:.1f} | {across:.2f} |")
    print()
    print("| regressor input | regression, h36m | regression, plain |")
    print("| --- | --- | --- |")
    for name, v in regression_baselines(args.data, args.train_episodes).items():
        print(f"| {name} | {v['h36m']:.3f} | {v['plain']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
