"""Training configuration: one flat dataclass, JSON round trip, presets, validation.

Precedence when a job builds a config (lowest first)::

    TrainConfig defaults  <  the model's per-dataset preset (--preset)  <  --config FILE  <  flags

``model_config`` holds overrides of the model's own config dataclass (``SkeletonConfig`` or
``AutoLinkConfig``; e.g. the seven loss weights of the skeleton model, or AutoLink's ``thickness``
and ``n_keypoints``). The JSON format of ``--config FILE`` (what a Tune search writes as its best
preset) is the dict of :meth:`TrainConfig.to_dict`, any subset of it::

    {"model": "skeleton", "preset": "cartpoles", "lr": 0.005,
     "model_config": {"w_sparse_links": 500.0, "w_uniform": 10.0}}

A top-level key that is not a ``TrainConfig`` field but is a field of the model's config is
moved into ``model_config`` (so ``{"thickness": 1e-3}`` works too), and flat names
``"weights/<term>"`` (or ``weights.<term>``) and ``"model_config/<field>"`` are unflattened (Tune
and Optuna flatten nested search spaces that way); anything else is an error.

Optimiser settings (``lr``, ``betas``, clipping) left as ``None`` are filled by :func:`resolve`
from the model's config, which holds the papers' values: skeleton model Adam lr 5e-3, betas
(0.9, 0.999), grad-value then grad-norm clipping at 1; AutoLink Adam lr 1e-4, betas (0.9, 0.99),
no clipping.

For the skeleton model, ``model_config["weights"]`` may be a partial dict of the seven loss
weights (``recon, contiguity, near, sparse_joints, sparse_links, uniform, length``): it is merged
onto the preset's row of the paper's table.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

MODELS = ("skeleton", "autolink")



class ConfigError(ValueError):
    """A bad configuration; jobs print it on one line and exit 2."""


@dataclass
class TrainConfig:
    """Everything one training run needs. ``batch_size`` is global (split across workers)."""

    model: str = "skeleton"                 # "skeleton" | "autolink"
    data: str = ""                          # shard folder (train-*.tar, test-*.tar) or one .tar
    preset: str | None = None               # dataset preset of the model (e.g. "cartpoles")
    model_config: dict = field(default_factory=dict)   # overrides of the model's config fields
    # run
    name: str = "train"
    storage: str = "runs"                   # Ray Train storage path (local folder or URI)
    log_dir: str | None = None              # TensorBoard + previews; None: <storage>/<name>/logs
    steps: int = 1000
    batch_size: int | None = None           # global: pairs (skeleton) or images (AutoLink);
                                            # None: the model config's (paper: 8 and 64)
    num_workers: int = 1                    # DDP ranks
    use_gpu: bool = False                   # one GPU per rank + NCCL; else CPU + gloo
    sync_batchnorm: bool = True             # num_workers > 1: BatchNorm normalises by, and keeps
                                            # running statistics of, the global batch (every
                                            # rank's; kpray.ops.batchnorm, works on gloo/CPU)
    channels_last: bool = False             # 4-D weights in channels-last memory format (a
                                            # speed option: mkldnn/cuDNN then run convolutions
                                            # in NHWC; results differ at float rounding)
    seed: int = 0
    # optimiser (None: the model config's value, i.e. the paper's)
    lr: float | None = None
    lr_warmup_steps: int = 0                # lr rises linearly from lr/N to lr over the first N
                                            # steps (0: constant, as both papers). Tried against
                                            # AutoLink's early off-body keypoints and measured
                                            # not to help (keypoint_delay_steps does;
                                            # docs/benchmarks.md)
    lr_decay_steps: int = 0                 # over the last N steps lr falls to 0 on a half
                                            # cosine (0: constant to the end, as both papers)
    betas: tuple | None = None
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    # checkpoints and fault tolerance
    checkpoint_every: int = 500
    num_to_keep: int = 3
    max_failures: int = 3
    # logging, previews, validation
    log_every: int = 10
    diagnostics_every: int = 50             # per-term gradient norms etc. (0: never; costs a
                                            # backward pass per loss term)
    preview_every: int = 500                # 0: no previews
    val_every: int | None = None            # None: at every checkpoint; 0: only at the end
    val_episodes: int = 4                   # first N test episodes
    val_train_episodes: int = 8             # AutoLink regression: fitted on the first N train eps
    val_frames: int = 16                    # frames per validation episode (evenly spaced)
    # input pipeline (per rank)
    loader_workers: int = 1                 # DataLoader processes per rank (0: in the rank)
    buffer_episodes: int = 8                # decoded episodes kept per loader process
    samples_per_episode: int = 8            # samples drawn per decoded episode, on average
    # fault injection, for tests and demos only
    inject_nonfinite_at: int | None = None  # make the loss NaN at this step
    step_sleep_s: float = 0.0               # sleep after each step (to slow a tiny run down)

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["betas"] is not None:
            d["betas"] = list(d["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        if d.get("betas") is not None:
            d["betas"] = tuple(d["betas"])
        d["model_config"] = dict(d.get("model_config") or {})
        return cls(**d)

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers

    @property
    def run_log_dir(self) -> str:
        import os

        if self.log_dir:
            return self.log_dir
        return os.path.join(self.storage, self.name, "logs")


TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def model_fields(model: str) -> set[str]:
    """Names of the fields of the model's config dataclass."""
    from kpray.train.models import model_config_class

    return {f.name for f in dataclasses.fields(model_config_class(model))}


