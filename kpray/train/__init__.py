"""Training both models with DDP on Ray Train.

- ``kpray.train.config``: ``TrainConfig`` (one flat dataclass), presets, ``--config FILE`` JSON.
- ``kpray.train.data``: shard URLs -> endless per-rank batch streams (same count on every rank).
- ``kpray.train.loop``: ``train_func(config_dict)``, the per-worker function (plain PyTorch).
- ``kpray.train.models``: the registry of adapters from the loop to ``kpray.models``
  (``kpray.train.adapter``: the interface and shared parts; ``kpray.train.skeleton_adapter``,
  ``kpray.train.autolink_adapter``: each model's build, preview, validation).
- ``kpray.train.predict``: a checkpoint's model run over episodes (predictions to evaluate).
- ``kpray.train.trainer``: ``build_trainer(cfg) -> TorchTrainer``, ``fit``, ``init_ray``.
"""
from kpray.train.config import ConfigError, TrainConfig, load_config_file, merge, resolve
from kpray.train.loop import NonFiniteLossError, train_func
from kpray.train.trainer import build_trainer, fit, init_ray, run

__all__ = ["ConfigError", "NonFiniteLossError", "TrainConfig", "build_trainer", "fit", "init_ray",
           "load_config_file", "merge", "resolve", "run", "train_func"]
