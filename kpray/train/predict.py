"""Trained models from checkpoints, run over episodes: the predictions that ``kpray.evaluation``
scores. It lives with training because it needs the models and the checkpoint format; the
evaluation layer below it only turns predictions and episodes into metrics."""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np

from kpray.evaluation import EvaluationError


def load_checkpoint(path: str, overrides: Mapping | None = None):
    """(state dict as saved by the loop, its TrainConfig) of ``path``: a checkpoint folder
    (``checkpoint_*/`` holding ``state.pt``) or a run folder (``STORAGE/NAME``: its newest
    checkpoint). EvaluationError when there is none.
    overrides: model config fields to change (``--set`` of the evaluation jobs), e.g.
    ``{"psi_head": "solver"}`` to score a trained pi with the structure-loss solver as psi; when
    they change ``psi_head``, psi's saved weights are dropped from the state."""
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
    cfg = TrainConfig.from_dict(state["config"])
    if overrides:
        old_head = cfg.model_config.get("psi_head")
        merged = {**cfg.model_config, **overrides}
        if isinstance(overrides.get("weights"), dict) and isinstance(cfg.model_config.get("weights"), dict):
            merged["weights"] = {**cfg.model_config["weights"], **overrides["weights"]}
        cfg = cfg.replace(model_config=merged)
        if cfg.model_config.get("psi_head") != old_head:
            state = {**state, "model": {k: v for k, v in state["model"].items()
                                        if not k.startswith("psi.")}}
    return state, cfg


def load_model(path: str, device: str = "cpu", overrides: Mapping | None = None):
    """``(model, adapter, cfg, state)`` of the checkpoint at ``path`` (see
    :func:`load_checkpoint`, also for ``overrides``), in eval mode on ``device``. AutoLink is
    built without its perceptual network (not needed to predict)."""
    from kpray.train.models import get_adapter

    state, cfg = load_checkpoint(path, overrides)
    if cfg.model == "autolink":
        # no loss network is needed to predict: no ImageNet file, no VGG to build
        cfg = cfg.replace(model_config={**cfg.model_config, "pretrained": False,
                                        "loss": "pixel_grad"})
    adapter = get_adapter(cfg.model)
    model = adapter.build(cfg).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, adapter, cfg, state


def predict_episodes(model, adapter, model_name: str, episodes: Iterable[Mapping],
                     seed: int = 0) -> dict[int, dict]:
    """``{index: {"points" [T, P, 2] pixels, "adj" [P, P] bool}}`` of ``model`` (``model_name``:
    ``"skeleton"`` or ``"autolink"``) over ``episodes``; see :func:`predict_from_checkpoint`."""
    import torch

    from kpray.metrics import link_frame, select_skeleton

    preds = {}
    with torch.no_grad():
        for ep in episodes:
            idx = int(ep["meta"]["index"])
            if model_name == "skeleton":
                t = link_frame(seed, idx, len(ep["frames"]))
                p = adapter.predict(model, ep["frames"], link_frame=t)
                points, adj = select_skeleton(p["points"], p["links"][t])
            else:
                points, adj = adapter.keypoints(model, ep["frames"]), adapter._adjacency(model)
            preds[idx] = {"points": np.asarray(points, np.float64), "adj": np.asarray(adj, bool)}
    return preds


def predict_from_checkpoint(path: str, episodes: Iterable[Mapping], seed: int = 0,
                            device: str = "cpu") -> tuple[dict[int, dict], str]:
    """Run a trained model over ``episodes``: ``({index: {"points", "adj"}}, model name)``.

    ``path``: a checkpoint folder (``checkpoint_*/`` holding ``state.pt``) or a run folder
    (``STORAGE/NAME``; its newest checkpoint is used). Skeleton model: its joints are the points
    with a link >= 0.5, and its adjacency is predicted from one randomly chosen frame per video
    (seeded by ``seed`` and the episode index), as the paper does. AutoLink: its K keypoints, and
    its shared graph thresholded as ``kpray.metrics.autolink_adjacency`` documents.
    """
    model, adapter, cfg, state = load_model(path, device)
    return (predict_episodes(model, adapter, cfg.model, episodes, seed),
            f"{cfg.model} step {state['step']}")


