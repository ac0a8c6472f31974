"""Adapters between the training loop and the two models (``kpray.models``).

The loop only talks to an :class:`Adapter`: how to build the model from a ``TrainConfig``, what a
sample is (a pair of frames or one frame), how to call a training step, what to log besides the
loss terms, how to draw a preview, and how to compute validation metrics from
``kpray.metrics``. The models themselves stay plain ``nn.Module``s whose forward returns
``(loss, terms)``.

Validation metric names (reported through ``ray.train.report``; Tune selects on them):

- both models, structure and joints (``kpray.evaluation.evaluate_video`` on ``val_episodes`` test
  episodes of ``val_frames`` frames, averaged over episodes): ``val_bcc``, ``val_acc``,
  ``val_struct_f1``, ``val_struct_precision``, ``val_struct_recall`` (skeleton paper Table I),
  ``val_joint_f1``, ``val_joint_precision``, ``val_joint_recall``, ``val_dist``,
  ``val_consistency``, ``val_diff`` (Table II), ``val_num_joints`` (predicted joints per video).
  A video whose structure metric is undefined (no matched pair, e.g. an untrained model that
  predicts no joint) counts as 0 for the higher-is-better scores, so an objective never sees
  NaN; ``val_dist`` stays NaN when no video has a joint.
- AutoLink, additionally: ``val_regression_error`` (AutoLink section 4.1, fraction of the image
  size, linear map fitted on ``val_train_episodes`` train episodes, tested on the validation
  episodes; only episodes whose body has the most common number of GT joints are used, since the
  regression needs a fixed J), ``val_alpha``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageDraw

from kpray.ops.coords import to_pixels

# ----------------------------------------------------------------------------- registry


def model_config_class(model: str):
    if model == "autolink":
        from kpray.models.autolink import AutoLinkConfig

        return AutoLinkConfig
    if model == "skeleton":
        from kpray.models.skeleton import SkeletonConfig

        return SkeletonConfig
    from kpray.train.config import ConfigError

    raise ConfigError(f"unknown model {model!r}: choose from skeleton, autolink")


def get_adapter(model: str) -> "Adapter":
    if model == "autolink":
        return AutoLinkAdapter()
    if model == "skeleton":
        return SkeletonAdapter()
    from kpray.train.config import ConfigError

    raise ConfigError(f"unknown model {model!r}: choose from skeleton, autolink")


def make_model_config(model: str, preset: str | None, overrides: dict):
    """The model's config dataclass: its preset for ``preset`` (when it has presets), then
    ``overrides``. Raises ConfigError on an unknown preset or field."""
    return get_adapter(model).make_config(preset, overrides)


def _replace_fields(cls, base, overrides: dict, what: str):
    from kpray.train.config import ConfigError

    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ConfigError(f"unknown {what} setting(s) {', '.join(map(repr, bad))}; known: "
                          f"{', '.join(sorted(names))}")
    kw = {}
    for k, v in overrides.items():
        cur = getattr(base, k)
        kw[k] = tuple(v) if isinstance(cur, tuple) and isinstance(v, list) else v
    try:
        return dataclasses.replace(base, **kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad {what} setting: {e}") from None


def _known_datasets() -> tuple[str, ...]:
    from kpray.metrics import PAPER_EPSILON

    try:
        from sim import DATASET_NAMES
    except Exception:  # noqa: BLE001 - sim is optional for training
        DATASET_NAMES = ()
    return tuple(dict.fromkeys([*PAPER_EPSILON, *DATASET_NAMES]))


def epsilon_for(cfg, episodes) -> float:
    """Hit threshold of the joint metrics: the paper's for the preset (or the episodes'
    dataset), 0.2 when neither is one of the paper's datasets."""
    from kpray.metrics import paper_epsilon

    for name in (cfg.preset, *(ep["meta"].get("dataset") for ep in episodes[:1])):
        if paper_epsilon(name) is not None:
            return paper_epsilon(name)
    return 0.2


# ----------------------------------------------------------------------------- drawing

