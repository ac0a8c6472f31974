"""The adapter interface between the training loop and a model (``kpray.models``), and
the parts both models' adapters share: config merging, the evaluation threshold, drawing, and
validation scores. One model's glue lives in ``kpray.train.<model>_adapter``; the registry is
``kpray.train.models``.

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

import numpy as np
import torch
from PIL import Image, ImageDraw


def replace_fields(cls, base, overrides: dict, what: str):
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


def known_datasets() -> tuple[str, ...]:
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

def to_uint8(x: torch.Tensor) -> np.ndarray:
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


def score_metrics(per_video: list[dict]) -> dict:
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
        """Model quantities logged besides the loss terms (e.g. AutoLink's alpha); here the
        start trained and the restarts so far, for a model with fresh starts
        (kpray.models.starts)."""
        if hasattr(model, "init_choice"):
            return {"init_choice": float(model.init_choice), "restarts": float(model.restarts)}
        return {}

    def diagnostics(self, model, batch: dict, step: int) -> dict:
        """Costlier quantities that tell why a model learns or not (TensorBoard ``diag/*``, every
        ``diagnostics_every`` steps, rank 0): e.g. each loss term's gradient norm per network."""
        return {}

    def histograms(self, model) -> dict:
        """Arrays logged as TensorBoard histograms ``model/*`` every ``log_every`` steps (e.g.
        AutoLink's edge weights)."""
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