def _episode_keypoints(model, adapter, frames: np.ndarray, chunk: int = 64) -> np.ndarray:
    """AutoLink keypoints ``[T, K, 2]`` (pixels) of frames ``[T, H, W, 3]`` uint8, ``chunk``
    frames per forward pass."""
    return np.concatenate([np.asarray(adapter.keypoints(model, frames[i:i + chunk]), np.float64)
                           for i in range(0, len(frames), chunk)])


def autolink_regression(model, adapter, train_episodes: Iterable[Mapping],
                        test_episodes: Iterable[Mapping], protocol: str | None = None,
                        max_train_episodes: int | None = 60) -> dict:
    """AutoLink's keypoint regression of ``model`` (trained or not): fit on train episodes, score
    on test episodes. The ``"regression"`` block of ``metrics.json``.

    model: an AutoLink model; adapter: ``get_adapter("autolink")`` (its ``keypoints(model,
    frames)`` gives ``[T, K, 2]`` pixels). train_episodes / test_episodes: episode dicts as
    yielded by ``kpray.data.iter_episodes`` (``frames`` ``[T, H, W, 3]`` uint8 square frames,
    ``joints`` ``[T, J, 2]`` pixels, ``meta`` with ``joint_names``); the train ones may be a
    lazy iterator (read only until ``max_train_episodes`` are used; None: all). Only episodes of
    the test set's most common body (same J and joint names,
    :func:`kpray.evaluation.most_common_body`) are used, on both sides; every frame is a sample.
    protocol: None for ours (``"h36m"``, left/right swap from the joint names), or ``"h36m"``,
    ``"plain"``, ``"taichi"``.

    Returns :func:`kpray.evaluation.regression_block` plus ``n_train_episodes``,
    ``n_test_episodes`` and ``joint_names``. The model is run in eval mode without gradients and
    put back in its previous mode. EvaluationError when no train or test episode of the body
    exists or the frames are not square.
    """
    import torch

    from kpray.evaluation import episode_body, most_common_body, regression_block

    test_episodes = list(test_episodes)
    body = most_common_body(test_episodes)
    was_training = model.training
    model.eval()
    kp: dict[str, list] = {"train_kp": [], "train_gt": [], "test_kp": [], "test_gt": []}
    sizes = set()
    try:
        with torch.no_grad():
            for side, eps in (("test", test_episodes), ("train", train_episodes)):
                limit = max_train_episodes if side == "train" else None
                if limit is not None and limit < 1:
                    raise EvaluationError(f"regression: max_train_episodes must be >= 1, got "
                                          f"{limit}")
                for ep in eps:
                    if episode_body(ep) != body:
                        continue
                    frames = np.asarray(ep["frames"])
                    sizes.add(frames.shape[1:3])
                    kp[f"{side}_kp"].append(_episode_keypoints(model, adapter, frames))
                    kp[f"{side}_gt"].append(np.asarray(ep["joints"], np.float64))
                    if limit is not None and len(kp[f"{side}_kp"]) >= limit:
                        break
    finally:
        model.train(was_training)
    if not kp["train_kp"]:
        raise EvaluationError(f"regression: no train episode of the test body ({body[0]} joints"
                              + (f": {', '.join(body[1])}" if body[1] else "") + ")")
    if len(sizes) != 1 or next(iter(sizes))[0] != next(iter(sizes))[1]:
        raise EvaluationError(f"regression: needs square frames of one size, got {sorted(sizes)}")
    block = regression_block(*(np.concatenate(kp[k]) for k in
                               ("train_kp", "train_gt", "test_kp", "test_gt")),
                             image_size=next(iter(sizes))[0], joint_names=body[1],
                             protocol=protocol)
    block.update(n_train_episodes=len(kp["train_kp"]), n_test_episodes=len(kp["test_kp"]),
                 joint_names=list(body[1]) if body[1] else None)
    return block
