"""The registry of trainable models: name -> adapter (``kpray.train.adapter`` has the interface;
``kpray.train.autolink_adapter`` and ``kpray.train.skeleton_adapter`` each model's glue)."""
from __future__ import annotations

from kpray.train.adapter import Adapter, replace_fields


def model_config_class(model: str):
    if model == "autolink":
        from kpray.models.autolink import AutoLinkConfig

        return AutoLinkConfig
    if model == "skeleton":
        from kpray.models.skeleton import SkeletonConfig

        return SkeletonConfig
    from kpray.train.config import ConfigError

    raise ConfigError(f"unknown model {model!r}: choose from skeleton, autolink")


def get_adapter(model: str) -> Adapter:
    if model == "autolink":
        from kpray.train.autolink_adapter import AutoLinkAdapter

        return AutoLinkAdapter()
    if model == "skeleton":
        from kpray.train.skeleton_adapter import SkeletonAdapter

        return SkeletonAdapter()
    from kpray.train.config import ConfigError

    raise ConfigError(f"unknown model {model!r}: choose from skeleton, autolink")


def make_model_config(model: str, preset: str | None, overrides: dict):
    """The model's config dataclass: its preset for ``preset`` (when it has presets), then
    ``overrides``. Raises ConfigError on an unknown preset or field."""
    return get_adapter(model).make_config(preset, overrides)


__all__ = ["get_adapter", "make_model_config", "model_config_class", "replace_fields"]
