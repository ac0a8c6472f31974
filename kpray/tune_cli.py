"""Command line of ``jobs/tune_skeleton.py`` and ``jobs/tune_autolink.py`` (argparse -> kpray.tune).

Bad input gets one line on stderr and exit status 2, before Ray starts or anything is written.
"""
from __future__ import annotations

import argparse
import sys

from kpray.train.cli import parse_set_items
from kpray.train.config import ConfigError, TrainConfig, load_config_file, merge
from kpray.tune import OBJECTIVES, SearchSpec

EPILOG = """\
Rerunning the same command (same --name and --storage) resumes the experiment: finished trials are
kept, unfinished ones continue from their latest checkpoint, errored ones are retried, and the
sampler continues its sequence, so the experiment ends with exactly --samples trials.
Outputs in STORAGE/NAME: results.csv (one row per trial), summary.md, objective.png,
best_config.json (pass it to jobs/{train} --config), trials/trial-<id>/ (checkpoints, logs).
On a cluster:
  ray job submit --working-dir . -- python jobs/{script} ... --gpus-per-trial 1 --storage /shared/runs
"""


def build_parser(model: str) -> argparse.ArgumentParser:
    script, train = f"tune_{model}.py", f"train_{model}.py"
    metric, mode = OBJECTIVES[model]
    desc = {"skeleton": "Random search (the paper's) over the seven loss weights of the skeleton "
                        "model, on Ray Tune + Optuna, one DDP TorchTrainer per trial.",
            "autolink": "Search AutoLink's edge thickness on a log scale, on Ray Tune + Optuna, one "
                        "DDP TorchTrainer per trial."}[model]
    desc += f" Objective: {metric} ({'maximise' if mode == 'max' else 'minimise'})."
    p = argparse.ArgumentParser(prog=script, description=desc,
                                epilog=EPILOG.format(script=script, train=train),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", required=True, metavar="SHARDS", help="shard folder with train-*.tar and test-*.tar")
    a("--preset", help="dataset preset (the paper's settings; skeleton: spiders, spiders0shot, "
                       "mwhc, cartpoles, swimmers, human36m)")
    a("--config", metavar="FILE", help="JSON base training settings for every trial")
    a("--samples", type=int, default=20, help="trials in the experiment (default 20; paper: 20-100)")
    a("--workers-per-trial", type=int, default=1, help="DDP workers of each trial (default 1)")
    a("--gpus-per-trial", type=float, default=0.0,
      help="GPUs per trial, spread over its workers (default 0: CPU workers with gloo)")
    a("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per training worker (default 1)")
    a("--max-concurrent", type=int, help="trials at once (default: as many as the cluster fits)")
    a("--steps", type=int, default=1000, help="training steps per trial (default 1000)")
    a("--batch-size", type=int, help="global batch of each trial (default: the paper's)")
    a("--checkpoint-every", type=int, default=None, metavar="K",
      help="checkpoint and validate every K steps (default: steps/4)")
    a("--val-episodes", type=int, help="test episodes for the validation metrics (default 4)")
    a("--name", required=True, help="experiment name: the folder STORAGE/NAME")
    a("--storage", default="runs", help="local folder or URI of shared storage (default ./runs)")
    a("--sampler", choices=["random", "tpe"], default="random",
      help="Optuna sampler: random (the paper's random search, default) or tpe")
    a("--asha", action="store_true", help="ASHA early stopping on the objective")
    a("--seed", type=int, default=0, help="seed of the sampler and of training (default 0)")
    a("--set", action="append", default=[], metavar="KEY=VALUE",
      help="model config field for every trial, VALUE in JSON (repeatable), e.g. --set num_points=16")
    if model == "autolink":
        a("--keypoints", type=int, help="number of keypoints K (fixed by the benchmark; default 16)")
        a("--thickness-min", type=float, default=1e-5, help="lower end of the log range (default 1e-5)")
        a("--thickness-max", type=float, default=1e-1, help="upper end of the log range (default 1e-1)")
        a("--random-backbone", action="store_true",
          help="random (fixed-seed) backbone for the vgg/lpips loss (tests only; no ImageNet "
               "weights needed); --set loss=pixel_grad needs no weights at all")
    else:
        a("--literal", action="store_true",
          help="every trial reads the paper literally where our defaults depart from it "
               "(kpray.models.skeleton.PAPER_LITERAL); --set still overrides")
    return p


def spec_from_args(args: argparse.Namespace, model: str) -> SearchSpec:
    base = TrainConfig(model=model)
    if args.config:
        base = merge(base, load_config_file(args.config), f"--config {args.config}")
    mc = parse_set_items(args.set)
    if getattr(args, "literal", None):
        from kpray.models.skeleton import PAPER_LITERAL

        mc = {**PAPER_LITERAL, **mc}
    if model == "autolink":
        if args.keypoints is not None:
            mc["num_keypoints"] = args.keypoints
        if args.random_backbone:
            mc["pretrained"] = False
    steps = args.steps
    flags = {"data": args.data, "steps": steps, "num_workers": args.workers_per_trial,
             "seed": args.seed, "model_config": mc,
             "checkpoint_every": args.checkpoint_every or max(1, steps // 4),
             "preview_every": 0}
    for k in ("preset", "batch_size", "val_episodes"):
        if getattr(args, k) is not None:
            flags[k] = getattr(args, k)
    base = merge(base, flags, "flags")
    from kpray.train.cli import _check_data

    _check_data(base.data)
    kw = {}
    if model == "autolink":
        kw["thickness_range"] = (args.thickness_min, args.thickness_max)
    return SearchSpec(model=model, base=base, samples=args.samples, name=args.name,
                      storage=args.storage, sampler=args.sampler, asha=args.asha, seed=args.seed,
                      gpus_per_trial=args.gpus_per_trial, cpus_per_worker=args.cpus_per_worker,
                      max_concurrent=args.max_concurrent, **kw)


def main(model: str, argv=None) -> int:
    from kpray.tune import check_same_space, check_spec, run_search

    parser = build_parser(model)
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args, model)
        check_spec(spec)
        check_same_space(spec)
    except ConfigError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        out = run_search(spec)
    except ConfigError as e:  # e.g. resources the cluster does not have
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    from kpray.tune import read_text

    print(read_text(f"{out['dir']}/summary.md") or "")
    print(f"results: {out['dir']}/results.csv, plot: {out['dir']}/objective.png"
          + (f", best preset: {out['dir']}/best_config.json" if out["best"] else ""))
    return 0
