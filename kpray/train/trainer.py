"""The distributed layer: a ``TorchTrainer`` for a ``TrainConfig``, and running it.

::

    cfg = resolve(TrainConfig(model="skeleton", data="shards/cartpoles", preset="cartpoles",
                              steps=2000, batch_size=8, num_workers=2, name="sk", storage="runs"))
    init_ray()                           # joins a cluster under `ray job submit`, else local
    result = fit(build_trainer(cfg))     # raises NonFiniteLossError / TrainingFailedError

Rerunning with the same ``name`` and ``storage`` resumes from the run's latest checkpoint (Ray
Train V2 has no ``TorchTrainer.restore``: the run folder ``storage/name`` is the state).

A Ray Tune trial (Train V2: a trial is a function that builds and fits a trainer)::

    def trial(params):
        cfg = resolve(merge(base_cfg, params).replace(name=ray.tune.get_context().get_trial_id()))
        fit(build_trainer(cfg, callbacks=[TuneReportCallback()]))
"""
from __future__ import annotations

import os

from kpray.train.config import TrainConfig
from kpray.train.loop import NonFiniteLossError, train_func


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None, **kw):
    """``ray.init()``: joins the cluster when RAY_ADDRESS is set (``ray job submit``), else starts
    a local instance (only then are num_cpus/num_gpus passed). The dashboard stays on."""
    import ray

    if ray.is_initialized():
        return ray
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kw)
    else:
        local = {k: v for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if v is not None}
        # address="local": a new instance even when another cluster runs on this machine (Ray
        # would otherwise join the newest `ray start` cluster it finds in /tmp/ray)
        ray.init(address="local", include_dashboard=None, **local, **kw)
    return ray


def _storage(path: str) -> str:
    """Local folders must be absolute for Ray; URIs (``s3://``, ``gs://`` ...) pass through."""
    return path if "://" in path else os.path.abspath(path)


def build_trainer(cfg: TrainConfig, *, callbacks=(), cpus_per_worker: float | None = None,
                  run_config_kw: dict | None = None):
    """``TorchTrainer`` running :func:`kpray.train.loop.train_func` with ``cfg`` (resolved).

    ScalingConfig(num_workers, use_gpu) with gloo on CPU / NCCL on GPU; RunConfig(name,
    storage_path, CheckpointConfig(num_to_keep), FailureConfig(max_failures)). ``callbacks``
    (e.g. Tune's ``TuneReportCallback()``) go to the RunConfig. ``cpus_per_worker``: CPUs
    reserved per rank (Ray's default 1 when None).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = _storage(cfg.storage)
    log_dir = cfg.log_dir or (os.path.join(storage, cfg.name, "logs") if "://" not in storage
                              else os.path.abspath(os.path.join("runs", cfg.name, "logs")))
    cfg = cfg.replace(storage=storage, log_dir=log_dir)
    resources = {"CPU": cpus_per_worker} if cpus_per_worker is not None else None
    scaling = ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                            resources_per_worker=resources)
    run = RunConfig(name=cfg.name, storage_path=storage,
                    checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
                    failure_config=FailureConfig(max_failures=cfg.max_failures),
                    callbacks=list(callbacks) or None, **(run_config_kw or {}))
    return TorchTrainer(train_func, train_loop_config=cfg.to_dict(),
                        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
                        scaling_config=scaling, run_config=run)


def fit(trainer):
    """``trainer.fit()``, raising :class:`NonFiniteLossError` when the run stopped on a
    non-finite loss (the loop saves the last finite state with ``error`` in its metrics and
    returns instead of raising, so that Ray does not retry it). Returns Ray's ``Result``
    (``.metrics``: the latest checkpoint's report; ``.checkpoint``; ``.path``)."""
    from ray.train import TrainingFailedError

    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        if "NonFiniteLossError" in str(e):     # non-finite weights: raised by the workers
            raise NonFiniteLossError(str(e)) from e
        raise
    err = (result.metrics or {}).get("error")
    if err:
        raise NonFiniteLossError(err)
    return result


def run(cfg: TrainConfig, **kw):
    """``fit(build_trainer(cfg, **kw))``."""
    return fit(build_trainer(cfg, **kw))


def check_resume(cfg: TrainConfig) -> None:
    """Refuse to resume a local run folder whose latest checkpoint holds another model or model
    config (its weights would not load). Raises ConfigError; no-op for new runs and URIs."""
    from kpray.train.config import ConfigError
    from kpray.train.models import get_adapter

    if "://" in cfg.storage:
        return
    state = latest_state(os.path.join(cfg.storage, cfg.name))
    if state is None:
        return
    old = TrainConfig.from_dict(state["config"])
    where = os.path.join(cfg.storage, cfg.name)
    if old.model != cfg.model:
        raise ConfigError(f"run {where} holds a {old.model} model, not {cfg.model}; "
                          f"choose another --name")
    a = get_adapter(cfg.model)
    before = a.make_config(old.preset, old.model_config)
    now = a.make_config(cfg.preset, cfg.model_config)
    if before != now:
        diff = sorted(k for k in vars(now) if getattr(now, k) != getattr(before, k))
        raise ConfigError(f"run {where} was trained with other model settings ({', '.join(diff)}); "
                          f"rerun with the same settings to resume, or choose another --name")


def latest_state(run_dir: str) -> dict | None:
    """The newest ``checkpoint_*`` of a local run folder (``storage/name``), loaded; None if none."""
    import glob

    from kpray.train.loop import load_state

    ckpts = sorted(glob.glob(os.path.join(run_dir, "checkpoint_0*", "state.pt")))
    return load_state(os.path.dirname(ckpts[-1])) if ckpts else None
