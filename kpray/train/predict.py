"""Trained models from checkpoints, run over episodes: the predictions that ``kpray.evaluation``
scores. It lives with training because it needs the models and the checkpoint format; the
evaluation layer below it only turns predictions and episodes into metrics."""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np

from kpray.evaluation import EvaluationError


def load_checkpoint(path: str):
    """(state dict as saved by the loop, its TrainConfig) of ``path``: a checkpoint folder
    (``checkpoint_*/`` holding ``state.pt``) or a run folder (``STORAGE/NAME``: its newest
    checkpoint). EvaluationError when there is none."""
    from kpray.train.config import TrainConfig
    from kpray.train.loop import load_state
    from kpray.train.trainer import latest_state

    if os.path.exists(os.path.join(path, "state.pt")):
        state = load_state(path)
    elif os.path.isdir(path):
        state = latest_state(path)
    else:
        state = None
    if state is None:
        raise EvaluationError(f"no checkpoint at {path}: give a checkpoint_*/ folder or a run folder")
    return state, TrainConfig.from_dict(state["config"])


def predict_from_checkpoint(path: str, episodes: Iterable[Mapping], seed: int = 0,
                            device: str = "cpu") -> tuple[dict[int, dict], str]:
    """Run a trained model over ``episodes``: ``({index: {"points", "adj"}}, model name)``.

    ``path``: a checkpoint folder (``checkpoint_*/`` holding ``state.pt``) or a run folder
    (``STORAGE/NAME``; its newest checkpoint is used). Skeleton model: its joints are the points
    with a link >= 0.5, and its adjacency is predicted from one randomly chosen frame per video
    (seeded by ``seed`` and the episode index), as the paper does. AutoLink: its K keypoints, and
    its shared graph thresholded as ``kpray.metrics.autolink_adjacency`` documents.
    """
    import torch

    from kpray.metrics import link_frame, select_skeleton
    from kpray.train.models import get_adapter

    state, cfg = load_checkpoint(path)
    if cfg.model == "autolink":  # the perceptual loss is not needed to predict
        cfg = cfg.replace(model_config={**cfg.model_config, "pretrained": False})
    adapter = get_adapter(cfg.model)
    model = adapter.build(cfg).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    preds = {}
    with torch.no_grad():
        for ep in episodes:
            idx = int(ep["meta"]["index"])
            if cfg.model == "skeleton":
                p = adapter.predict(model, ep["frames"])
                t = link_frame(seed, idx, len(ep["frames"]))
                points, adj = select_skeleton(p["points"], p["links"][t])
            else:
                points, adj = adapter.keypoints(model, ep["frames"]), adapter._adjacency(model)
            preds[idx] = {"points": np.asarray(points, np.float64), "adj": np.asarray(adj, bool)}
    return preds, f"{cfg.model} step {state['step']}"
