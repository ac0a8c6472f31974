"""The per-worker training function: plain PyTorch, with Ray Train's thin distributed layer.

``train_func(config)`` is Ray Train's ``train_loop_per_worker``; ``config`` is
``TrainConfig.to_dict()``. Per rank::

    model = build(config)                              # kpray.train.models adapter
    BatchNorm -> CrossRankBatchNorm when world > 1     # global-batch statistics (sync_batchnorm)
    resume from ray.train.get_checkpoint()             # prints "resuming from step N"
    ddp = ray.train.torch.prepare_model(TrainStep(model, adapter.call))
    for step in range(start, steps):
        batch = next(loader)                           # endless, rank-seeded stream
        loss, terms = ddp(batch, step)                 # model.training_step through DDP
        all-reduce the terms (global mean; any non-finite term stops every rank together)
        backward, clip (norm, value), Adam step
        every checkpoint_every steps and at the end:
            validation (rank 0), checkpoint (rank 0), ray.train.report(metrics, checkpoint)

A non-finite loss (or gradient norm) is detected before the optimiser step, on every rank at
once (the terms are all-reduced), so the weights are still the last finite ones: the ranks save
them as ``checkpoint_<step>_nonfinite`` with ``{"error": "non-finite loss at step N: term 'T' =
nan ..."}`` in its metrics, and return; :func:`kpray.train.trainer.fit` turns that into
:class:`NonFiniteLossError`. Stopping cleanly instead of raising keeps Ray's ``FailureConfig``
from retrying a run that would diverge again (rerunning it reproduces the failure from that
state). Non-finite weights are never checkpointed: every checkpoint checks them first.

Checkpoint (one folder, ``state.pt``): model and optimiser state dicts, ``step``, every rank's RNG
states (torch, CUDA, numpy, python), the config. Ray keeps the last ``num_to_keep``.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kpray.ops.batchnorm import buffer_fingerprint, convert_batchnorm, local_statistics
from kpray.train.config import TrainConfig
from kpray.train.data import make_loader, to_device

STATE_FILE = "state.pt"


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight."""


class TrainStep(nn.Module):
    """Makes one training step (``call(model, batch, step) -> (loss, terms)``, the adapter's
    call of the model) the module's forward, so that DDP's wrapper, which arms the gradient
    all-reduce in its forward, sees every training step."""

    def __init__(self, model: nn.Module, call):
        super().__init__()
        self.model = model
        self._call = call

    def forward(self, batch: dict, step: int):
        return self._call(self.model, batch, step)


# ----------------------------------------------------------------------------- RNG states

def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _gather(obj, world: int) -> list:
    if world == 1 or not dist.is_initialized():
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def scheduled_lr(lr: float, warmup_steps: int, step: int, decay_steps: int = 0,
                 total_steps: int = 0) -> float:
    """The learning rate of the update made at ``step`` (0-based): ``lr * (step + 1) / N`` for
    the first N = ``warmup_steps`` steps, then ``lr`` (N = 0: always ``lr``); over the last
    D = ``decay_steps`` of ``total_steps`` it falls on a half cosine, ``lr * (1 + cos(pi *
    (step - (total - D) + 1) / D)) / 2`` (the last update gets 0; D = 0: no decay). A function
    of the step alone, so a resumed run continues the same schedule."""
    if decay_steps > 0 and step >= total_steps - decay_steps:
        t = (step - (total_steps - decay_steps) + 1) / decay_steps
        lr = lr * (1 + math.cos(math.pi * min(1.0, t))) / 2
    if warmup_steps <= 0 or step >= warmup_steps:
        return lr
    return lr * (step + 1) / warmup_steps


def optimizer_step(model: nn.Module, optimizer, step: int) -> None:
    """``optimizer.step()``; when the model loaded a fresh start at this step (``restart_step``,
    ``model.restarted_at == step``), the optimiser's moments of the old start are cleared first."""
    if getattr(model, "restarted_at", None) == step:
        optimizer.state.clear()
    optimizer.step()