def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> [H, W, 3] uint8."""
    return (x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def draw_points(img: np.ndarray, points_px: np.ndarray, adj: np.ndarray | None,
                scale: int = 2) -> Image.Image:
    """img [H, W, 3] uint8, points [P, 2] pixels (x, y), adj [P, P] bool or None -> upscaled image
    with links in white and points as coloured dots."""
    from kpray.preview import joint_colours

    h, w, _ = img.shape
    im = Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST)
    d = ImageDraw.Draw(im)
    pts = [((x + 0.5) * scale, (y + 0.5) * scale) for x, y in points_px]
    if adj is not None:
        for i, j in zip(*np.nonzero(np.triu(adj, 1))):
            d.line([pts[i], pts[j]], fill=(255, 255, 255), width=max(1, scale // 2))
    r = max(2, scale)
    for (x, y), c in zip(pts, joint_colours(len(pts))):
        d.ellipse([x - r, y - r, x + r, y + r], fill=c, outline=(0, 0, 0))
    return im


def grid(rows: list[list[Image.Image]], pad: int = 2) -> Image.Image:
    """Tiles (all the same size) -> one image, rows x columns."""
    tw = max(t.size[0] for r in rows for t in r)
    th = max(t.size[1] for r in rows for t in r)
    cols = max(len(r) for r in rows)
    out = Image.new("RGB", (cols * (tw + pad) + pad, len(rows) * (th + pad) + pad), (40, 40, 40))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            out.paste(tile.resize((tw, th), Image.NEAREST), (pad + c * (tw + pad), pad + r * (th + pad)))
    return out


def matrix_to_image(m: np.ndarray, cell: int = 8) -> np.ndarray:
    """[K, K] non-negative matrix -> [K*cell, K*cell, 3] uint8 heat image (scaled by its max)."""
    m = np.asarray(m, dtype=np.float64)
    top = m.max() if m.size and m.max() > 0 else 1.0
    v = (m / top * 255).astype(np.uint8)
    rgb = np.stack([v, (v * 0.6).astype(np.uint8), 255 - v], axis=-1)
    return np.repeat(np.repeat(rgb, cell, 0), cell, 1)


def _score_metrics(per_video: list[dict]) -> dict:
    """evaluate_video records -> flat ``val_*`` means (NaN scores count as 0, see module doc)."""
    out = {}
    if not per_video:
        return out

    def mean(vals, nan_as=None):
        a = np.array(vals, dtype=np.float64)
        if nan_as is not None:
            a = np.where(np.isnan(a), nan_as, a)
        a = a[~np.isnan(a)]
        return float(a.mean()) if a.size else math.nan

    s = [v["structure"] for v in per_video]
    j = [v["joints"] for v in per_video]
    out["val_bcc"] = mean([x["bcc"] for x in s], 0.0)
    out["val_acc"] = mean([x["acc"] for x in s], 0.0)
    for k in ("f1", "precision", "recall"):
        out[f"val_struct_{k}"] = mean([x[k] for x in s], 0.0)
        out[f"val_joint_{k}"] = mean([x[k] for x in j], 0.0)
    out["val_dist"] = mean([x["dist"] for x in j])
    out["val_consistency"] = mean([x["consistency"] for x in j], 0.0)
    out["val_diff"] = mean([x["diff"] for x in j])
    out["val_num_joints"] = mean([v["P"] for v in per_video])
    out["val_videos"] = len(per_video)
    return out


# ----------------------------------------------------------------------------- adapters

class Adapter:
    sample_mode = "pair"          # "pair" (source, target) or "frame"
    images_per_sample = 1         # frames entering the model per sample (for images/s)
    loss_terms: tuple = ()        # names in the model's terms dict that are loss terms

    def term_metric_name(self, term: str) -> str:
        """``loss_<term>`` for a loss term, the term's own name for other logged scalars."""
        return f"loss_{term}" if term in self.loss_terms else term

    def make_config(self, preset, overrides):
        raise NotImplementedError

    def build(self, cfg) -> torch.nn.Module:
        raise NotImplementedError

    def check(self, mcfg) -> None:
        """Raise ConfigError for model settings that cannot train (checked before Ray starts)."""

    def optim_defaults(self, mcfg) -> dict:
        """lr, betas, clip_grad_norm, clip_grad_value from the model's config."""
        return {"lr": mcfg.lr, "betas": tuple(mcfg.betas),
                "clip_grad_norm": getattr(mcfg, "grad_clip_norm", None) or None,
                "clip_grad_value": getattr(mcfg, "grad_clip_value", None) or None}

    def call(self, model, batch: dict, step: int):
        """(loss, terms) of one training step; ``model`` may be the DDP wrapper's inner module."""
        raise NotImplementedError

    def image_size(self, model) -> int:
        return model.config.image_size

    def scalars(self, model) -> dict:
        """Model quantities logged besides the loss terms (e.g. AutoLink's alpha)."""
        return {}

    def diagnostics(self, model, batch: dict, step: int) -> dict:
        """Costlier quantities that tell why a model learns or not (TensorBoard ``diag/*``, every
        ``diagnostics_every`` steps, rank 0): e.g. each loss term's gradient norm per network."""
        return {}

    def matrix_image(self, model):
        return None

    def preview(self, model, batch: dict, step: int) -> Image.Image:
        raise NotImplementedError

    def validation_data(self, cfg) -> dict:
        from kpray.train.data import load_episodes

        return {"test": load_episodes(cfg.data, "test", cfg.val_episodes, cfg.val_frames)}

    def validate(self, model, data: dict, cfg) -> dict:
        raise NotImplementedError


