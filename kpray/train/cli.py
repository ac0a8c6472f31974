"""Command line of ``jobs/train_skeleton.py`` and ``jobs/train_autolink.py`` (argparse -> kpray).

Bad input gets one line on stderr and exit status 2, before Ray starts or anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from kpray.train.config import ConfigError, TrainConfig, load_config_file, merge, resolve

EPILOG = """\
Precedence: defaults < --preset (the paper's per-dataset settings) < --config FILE < flags.
Rerunning the same command with the same --name and --storage resumes from the latest
checkpoint ("resuming from step N"); a worker that dies is restarted from it (--max-failures).
Outputs in STORAGE/NAME: checkpoint_<step>/ (state.pt: model, optimiser, step, RNG, config),
logs/tensorboard/ (tensorboard --logdir STORAGE/NAME/logs), logs/previews/step_<N>.png.
On a cluster: ray job submit --working-dir . -- python jobs/{script} ... --storage /shared/runs
"""


def build_parser(model: str) -> argparse.ArgumentParser:
    script = f"train_{model}.py"
    desc = {"skeleton": "Train the skeleton model (Anciukevicius et al., ICPR 2022) with DDP on "
                        "Ray Train: pairs of frames of one episode, 64x64.",
            "autolink": "Train AutoLink (He et al., NeurIPS 2022) with DDP on Ray Train: single "
                        "frames upsampled to 128x128."}[model]
    p = argparse.ArgumentParser(prog=script, description=desc, epilog=EPILOG.format(script=script),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", required=True, metavar="SHARDS",
      help="shard folder with train-*.tar (and test-*.tar for validation), from jobs/gen_data.py")
    a("--preset", help="dataset preset: the paper's settings for it (skeleton: spiders, "
                       "spiders0shot, mwhc, cartpoles, swimmers, human36m) and its eval threshold")
    a("--config", metavar="FILE", help="JSON settings (TrainConfig fields, model_config: {...}); "
                                       "what a Tune search writes as its best preset")
    a("--workers", type=int, help="DDP workers (default 1)")
    a("--gpu", action="store_true", default=None, help="one GPU per worker, NCCL (default: CPU, gloo)")
    a("--steps", type=int, help="optimiser steps in total (default 1000)")
    a("--batch-size", type=int, help="global batch, split evenly across workers "
                                     "(default: the paper's, skeleton 8 pairs, AutoLink 64)")
    a("--name", help="run name: the folder STORAGE/NAME (default: train-<model>)")
    a("--storage", help="Ray Train storage path, local folder or URI (default ./runs)")
    a("--checkpoint-every", type=int, metavar="K", help="checkpoint (and validate) every K steps (default 500)")
    a("--preview-every", type=int, metavar="K", help="PNG preview every K steps, 0: none (default 500)")
    a("--log-every", type=int, metavar="K", help="TensorBoard scalars every K steps (default 10)")
    a("--lr", type=float, help="Adam learning rate (default: the paper's)")
    a("--lr-warmup-steps", type=int, metavar="N",
      help="raise the learning rate linearly over the first N steps (default 0: constant)")
    a("--lr-decay-steps", type=int, metavar="N",
      help="lower the learning rate to 0 on a half cosine over the last N steps (default 0: none)")
    a("--seed", type=int, help="random seed (default 0)")
    a("--max-failures", type=int, help="worker-group restarts from the last checkpoint (default 3)")
    a("--keep", type=int, dest="num_to_keep", help="checkpoints kept (default 3)")
    a("--val-episodes", type=int, help="test episodes used for validation metrics (default 4)")
    a("--loader-workers", type=int, help="data-loading processes per worker (default 1)")
    a("--num-cpus", type=int, help="CPUs of the local Ray instance when one is started "
                                   "(ignored under ray job submit)")
    a("--cpus-per-worker", type=float, help="CPUs reserved per worker, also its torch threads "
                                            "(default 1)")
    a("--set", action="append", default=[], metavar="KEY=VALUE",
      help="model config field, VALUE in JSON (repeatable), e.g. --set pi_width=16")
    a("--no-sync-batchnorm", dest="sync_batchnorm", action="store_false", default=None,
      help="with several workers, let each rank's BatchNorm use its own batch statistics "
           "(default: statistics over all ranks' batches)")
    a("--channels-last", action="store_true", default=None,
      help="convolution weights in channels-last memory format: AutoLink's CPU-scale recipe "
           "trains 1.3x faster on a 2-core CPU (docs/benchmarks.md); same model, other arithmetic "
           "order, so a run does not repeat a contiguous run step for step (default: off)")
    a("--metrics-out", metavar="FILE",
      help="also write the run's last reported metrics (its final validation included) to FILE "
           "as JSON")
    if model == "autolink":
        a("--keypoints", type=int, help="number of keypoints K (default 16)")
        a("--thickness", type=float, help="edge thickness sigma^2, normalised units (default 5e-5)")
        a("--loss", choices=["vgg", "lpips", "pixel_grad", "laplacian"],
          help="reconstruction loss: vgg (default, the official VGG16 L1 over relu1_2..relu4_3, "
               "ImageNet weights needed), lpips, or one needing no weights: pixel_grad (L1 on "
               "pixels and image gradients), laplacian (L1 on a Laplacian pyramid)")
        a("--perceptual-weights", metavar="PATH",
          help="VGG16 state dict file for --loss vgg (default: torchvision's file under "
               "$TORCH_HOME/hub/checkpoints/)")
        a("--perceptual-net", choices=["vgg", "alex"], help="LPIPS backbone (--loss lpips; "
                                                            "default vgg)")
        a("--random-backbone", action="store_true", default=None,
          help="random (fixed-seed) backbone for --loss vgg/lpips: tests only, no ImageNet "
               "weights needed")
    else:
        a("--points", type=int, help="number of foreground points P (default 32)")
        a("--literal", action="store_true", default=None,
          help="the paper read literally where our defaults depart from it (Gumbel samples, "
               "raw heatmaps for psi and the uniform loss, every loss moves the points, ...: "
               "kpray.models.skeleton.PAPER_LITERAL); --set still overrides")
    return p


FLAG_FIELDS = ("workers:num_workers", "gpu:use_gpu", "steps", "batch_size", "name", "storage",
               "checkpoint_every", "preview_every", "log_every", "lr", "lr_warmup_steps",
               "lr_decay_steps", "seed",
               "max_failures", "num_to_keep", "val_episodes", "loader_workers", "sync_batchnorm",
               "channels_last")


def parse_set_items(items) -> dict:
    """``["num_points=16", "pretrained=false"]`` -> ``{"num_points": 16, "pretrained": False}``
    (values are JSON, else strings); ConfigError on an item without ``=``."""
    out: dict = {}
    for item in items:
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


def config_from_args(args: argparse.Namespace, model: str) -> TrainConfig:
    """defaults < preset < --config < flags; raises ConfigError."""
    cfg = TrainConfig(model=model, name=f"train-{model}")
    if args.config:
        file = load_config_file(args.config)
        if file.get("model", model) != model:
            raise ConfigError(f"--config {args.config} is for model {file['model']!r}, not {model!r}")
        cfg = merge(cfg, file, f"--config {args.config}")
    flags: dict = {"data": args.data}
    if args.preset is not None:
        flags["preset"] = args.preset
    for spec in FLAG_FIELDS:
        arg, _, fld = spec.partition(":")
        v = getattr(args, arg)
        if v is not None:
            flags[fld or arg] = v
    mc = parse_set_items(args.set)
    if model == "autolink":
        for arg, fld in (("keypoints", "num_keypoints"), ("thickness", "thickness"),
                         ("perceptual_net", "perceptual_net"), ("loss", "loss"),
                         ("perceptual_weights", "perceptual_weights")):
            if getattr(args, arg) is not None:
                mc[fld] = getattr(args, arg)
        if args.random_backbone:
            mc["pretrained"] = False
    else:
        if getattr(args, "literal", None):
            from kpray.models.skeleton import PAPER_LITERAL

            mc = {**PAPER_LITERAL, **mc}
        if args.points is not None:
            mc["num_points"] = args.points
    flags["model_config"] = mc
    cfg = resolve(merge(cfg, flags, "flags"))
    _check_data(cfg.data)
    return cfg


def _check_data(data: str) -> None:
    if "://" in data:
        return
    if not os.path.exists(data):
        raise ConfigError(f"--data {data}: no such file or folder")
    if os.path.isdir(data):
        from kpray.data import shard_urls

        try:
            shard_urls(data, "train")
        except FileNotFoundError:
            raise ConfigError(f"--data {data}: no train-*.tar shards in this folder") from None


def write_metrics(path: str, metrics: dict) -> None:
    """The JSON-representable entries of ``metrics`` to ``path`` (written whole or not at all)."""
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(keep, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)


def main(model: str, argv=None) -> int:
    parser = build_parser(model)
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        cfg = config_from_args(args, model)
        from kpray.train.trainer import check_resume

        check_resume(cfg)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    from kpray.train.trainer import build_trainer, fit, init_ray

    init_ray(num_cpus=args.num_cpus)
    try:
        result = fit(build_trainer(cfg, cpus_per_worker=args.cpus_per_worker))
    except Exception as e:  # noqa: BLE001 - reported to the user, details are in Ray's logs
        print(f"{prog}: training failed: {e}", file=sys.stderr)
        return 1
    m = result.metrics or {}
    keys = [k for k in ("step", "loss", "images_per_s", "data_wait_frac", "val_bcc",
                        "val_joint_f1", "val_regression_error") if k in m]
    print(f"{prog}: done: " + ", ".join(f"{k}={m[k]:.4g}" if isinstance(m[k], float) else
                                        f"{k}={m[k]}" for k in keys))
    if args.metrics_out:
        write_metrics(args.metrics_out, m)
    print(f"{prog}: run folder {result.path}; tensorboard --logdir {cfg.run_log_dir if cfg.log_dir else os.path.join(result.path, 'logs')}")
    return 0