def merge(cfg: TrainConfig, overrides: dict, source: str = "overrides") -> TrainConfig:
    """cfg with ``overrides`` applied (TrainConfig fields, ``model_config`` merged key by key;
    a top-level key naming a model-config field goes into ``model_config``)."""
    d = cfg.to_dict()
    model = overrides.get("model", d["model"])
    mfields = None
    for k, v in overrides.items():
        head, sep, tail = k.replace("/", ".").partition(".")
        if sep and head in ("weights", "model_config"):
            # flat names, as Optuna gives nested search spaces: "weights/uniform", "model_config/x"
            if head == "weights":
                w = d["model_config"].get("weights")
                d["model_config"]["weights"] = dict(w or {}) if not hasattr(w, "as_dict") else w.as_dict()
                d["model_config"]["weights"][tail] = v
            else:
                d["model_config"][tail] = v
        elif k == "model_config":
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: model_config must be an object, got {type(v).__name__}")
            d["model_config"].update(v)
        elif k in TRAIN_FIELDS:
            d[k] = v
        else:
            mfields = model_fields(model) if mfields is None else mfields
            if k in mfields:
                d["model_config"][k] = v
            else:
                raise ConfigError(f"{source}: unknown setting {k!r} (neither a training nor a "
                                  f"{model} model setting)")
    return TrainConfig.from_dict(d)


def load_config_file(path: str) -> dict:
    """Read a JSON ``--config FILE`` into an overrides dict (see the module docstring)."""
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return d


def write_config_file(cfg: TrainConfig | dict, path: str, keys=None) -> str:
    """Write ``cfg`` (or only ``keys`` of it) as a ``--config FILE`` preset."""
    d = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
    if keys is not None:
        d = {k: d[k] for k in keys if k in d}
    with open(path, "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the paper's optimiser defaults and check every field; raises ConfigError."""
    if cfg.model not in MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}: choose from {', '.join(MODELS)}")
    from kpray.train.models import get_adapter

    # the model's own config must build (unknown keys, bad preset, bad values)
    adapter = get_adapter(cfg.model)
    mcfg = adapter.make_config(cfg.preset, cfg.model_config)
    adapter.check(mcfg)
    paper = adapter.optim_defaults(mcfg)
    paper["batch_size"] = getattr(mcfg, "batch_size", 8)
    kw = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else v) for k, v in paper.items()}
    cfg = cfg.replace(**kw)
    if cfg.betas is not None:
        cfg = cfg.replace(betas=tuple(float(b) for b in cfg.betas))

    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    need(bool(cfg.data), "no training data: give --data SHARDS")
    if "://" not in cfg.data:
        # Ray Train and Tune run workers and trials in other working folders.
        import os

        cfg = cfg.replace(data=os.path.abspath(cfg.data))
    need(isinstance(cfg.steps, int) and cfg.steps >= 1, f"--steps must be >= 1, got {cfg.steps}")
    need(isinstance(cfg.num_workers, int) and cfg.num_workers >= 1,
         f"--workers must be >= 1, got {cfg.num_workers}")
    need(isinstance(cfg.batch_size, int) and cfg.batch_size >= cfg.num_workers,
         f"--batch-size {cfg.batch_size} must be at least the number of workers ({cfg.num_workers})")
    need(cfg.batch_size % cfg.num_workers == 0,
         f"--batch-size {cfg.batch_size} must be divisible by --workers {cfg.num_workers}")
    need(cfg.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {cfg.checkpoint_every}")
    need(cfg.preview_every >= 0, f"--preview-every must be >= 0, got {cfg.preview_every}")
    need(cfg.log_every >= 1, f"log_every must be >= 1, got {cfg.log_every}")
    need(cfg.diagnostics_every >= 0, f"diagnostics_every must be >= 0, got {cfg.diagnostics_every}")
    need(cfg.num_to_keep >= 1, f"num_to_keep must be >= 1, got {cfg.num_to_keep}")
    need(cfg.max_failures >= 0, f"max_failures must be >= 0, got {cfg.max_failures}")
    need(cfg.val_every is None or cfg.val_every >= 0, f"val_every must be >= 0, got {cfg.val_every}")
    need(cfg.val_episodes >= 0 and cfg.val_frames >= 2,
         "val_episodes must be >= 0 and val_frames >= 2")
    need(cfg.loader_workers >= 0, f"loader_workers must be >= 0, got {cfg.loader_workers}")
    need(cfg.buffer_episodes >= 1 and cfg.samples_per_episode >= 1,
         "buffer_episodes and samples_per_episode must be >= 1")
    need(math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a positive number, got {cfg.lr}")
    need(isinstance(cfg.lr_warmup_steps, int) and cfg.lr_warmup_steps >= 0,
         f"--lr-warmup-steps must be a whole number >= 0, got {cfg.lr_warmup_steps}")
    need(isinstance(cfg.lr_decay_steps, int) and 0 <= cfg.lr_decay_steps <= cfg.steps,
         f"--lr-decay-steps must be a whole number in [0, steps], got {cfg.lr_decay_steps}")
    need(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas),
         f"betas must be two numbers in [0, 1), got {cfg.betas}")
    for k in ("clip_grad_norm", "clip_grad_value"):
        v = getattr(cfg, k)
        need(v is None or v > 0, f"{k} must be positive or null, got {v}")
    need(bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."),
         f"--name must be a plain folder name, got {cfg.name!r}")
    return cfg