class AutoLinkAdapter(Adapter):
    sample_mode = "frame"
    images_per_sample = 1
    loss_terms = ("perceptual",)

    def make_config(self, preset, overrides):
        from kpray.models.autolink import AutoLinkConfig
        from kpray.train.config import ConfigError

        base = AutoLinkConfig()
        if preset is not None:
            presets = getattr(__import__("kpray.models.autolink", fromlist=["x"]), "PRESETS", {})
            if preset in presets:
                base = presets[preset]
            elif preset not in _known_datasets():
                raise ConfigError(f"unknown preset {preset!r} for autolink: choose from "
                                  f"{', '.join(sorted(set(presets) | set(_known_datasets())))}")
        return _replace_fields(AutoLinkConfig, base, overrides, "autolink model")

    def check(self, mcfg) -> None:
        from kpray.losses.autolink import BACKBONE_FILES, backbone_weights_path
        from kpray.train.config import ConfigError

        if not mcfg.num_keypoints >= 2:
            raise ConfigError(f"--keypoints must be >= 2, got {mcfg.num_keypoints}")
        if not mcfg.thickness > 0:
            raise ConfigError(f"--thickness must be positive, got {mcfg.thickness}")
        if mcfg.perceptual_net not in BACKBONE_FILES:
            raise ConfigError(f"perceptual_net must be one of {sorted(BACKBONE_FILES)}")
        if mcfg.pretrained:
            path = backbone_weights_path(mcfg.perceptual_net)
            if not os.path.isfile(path):
                raise ConfigError(
                    f"the perceptual loss needs ImageNet weights {BACKBONE_FILES[mcfg.perceptual_net]!r} "
                    f"at {path} (set TORCH_HOME to a folder with hub/checkpoints/ holding it; "
                    f"--random-backbone for tests only)")

    def build(self, cfg):
        from kpray.models.autolink import AutoLink

        return AutoLink(self.make_config(cfg.preset, cfg.model_config))

    def call(self, model, batch, step):
        return model(batch["image"], step=step)

    def scalars(self, model):
        w = model.edge_weights().detach()
        k = w.shape[0]
        return {"alpha": float(model.alpha.detach()),
                "edge_weight_mean": float(w.sum() / max(1, k * (k - 1))),
                "edge_weight_max": float(w.max())}

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
        out = model.reconstruct(images)
        model.train(was)
        adj = self._adjacency(model)
        s = images.shape[-1]
        rows = []
        for b in range(images.shape[0]):
            img = _to_uint8(images[b])
            kp = to_pixels(out["keypoints"][b].float(), s).cpu().numpy()
            edge = out["edge_map"][b].float()
            edge = edge / edge.max().clamp_min(1e-8)
            rows.append([Image.fromarray(img), Image.fromarray(_to_uint8(out["masked"][b])),
                         Image.fromarray(_to_uint8(edge.expand(3, -1, -1))),
                         Image.fromarray(_to_uint8(out["reconstruction"][b])),
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
        from kpray.evaluation import evaluate_video
        from kpray.metrics import regression_error

        model.eval()
        test = data["test"]
        if not test:
            return {}
        adj = self._adjacency(model)
        eps = epsilon_for(cfg, test)
        kps = [self.keypoints(model, ep["frames"]) for ep in test]
        out = _score_metrics([evaluate_video(ep, kp, adj, eps) for ep, kp in zip(test, kps)])
        # keypoint regression on the most common number of GT joints
        j = Counter(ep["joints"].shape[1] for ep in test).most_common(1)[0][0]
        tr = [ep for ep in data.get("train", []) if ep["joints"].shape[1] == j][:cfg.val_train_episodes]
        te = [(ep, kp) for ep, kp in zip(test, kps) if ep["joints"].shape[1] == j]
        if tr:
            tr_kp = np.concatenate([self.keypoints(model, ep["frames"]) for ep in tr])
            tr_gt = np.concatenate([ep["joints"] for ep in tr])
            te_kp = np.concatenate([kp for _, kp in te])
            te_gt = np.concatenate([ep["joints"] for ep, _ in te])
            out["val_regression_error"] = regression_error(tr_kp, tr_gt, te_kp, te_gt,
                                                           test[0]["frames"].shape[1])
        else:
            out["val_regression_error"] = math.nan
        out["val_alpha"] = float(model.alpha.detach())
        return out


class SkeletonAdapter(Adapter):
    sample_mode = "pair"
    images_per_sample = 2
    loss_terms = ("recon", "contiguity", "near", "sparse_joints", "sparse_links", "uniform",
                  "length", "psi_fit")

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
        if isinstance(w, dict):      # partial weights, merged onto the preset's row
            cur = (base if "preset" not in overrides else
                   dataclasses.replace(base, preset=overrides["preset"])).loss_weights().as_dict()
            bad = sorted(set(w) - set(cur))
            if bad:
                raise ConfigError(f"unknown loss weight(s) {', '.join(map(repr, bad))}; known: "
                                  f"{', '.join(cur)}")
            overrides["weights"] = LossWeights(**{**cur, **{k: float(v) for k, v in w.items()}})
        return _replace_fields(S.SkeletonConfig, base, overrides, "skeleton model")

    def check(self, mcfg) -> None:
        from kpray.train.config import ConfigError

        if not mcfg.num_points >= 2:
            raise ConfigError(f"--points must be >= 2, got {mcfg.num_points}")
        if mcfg.image_size % 16:
            raise ConfigError(f"image_size must be a multiple of 16, got {mcfg.image_size}")

    def build(self, cfg):
        from kpray.models.skeleton import SkeletonModel

        return SkeletonModel(self.make_config(cfg.preset, cfg.model_config))

    def call(self, model, batch, step):
        return model((batch["source"], batch["target"]), step=step)

    def image_size(self, model):
        return getattr(model.config, "image_size", 64)

    @torch.no_grad()
    def predict(self, model, frames: np.ndarray) -> dict:
        """frames [T, H, W, 3] uint8 -> points [T, P, 2] pixels, link probabilities [T, P, P]."""
        from kpray.train.data import to_device

        dev = next(model.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        x = to_device({"x": x}, dev, self.image_size(model))["x"]
        out = model.predict(x)
        pts = to_pixels(out.points.float(), frames.shape[1]).cpu().numpy()
        return {"points": pts, "links": out.links.float().cpu().numpy()}

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
            img = _to_uint8(tgt[b])
            pts = to_pixels(pred.points[b].float(), s).cpu().numpy()
            adj = pred.links[b].float().cpu().numpy() >= thr
            rows.append([Image.fromarray(_to_uint8(src[b])), Image.fromarray(img),
                         Image.fromarray(_to_uint8(out["reconstruction"][b])),
                         draw_points(img, pts, adj, scale=3)])
        return grid(rows)

    def diagnostics(self, model, batch, step):
        """Per loss term k: ``grad_pi/k`` and ``grad_psi/k``, the norm of the weighted term's
        gradient on pi's and psi's parameters (before clipping); psi's logits z: ``psi_z_abs``
        (mean |z|) and ``psi_z_batch_std`` (std over the batch, mean over pairs: 0 when the
        links do not depend on the image); ``links_batch_std`` (std over the batch of the number
        of links >= the threshold). BatchNorm statistics are restored afterwards."""
        from kpray.losses.skeleton import effective_weights

        c = model.config
        saved = {k: v.clone() for k, v in model.state_dict().items()
                 if "running_" in k or "num_batches" in k}
        was = model.training
        model.train()
        src, tgt = batch["source"], batch["target"]
        out = model.run(src, tgt, step=step)
        terms = model.loss_terms(out, tgt)
        weights = {**effective_weights(c.loss_weights(), step, c.ramp_steps),
                   "psi_fit": c.psi_fit_weight}
        nets = {"pi": [p for p in model.pi.parameters() if p.requires_grad],
                "psi": [p for p in model.psi.parameters() if p.requires_grad]}
        res = {}
        for k, v in terms.items():
            for net, params in nets.items():
                if weights[k] == 0 or not v.requires_grad:
                    res[f"grad_{net}/{k}"] = 0.0
                    continue
                grads = torch.autograd.grad(weights[k] * v, params, retain_graph=True,
                                            allow_unused=True)
                sq = [(g.float() ** 2).sum() for g in grads if g is not None]
                res[f"grad_{net}/{k}"] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
        with torch.no_grad():
            z = model.psi.logits(src, out["source_maps"])                 # [B, E]
            counts = (out["links"] >= c.link_threshold).sum(dim=(1, 2)).float() / 2
            res["psi_z_abs"] = float(z.abs().mean())
            res["psi_z_batch_std"] = float(z.std(dim=0).mean()) if z.shape[0] > 1 else 0.0
            res["links_batch_std"] = float(counts.std()) if counts.numel() > 1 else 0.0
        model.load_state_dict(saved, strict=False)
        model.train(was)
        return res

    def validate(self, model, data, cfg):
        """The metrics of ``_score_metrics`` (links of each video from one random frame, seeded
        by the run's seed and the episode index, as the paper does), and:
        ``val_points_on_object`` (fraction of points, all frames, on the object's mask dilated by
        one pixel) against ``val_mask_fraction`` (the mask's share of the image: chance level),
        ``val_joint_count_spearman`` (rank correlation over videos of the predicted and true
        number of joints; 0 when either is constant), and per body kind B
        ``val_joints_B`` and ``val_links_B`` (B without its colon, e.g. cartpole3)."""
        from kpray.evaluation import evaluate_video
        from kpray.metrics import select_skeleton
        from kpray.metrics import spearman

        model.eval()
        test = data["test"]
        if not test:
            return {}
        eps = epsilon_for(cfg, test)
        recs, on, cover, counts, bodies = [], [], [], [], {}
        for ep in test:
            p = self.predict(model, ep["frames"])
            rng = np.random.default_rng([cfg.seed, int(ep["meta"].get("index", 0))])
            f = int(rng.integers(len(p["links"])))
            joints, adj = select_skeleton(p["points"], p["links"][f])
            recs.append(evaluate_video(ep, joints, adj, eps))
            counts.append((joints.shape[1], ep["joints"].shape[1]))
            body = str(ep["meta"].get("body", "unknown")).replace(":", "")
            bodies.setdefault(body, []).append((joints.shape[1], int(np.triu(adj, 1).sum())))
            if "masks" in ep:
                on.append(points_on_mask(p["points"], ep["masks"]))
                cover.append(float(np.asarray(ep["masks"]).mean()))
        out = _score_metrics(recs)
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