# ----------------------------------------------------------------------------- checkpoints

def save_state(path: str, model: nn.Module, optimizer, step: int, rng_states: list,
               cfg: TrainConfig) -> None:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "rng": rng_states, "config": cfg.to_dict()}, os.path.join(path, STATE_FILE))


def load_state(path: str) -> dict:
    """A checkpoint folder's ``state.pt`` (on CPU)."""
    return torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=False)


def param_fingerprint(model: nn.Module) -> str:
    """sha1 of every parameter's bytes, in order: equal on every DDP rank when in sync."""
    import hashlib

    h = hashlib.sha1()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ----------------------------------------------------------------------------- the loop

def train_func(config: dict) -> None:
    """Ray Train ``train_loop_per_worker``: ``config`` is ``TrainConfig.to_dict()``."""
    import ray.train
    import ray.train.torch

    from kpray.train.models import get_adapter

    cfg = TrainConfig.from_dict(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(cfg.seed + 1000 * rank)
    adapter = get_adapter(cfg.model)

    model = adapter.build(cfg)
    if world > 1 and cfg.sync_batchnorm:
        # BatchNorm over the global batch: every rank normalises alike and keeps the same
        # running statistics (DDP alone leaves each rank its own batch's statistics).
        model = convert_batchnorm(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_state(d)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        rngs = state.get("rng") or []
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        else:  # a different world size: fresh seeds that differ from the first run's
            seed_everything(cfg.seed + 1000 * rank + 7919 * step)
        if rank == 0:
            print(f"resuming from step {step}", flush=True)
    resumed_from = step
    if cfg.channels_last:  # in place (param.data), so the optimiser keeps the same parameters
        model.to(memory_format=torch.channels_last)
    for g in optimizer.param_groups:             # flags win over the checkpoint's settings
        g["lr"], g["betas"] = cfg.lr, tuple(cfg.betas)
    if step >= cfg.steps:                        # already done (a rerun of a finished run)
        ray.train.report({"step": step, "resumed_from_step": resumed_from, "done": True})
        return

    ddp = ray.train.torch.prepare_model(TrainStep(model, adapter.call))
    model = model.to(device)                     # same object, already moved by prepare_model
    for s in optimizer.state.values():           # optimiser state loaded on CPU -> device
        for k, v in s.items():
            if torch.is_tensor(v) and k != "step":
                s[k] = v.to(device)

    per_rank = cfg.per_worker_batch
    loader = make_loader(cfg.data, adapter.sample_mode, per_rank, seed=cfg.seed, rank=rank,
                         start_step=step, loader_workers=cfg.loader_workers,
                         buffer_episodes=cfg.buffer_episodes,
                         samples_per_episode=cfg.samples_per_episode,
                         pin_memory=device.type == "cuda")
    images_per_step = per_rank * world * adapter.images_per_sample

    writer, val_data, preview_dir = None, None, None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = cfg.run_log_dir
        writer = SummaryWriter(os.path.join(log_dir, "tensorboard"), purge_step=step or None)
        preview_dir = os.path.join(log_dir, "previews")
        os.makedirs(preview_dir, exist_ok=True)
        val_data = adapter.validation_data(cfg)
        with open(os.path.join(log_dir, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=2, sort_keys=True)

    window = {"wait": 0.0, "time": 0.0, "steps": 0}
    totals = {"wait": 0.0, "time": 0.0, "steps": 0}
    last_terms: dict[str, float] = {}
    error = None
    val_every = cfg.checkpoint_every if cfg.val_every is None else cfg.val_every
    if rank == 0 and step == 0 and val_every and val_data:
        # The untrained model's scores (TensorBoard only), the reference for later validations.
        _log_validation(writer, adapter.validate(model, val_data, cfg), 0)
    model.train()
    t_last = time.perf_counter()
    while step < cfg.steps:
        t0 = time.perf_counter()
        batch = next(loader)
        t_wait = time.perf_counter() - t0
        batch = to_device(batch, device, adapter.image_size(model))
        loss, terms = ddp(batch, step)
        if cfg.inject_nonfinite_at == step and rank == world - 1:   # fault injection (tests)
            name = next((k for k in adapter.loss_terms if k in terms), None)
            loss = loss * float("nan")
            if name is not None:
                terms = dict(terms, **{name: terms[name] * float("nan")})

        # Global mean of every term (for logging), and a shared verdict on finiteness. A term
        # may join later in the run (a start step), on every rank at the same step.
        term_names = sorted(terms)
        stacked = torch.stack([loss.detach().float()] +
                              [torch.as_tensor(terms[k]).detach().float().reshape(()).to(loss.device)
                               for k in term_names])
        if world > 1:
            dist.all_reduce(stacked)
            stacked /= world
        values = stacked.tolist()
        if not all(math.isfinite(v) for v in values):
            names = ["total"] + term_names
            bad = [n for n, v in zip(names, values) if not math.isfinite(v) and n != "total"]
            which = bad[0] if bad else "total"
            error = (f"non-finite loss at step {step}: term {which!r} = "
                     f"{values[names.index(which)]} (terms: " +
                     ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values)) + ")")
            break

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip_grad_value)
        if cfg.clip_grad_norm is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        else:
            gnorm = torch.nn.utils.get_total_norm(
                [p.grad for p in model.parameters() if p.grad is not None])
        gnorm = float(gnorm)
        if not math.isfinite(gnorm):            # identical on every rank (DDP-averaged grads)
            error = f"non-finite gradient at step {step}: grad norm = {gnorm}"
            break
        for g in optimizer.param_groups:
            g["lr"] = scheduled_lr(cfg.lr, cfg.lr_warmup_steps, step, cfg.lr_decay_steps, cfg.steps)
        optimizer_step(model, optimizer, step)
        step += 1
        if cfg.step_sleep_s:
            time.sleep(cfg.step_sleep_s)

        now = time.perf_counter()
        dt, t_last = now - t_last, now
        for acc in (window, totals):
            acc["wait"] += t_wait
            acc["time"] += dt
            acc["steps"] += 1
        last_terms = dict(zip(["total"] + term_names, values))

        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
            lr = optimizer.param_groups[0]["lr"]
            for k, v in last_terms.items():
                name = adapter.term_metric_name(k)
                writer.add_scalar("loss/total" if k == "total" else
                                  f"loss/{k}" if name.startswith("loss_") else f"model/{k}", v, step)
            writer.add_scalar("train/lr", lr, step)
            writer.add_scalar("train/grad_norm", gnorm, step)
            writer.add_scalar("train/images_per_s", images_per_step * window["steps"] / window["time"], step)
            writer.add_scalar("train/data_wait_frac", window["wait"] / window["time"], step)
            for k, v in adapter.scalars(model).items():
                if k not in last_terms:         # terms are logged above
                    writer.add_scalar(f"model/{k}", v, step)
            for k, v in adapter.histograms(model).items():
                writer.add_histogram(f"model/{k}", v, step)
            img = adapter.matrix_image(model)            # [H, W, 3] uint8 or None
            if img is not None:
                writer.add_image("model/edge_weights", img, step, dataformats="HWC")
            window = {"wait": 0.0, "time": 0.0, "steps": 0}

        if rank == 0 and cfg.diagnostics_every and step % cfg.diagnostics_every == 0:
            with local_statistics(model):       # rank 0 alone: no cross-rank BatchNorm
                diag = adapter.diagnostics(model, batch, step)
            for k, v in diag.items():
                writer.add_scalar(f"diag/{k}", v, step)

        if rank == 0 and cfg.preview_every and step % cfg.preview_every == 0:
            img = adapter.preview(model, batch, step)     # PIL image
            path = os.path.join(preview_dir, f"step_{step:07d}.png")
            img.save(path)
            writer.add_image("preview", np.asarray(img), step, dataformats="HWC")

        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if not all_finite(model):           # identical on every rank
                error = f"non-finite weights after step {step}; not checkpointing"
                break
            metrics = {"step": step, "resumed_from_step": resumed_from, "loss": last_terms["total"],
                       **{adapter.term_metric_name(k): v for k, v in last_terms.items()
                          if k != "total"},
                       "images_per_s": images_per_step * totals["steps"] / totals["time"],
                       "data_wait_frac": totals["wait"] / totals["time"],
                       "step_time_s": totals["time"] / totals["steps"],
                       "data_wait_s": totals["wait"] / totals["steps"],
                       "done": step >= cfg.steps,
                       # where and when: rank 0's Ray node (hex id) and the unix time, in s
                       "node_id": ray.get_runtime_context().get_node_id(),
                       "reported_at": time.time()}
            do_val = step == cfg.steps or (val_every and step % val_every == 0)
            if rank == 0 and do_val and val_data:
                t = time.perf_counter()
                metrics.update(adapter.validate(model, val_data, cfg))
                metrics["val_time_s"] = time.perf_counter() - t
                model.train()
                _log_validation(writer, metrics, step)
            rngs = _gather(rng_state(), world)
            if step >= cfg.steps:              # the ranks' parameters must agree at the end
                metrics["param_sha1_per_rank"] = _gather(param_fingerprint(model), world)
                metrics["ranks_in_sync"] = len(set(metrics["param_sha1_per_rank"])) == 1
                # BatchNorm running statistics (and any other buffer) after the last update
                metrics["buffer_sha1_per_rank"] = _gather(buffer_fingerprint(model), world)
                metrics["buffers_in_sync"] = len(set(metrics["buffer_sha1_per_rank"])) == 1
            if rank == 0:
                writer.flush()
                _report_with_checkpoint(metrics, model, optimizer, step, rngs, cfg)
            else:
                ray.train.report(metrics)
            totals = {"wait": 0.0, "time": 0.0, "steps": 0}
            t_last = time.perf_counter()        # exclude checkpoint/validation time

    if writer is not None:
        writer.close()
    if error is not None:
        _stop_on_error(error, step, resumed_from, ckpt is not None, model, optimizer, cfg, rank,
                       world)


