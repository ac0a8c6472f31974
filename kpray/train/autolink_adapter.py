"""AutoLink's training glue: build, step, scalars, edge-weight image, preview, validation
(keypoint regression included). See ``kpray.train.adapter`` for the interface."""
from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import torch
from PIL import Image

from kpray.ops.coords import to_pixels
from kpray.train.adapter import (Adapter, draw_points, epsilon_for, grid, known_datasets,
                                 matrix_to_image, replace_fields, score_metrics, to_uint8)


class AutoLinkAdapter(Adapter):
    sample_mode = "frame"
    images_per_sample = 1
    loss_terms = ("perceptual", "equivariance")

    def make_config(self, preset, overrides):
        from kpray.models.autolink import AutoLinkConfig
        from kpray.train.config import ConfigError

        base = AutoLinkConfig()
        if preset is not None:
            presets = getattr(__import__("kpray.models.autolink", fromlist=["x"]), "PRESETS", {})
            if preset in presets:
                base = presets[preset]
            elif preset not in known_datasets():
                raise ConfigError(f"unknown preset {preset!r} for autolink: choose from "
                                  f"{', '.join(sorted(set(presets) | set(known_datasets())))}")
        return replace_fields(AutoLinkConfig, base, overrides, "autolink model")

    def check(self, mcfg) -> None:
        from kpray.losses.autolink import BACKBONE_FILES, backbone_weights_path, missing_weights_message
        from kpray.models.autolink import check_config
        from kpray.train.config import ConfigError

        if not mcfg.num_keypoints >= 2:
            raise ConfigError(f"--keypoints must be >= 2, got {mcfg.num_keypoints}")
        if not mcfg.thickness > 0:
            raise ConfigError(f"--thickness must be positive, got {mcfg.thickness}")
        try:
            check_config(mcfg)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if mcfg.perceptual_net not in BACKBONE_FILES:
            raise ConfigError(f"perceptual_net must be one of {sorted(BACKBONE_FILES)}")
        if mcfg.loss == "vgg" and mcfg.perceptual_weights is not None:
            if not os.path.isfile(mcfg.perceptual_weights):
                raise ConfigError(f"--perceptual-weights: no file {mcfg.perceptual_weights}")
        elif mcfg.loss in ("vgg", "lpips") and mcfg.pretrained:
            net = "vgg" if mcfg.loss == "vgg" else mcfg.perceptual_net
            if not os.path.isfile(backbone_weights_path(net)):
                raise ConfigError(missing_weights_message(net, backbone_weights_path(net)))

    def build(self, cfg):
        from kpray.models.autolink import AutoLink

        return AutoLink(self.make_config(cfg.preset, cfg.model_config))

    def call(self, model, batch, step):
        return model(batch["image"], step=step)

    def scalars(self, model):
        w = model.edge_weights().detach()
        k = w.shape[0]
        out = {"alpha": float(model.alpha.detach()),
               "edge_weight_mean": float(w.sum() / max(1, k * (k - 1))),
               "edge_weight_max": float(w.max())}
        if hasattr(model, "edge_skip"):
            out["edge_skip"] = float(model.edge_skip.detach())
        if hasattr(model, "edge_sign"):
            out["edge_sign"] = float(model.edge_sign)
        return {**out, **super().scalars(model)}

    def histograms(self, model):
        """``edge_weights``: the K (K - 1) / 2 weights of the shared graph."""
        w = model.edge_weights().detach()
        i, j = torch.triu_indices(w.shape[0], w.shape[0], 1)
        return {"edge_weights": w[i, j].float().cpu().numpy()}

    @torch.no_grad()
    def diagnostics(self, model, batch, step):
        """``keypoint_spread`` (mean distance between an image's keypoints, normalised units, in
        eval mode), ``loss`` and ``loss_no_edges`` (the loss with the edge map as drawn and
        zeroed, same masks), ``edge_reliance`` = their ratio - 1: 0 when the decoder ignores
        the edge map, and ``edge_response``: whether the edges brighten (> 0) or darken the
        reconstruction (``AutoLink.edge_map_reliance``)."""
        from kpray.models.autolink import keypoint_spread

        was = model.training
        model.eval()
        images = batch["image"]
        out = model.edge_map_reliance(images, seed=step, step=step)
        out["keypoint_spread"] = float(keypoint_spread(model.detect(images)[0]))
        model.train(was)
        return out

    def matrix_image(self, model):
        return matrix_to_image(model.edge_weights().detach().cpu().numpy())

    def _adjacency(self, model) -> np.ndarray:
        from kpray.metrics import autolink_adjacency

        return autolink_adjacency(model.edge_weights().detach().cpu().numpy())

    @torch.no_grad()
    def preview(self, model, batch, step):
        was = model.training
        model.eval()
        images = batch["image"][:4]
        out = model.reconstruct(images, step=step)
        model.train(was)
        adj = self._adjacency(model)
        s = images.shape[-1]
        rows = []
        for b in range(images.shape[0]):
            img = to_uint8(images[b])
            kp = to_pixels(out["keypoints"][b].float(), s).cpu().numpy()
            edge = out["edge_map"][b].float()
            edge = edge / edge.max().clamp_min(1e-8)
            rows.append([Image.fromarray(img), Image.fromarray(to_uint8(out["masked"][b])),
                         Image.fromarray(to_uint8(edge.expand(3, -1, -1))),
                         Image.fromarray(to_uint8(out["reconstruction"][b])),
                         draw_points(img, kp, adj, scale=1)])
        return grid(rows)

    def validation_data(self, cfg):
        from kpray.train.data import load_episodes

        data = super().validation_data(cfg)
        if data["test"]:
            data["train"] = load_episodes(cfg.data, "train", 3 * cfg.val_train_episodes,
                                          cfg.val_frames)
        return data

    @torch.no_grad()
    def keypoints(self, model, frames: np.ndarray) -> np.ndarray:
        """frames [T, H, W, 3] uint8 -> keypoints [T, K, 2] in pixels of the frames."""
        from kpray.train.data import to_device

        dev = next(model.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        x = to_device({"x": x}, dev, model.config.image_size)["x"]
        kp = model.predict(x)["keypoints"]                     # [T, K, 2] normalised
        return to_pixels(kp.float(), frames.shape[1]).cpu().numpy()

    def validate(self, model, data, cfg):
        """Joint and structure metrics, and the keypoint regression (``val_regression_error``: the
        default protocol for the body, ``kpray.metrics.default_regression_protocol``: Human3.6M's,
        with the body's left/right swap; ``val_regression_error_plain``: no swap, no outlier
        rejection), ``val_spread_ratio`` (keypoints' mean pairwise distance / the GT joints')."""
        from kpray.evaluation import evaluate_video, regression_block
        from kpray.metrics import spread_ratio

        model.eval()
        test = data["test"]
        if not test:
            return {}
        adj = self._adjacency(model)
        eps = epsilon_for(cfg, test)
        kps = [self.keypoints(model, ep["frames"]) for ep in test]
        out = score_metrics([evaluate_video(ep, kp, adj, eps) for ep, kp in zip(test, kps)])
        # keypoint regression on the most common number of GT joints
        j = Counter(ep["joints"].shape[1] for ep in test).most_common(1)[0][0]
        tr = [ep for ep in data.get("train", []) if ep["joints"].shape[1] == j][:cfg.val_train_episodes]
        te = [(ep, kp) for ep, kp in zip(test, kps) if ep["joints"].shape[1] == j]
        te_kp = np.concatenate([kp for _, kp in te])
        te_gt = np.concatenate([ep["joints"] for ep, _ in te])
        out["val_spread_ratio"] = spread_ratio(te_kp, te_gt)
        out["val_regression_error"] = out["val_regression_error_plain"] = math.nan
        if tr:
            tr_kp = np.concatenate([self.keypoints(model, ep["frames"]) for ep in tr])
            tr_gt = np.concatenate([ep["joints"] for ep in tr])
            block = regression_block(tr_kp, tr_gt, te_kp, te_gt, test[0]["frames"].shape[1],
                                     joint_names=te[0][0]["meta"].get("joint_names"))
            out["val_regression_error"] = block["error"]
            out["val_regression_error_plain"] = block["plain_error"]
        out["val_alpha"] = float(model.alpha.detach())
        return out
