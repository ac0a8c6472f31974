"""The skeleton model's training glue: build, step, diagnostics, preview, validation. See
``kpray.train.adapter`` for the interface."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from PIL import Image

from kpray.ops.coords import to_pixels
from kpray.train.adapter import (Adapter, draw_points, epsilon_for, grid, replace_fields,
                                 score_metrics, to_uint8)


class SkeletonAdapter(Adapter):
    sample_mode = "pair"
    images_per_sample = 2
    loss_terms = ("recon", "contiguity", "near", "sparse_joints", "sparse_links", "uniform",
                  "length", "psi_fit", "rigidity", "track")

    def make_config(self, preset, overrides):
        from kpray.models import skeleton as S
        from kpray.train.config import ConfigError

        from kpray.losses.skeleton import LossWeights

        if preset is None:
            base = S.SkeletonConfig()
        elif S.L.preset_for_dataset(preset) is not None:   # a row, or a dataset that maps to one
            base = S.SkeletonConfig.from_preset(S.L.preset_for_dataset(preset))
        else:
            raise ConfigError(f"unknown preset {preset!r} for the skeleton model: choose from "
                              f"{', '.join(sorted(S.L.PRESETS))}")
        overrides = dict(overrides)
        if "preset" in overrides and overrides["preset"] not in S.L.PRESETS:
            raise ConfigError(f"unknown loss-weight preset {overrides['preset']!r}")
        w = overrides.get("weights")
        if w is not None and not isinstance(w, (dict, LossWeights)):
            raise ConfigError(f"weights must be a JSON object of loss weights, e.g. "
                              f"'weights={{\"uniform\": 10}}', got {w!r}")
        if isinstance(w, dict):      # partial weights, merged onto the preset's row
            cur = (base if "preset" not in overrides else
                   dataclasses.replace(base, preset=overrides["preset"])).loss_weights().as_dict()
            bad = sorted(set(w) - set(cur))
            if bad:
                raise ConfigError(f"unknown loss weight(s) {', '.join(map(repr, bad))}; known: "
                                  f"{', '.join(cur)}")
            overrides["weights"] = LossWeights(**{**cur, **{k: float(v) for k, v in w.items()}})
        return replace_fields(S.SkeletonConfig, base, overrides, "skeleton model")

    def check(self, mcfg) -> None:
        from kpray.models.skeleton import check_config
        from kpray.train.config import ConfigError

        try:
            check_config(mcfg)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not mcfg.num_points >= 2:
            raise ConfigError(f"--points must be >= 2, got {mcfg.num_points}")
        if mcfg.image_size % 16:
            raise ConfigError(f"image_size must be a multiple of 16, got {mcfg.image_size}")

    def build(self, cfg):
        from kpray.models.skeleton import SkeletonModel

        return SkeletonModel(self.make_config(cfg.preset, cfg.model_config))

    def call(self, model, batch, step):
        if model.config.track_weight > 0:
            return model((batch["source"], batch["target"], batch["track"]), step=step)
        return model((batch["source"], batch["target"]), step=step)

    def image_size(self, model):
        return getattr(model.config, "image_size", 64)

    @torch.no_grad()
    def predict(self, model, frames: np.ndarray, link_frame: int | None = None) -> dict:
        """frames [T, H, W, 3] uint8 -> points [T, P, 2] pixels, link probabilities [T, P, P].
        link_frame: only that frame's links will be read (see ``SkeletonModel.predict``)."""
        out = model.predict(self.frames_tensor(model, frames), video=True, link_frame=link_frame)
        pts = to_pixels(out.points.float(), frames.shape[1]).cpu().numpy()
        return {"points": pts, "links": out.links.float().cpu().numpy()}

    @torch.no_grad()
    def points(self, model, frames: np.ndarray) -> np.ndarray:
        """frames [T, H, W, 3] uint8 -> the points [T, P, 2] pixels of ``predict``, without psi."""
        pts = model.predict_points(self.frames_tensor(model, frames), video=True)
        return to_pixels(pts.float(), frames.shape[1]).cpu().numpy()

    def frames_tensor(self, model, frames: np.ndarray) -> torch.Tensor:
        """frames [T, H, W, 3] uint8 -> the model's input [T, 3, S, S] on its device."""
        from kpray.train.data import to_device

        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        return to_device({"x": x}, next(model.parameters()).device, self.image_size(model))["x"]

    @torch.no_grad()
    def preview(self, model, batch, step):
        was = model.training
        model.eval()
        src, tgt = batch["source"][:4], batch["target"][:4]
        out = model.run(src, tgt, step=step)
        pred = model.predict(tgt)
        model.train(was)
        s = tgt.shape[-1]
        thr = model.config.link_threshold
        rows = []
        for b in range(src.shape[0]):
            img = to_uint8(tgt[b])
            pts = to_pixels(pred.points[b].float(), s).cpu().numpy()
            adj = pred.links[b].float().cpu().numpy() >= thr
            rows.append([Image.fromarray(to_uint8(src[b])), Image.fromarray(img),
                         Image.fromarray(to_uint8(out["reconstruction"][b])),
                         draw_points(img, pts, adj, scale=3)])
        return grid(rows)

    def diagnostics(self, model, batch, step):
        """Per loss term k: ``grad_pi/k`` and ``grad_psi/k``, the norm of the weighted term's
        gradient on pi's and psi's parameters (before clipping); psi's logits z: ``psi_z_abs``
        (mean |z|) and ``psi_z_batch_std`` (std over the batch, mean over pairs: 0 when the
        links do not depend on the image); ``links_batch_std`` (std over the batch of the number
        of links >= the threshold). BatchNorm statistics are restored afterwards."""
        c = model.config
        saved = {k: v.clone() for k, v in model.state_dict().items()
                 if "running_" in k or "num_batches" in k}
        was = model.training
        model.train()
        src, tgt = batch["source"], batch["target"]
        out = model.run(src, tgt, step=step,
                        track=batch["track"] if c.track_weight > 0 else None)
        terms = model.loss_terms(out, tgt)
        weights = model.term_weights(step)
        nets = {"pi": [p for p in model.pi.parameters() if p.requires_grad],
                "psi": [p for p in model.psi.parameters() if p.requires_grad]}
        res = {}
        for k, v in terms.items():
            for net, params in nets.items():
                if weights[k] == 0 or not v.requires_grad or not params:
                    res[f"grad_{net}/{k}"] = 0.0
                    continue
                grads = torch.autograd.grad(weights[k] * v, params, retain_graph=True,
                                            allow_unused=True)
                sq = [(g.float() ** 2).sum() for g in grads if g is not None]
                res[f"grad_{net}/{k}"] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
        with torch.no_grad():
            if hasattr(model.psi, "logits"):          # the solver (psi_head="solver") has none
                z = model.psi.logits(src, out["source_maps"])                 # [B, E]
                res["psi_z_abs"] = float(z.abs().mean())
                res["psi_z_batch_std"] = float(z.std(dim=0).mean()) if z.shape[0] > 1 else 0.0
            if out["links"] is not None:
                counts = (out["links"] >= c.link_threshold).sum(dim=(1, 2)).float() / 2
                res["links_batch_std"] = float(counts.std()) if counts.numel() > 1 else 0.0
        model.load_state_dict(saved, strict=False)
        model.train(was)
        return res

    def validate(self, model, data, cfg):
        """The metrics of ``score_metrics`` (links of each video from one random frame, seeded
        by the run's seed and the episode index, as the paper does), and:
        ``val_points_on_object`` (fraction of points, all frames, on the object's mask dilated by
        one pixel) against ``val_mask_fraction`` (the undilated mask's share of the image; the
        chance level of the former is the dilated mask's share, larger for thin limbs),
        ``val_joint_count_spearman`` (rank correlation over videos of the predicted and true
        number of joints; 0 when either is constant), and per body kind B
        ``val_joints_B`` and ``val_links_B`` (B without its colon, e.g. cartpole3)."""
        from kpray.evaluation import evaluate_video
        from kpray.metrics import link_frame, select_skeleton, spearman

        model.eval()
        test = data["test"]
        if not test:
            return {}
        eps = epsilon_for(cfg, test)
        recs, on, cover, counts, bodies = [], [], [], [], {}
        for ep in test:
            f = link_frame(cfg.seed, int(ep["meta"].get("index", 0)), len(ep["frames"]))
            p = self.predict(model, ep["frames"], link_frame=f)
            joints, adj = select_skeleton(p["points"], p["links"][f])
            recs.append(evaluate_video(ep, joints, adj, eps))
            counts.append((joints.shape[1], ep["joints"].shape[1]))
            body = str(ep["meta"].get("body", "unknown")).replace(":", "")
            bodies.setdefault(body, []).append((joints.shape[1], int(np.triu(adj, 1).sum())))
            if "masks" in ep:
                on.append(points_on_mask(p["points"], ep["masks"]))
                cover.append(float(np.asarray(ep["masks"]).mean()))
        out = score_metrics(recs)
        if on:
            out["val_points_on_object"] = float(np.mean(on))
            out["val_mask_fraction"] = float(np.mean(cover))
        rho = spearman([a for a, _ in counts], [b for _, b in counts])
        out["val_joint_count_spearman"] = 0.0 if math.isnan(rho) else rho
        for body, v in sorted(bodies.items()):
            out[f"val_joints_{body}"] = float(np.mean([a for a, _ in v]))
            out[f"val_links_{body}"] = float(np.mean([b for _, b in v]))
        return out


def points_on_mask(points_px: np.ndarray, masks: np.ndarray, dilate: int = 1) -> float:
    """Fraction of points [T, P, 2] (pixels, x then y) whose nearest pixel lies on the mask
    [T, H, W] dilated by ``dilate`` pixels (points outside the image count as off)."""
    from scipy.ndimage import binary_dilation

    masks = np.asarray(masks, dtype=bool)
    if dilate:
        masks = binary_dilation(masks, structure=np.ones((1, 2 * dilate + 1, 2 * dilate + 1), bool))
    t, h, w = masks.shape
    xy = np.rint(np.asarray(points_px)).astype(int)                   # [T, P, 2]
    inside = (xy[..., 0] >= 0) & (xy[..., 0] < w) & (xy[..., 1] >= 0) & (xy[..., 1] < h)
    x, y = np.clip(xy[..., 0], 0, w - 1), np.clip(xy[..., 1], 0, h - 1)
    hit = masks[np.arange(t)[:, None], y, x] & inside
    return float(hit.mean())