def _log_validation(writer, metrics: dict, step: int) -> None:
    """The numeric ``val_*`` entries of ``metrics`` as TensorBoard scalars ``val/*``."""
    for k, v in metrics.items():
        if k.startswith("val_") and isinstance(v, (int, float)):
            writer.add_scalar(f"val/{k[4:]}", v, step)


def _report_with_checkpoint(metrics: dict, model, optimizer, step: int, rngs: list, cfg: TrainConfig,
                            suffix: str = "") -> None:
    """Rank 0: save the state to a temporary folder and report it as ``checkpoint_<step><suffix>``
    (Ray Train copies it into the run folder)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        save_state(tmp, model, optimizer, step, rngs, cfg)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_{step:08d}{suffix}")


def _stop_on_error(error: str, step: int, resumed_from: int, had_checkpoint: bool, model,
                   optimizer, cfg: TrainConfig, rank: int, world: int) -> None:
    """Every rank gets here together (the verdict was all-reduced). The weights and optimiser
    state are those before the failing update: if finite, they are saved as
    ``checkpoint_<step>_nonfinite`` with ``{"error": ...}`` in its metrics (Ray Train's
    ``Result.metrics`` are the latest checkpoint's, which is how ``fit`` sees the error, and
    the state reproduces the failure); if not, the ranks raise and no checkpoint is written."""
    import ray.train

    if rank == 0:
        print(f"ERROR: {error}", flush=True)
    if not all_finite(model):
        raise NonFiniteLossError(error + "; weights are non-finite, nothing checkpointed")
    metrics = {"step": step, "resumed_from_step": resumed_from, "error": error, "done": False}
    save = step > resumed_from or not had_checkpoint     # else the same state is already saved
    rngs = _gather(rng_state(), world)
    if rank == 0 and save:
        _report_with_checkpoint(metrics, model, optimizer, step, rngs, cfg, suffix="_nonfinite")
    else:
        ray.train.report(metrics)
