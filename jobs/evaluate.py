"""Evaluate predictions on the test shards: metrics.json, tables.md (paper Tables I/II) and figures.

    python jobs/evaluate.py --predictions PRED.npz --data SHARDS [--split test] [--dataset NAME]
                            [--eps E] [--out DIR] [--model-name NAME] [--figures N]
    python jobs/evaluate.py --checkpoint PATH --data SHARDS [same options]
                            [--regression-episodes 60] [--regression-protocol h36m|plain|taichi]

The predictions file format is documented in ``kpray/evaluation.py`` and ``docs/metrics.md``.
``--checkpoint PATH`` (a run folder STORAGE/NAME or one of its checkpoint_* folders) runs the
trained model over the test episodes first, then evaluates its predictions the same way; for
an AutoLink checkpoint it adds AutoLink's keypoint regression to metrics.json ("regression":
fitted on up to --regression-episodes train split episodes of the test set's most common body,
scored on the test episodes; protocol "h36m" with the left/right swap from the joint names unless
--regression-protocol says otherwise; see docs/metrics.md). No train split in --data: the block
says so ("error": null, "skipped": why) and the rest is evaluated as usual.
Bad input: one line on stderr, exit code 2, nothing written.
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="predictions .npz (points_<index>, adj_<index>)")
    src.add_argument("--checkpoint", help="trained model: a run folder (STORAGE/NAME, newest "
                                          "checkpoint) or one of its checkpoint_* folders")
    ap.add_argument("--data", required=True, help="shard folder, shard file or URL")
    ap.add_argument("--split", default="test")
    ap.add_argument("--dataset", default=None, help="evaluate only this dataset (meta['dataset'])")
    ap.add_argument("--eps", type=float, default=None,
                    help="hit threshold in normalised units (default: the paper's per dataset)")
    ap.add_argument("--out", default="eval", help="output folder")
    ap.add_argument("--model-name", default=None, help="column title (default: file's 'model')")
    ap.add_argument("--figures", type=int, default=4, help="videos drawn per dataset")
    ap.add_argument("--regression-episodes", type=int, default=60,
                    help="--checkpoint of AutoLink: train split episodes the keypoint regression "
                         "is fitted on (0: no regression)")
    ap.add_argument("--regression-protocol", choices=("h36m", "plain", "taichi"), default=None,
                    help="keypoint regression protocol (default: ours, h36m with the left/right "
                         "swap from the joint names)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="--checkpoint: change a model config field before predicting, VALUE in "
                         "JSON (repeatable), e.g. --set psi_head='\"solver\"'")
    return ap.parse_args(argv)


def fail(msg: str) -> int:
    print(f"evaluate.py: error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)
    from kpray.evaluation import EvaluationError, evaluate_videos, load_predictions
    from kpray.train.predict import load_model, predict_episodes

    extra = {}
    try:
        from kpray.data import iter_episodes

        if args.checkpoint is not None:
            if args.regression_episodes < 0:
                raise EvaluationError(f"--regression-episodes must be >= 0, got "
                                      f"{args.regression_episodes}")
            episodes = [ep for ep in iter_episodes(args.data, split=args.split)
                        if args.dataset is None or ep["meta"].get("dataset") == args.dataset]
            from kpray.train.cli import parse_set_items

            net, adapter, cfg, state = load_model(args.checkpoint,
                                                  overrides=parse_set_items(args.set))
            preds = predict_episodes(net, adapter, cfg.model, episodes)
            model = f"{cfg.model} step {state['step']}"
            if cfg.model == "autolink" and args.regression_episodes > 0:
                reg = _regression(args, net, adapter, episodes)
                if reg is not None:
                    extra["regression"] = reg
        else:
            episodes = iter_episodes(args.data, split=args.split)
            preds, model = load_predictions(args.predictions)
        summary = evaluate_videos(episodes, preds, args.out,
                                  eps=args.eps, dataset=args.dataset, split=args.split,
                                  model_name=args.model_name or model or "ours",
                                  n_figures=args.figures, extra=extra)
    except EvaluationError as e:
        return fail(str(e))
    except Exception as e:  # unreadable shards, decoding errors: still one line and exit 2
        first = str(e).splitlines()[0] if str(e) else ""
        return fail(f"{type(e).__name__}: {first}")
    n = sum(d["n_videos"] for d in summary["datasets"].values())
    reg = summary.get("regression")
    if reg is None:
        reg_text = ""
    elif reg.get("error") is None:
        reg_text = f"; no keypoint regression ({reg['skipped']})"
    else:
        reg_text = (f"; keypoint regression ({reg['protocol']}): {100 * reg['error']:.2f}% of the "
                    f"image (plain {100 * reg['plain_error']:.2f}%), spread ratio "
                    f"{reg['spread_ratio']:.2f}")
    print(f"evaluated {n} videos ({', '.join(summary['datasets'])}) -> {args.out}/metrics.json, "
          f"{args.out}/tables.md, {args.out}/figures/{reg_text}")
    return 0


def _regression(args, net, adapter, episodes) -> dict | None:
    """The "regression" block: fit on the train split of --data, score on ``episodes`` (the
    evaluated ones). None when there is no evaluated episode (evaluate_videos then says so)."""
    from kpray.data import iter_episodes
    from kpray.evaluation import EvaluationError
    from kpray.metrics import DEFAULT_REGRESSION_PROTOCOL
    from kpray.train.predict import autolink_regression

    test = [ep for ep in episodes if ep["meta"].get("split", args.split) == args.split]
    if not test:
        return None
    try:
        train = (ep for ep in iter_episodes(args.data, split="train")
                 if ep["meta"].get("split") == "train"
                 and (args.dataset is None or ep["meta"].get("dataset") == args.dataset))
        return autolink_regression(net, adapter, train, test, protocol=args.regression_protocol,
                                   max_train_episodes=args.regression_episodes)
    except FileNotFoundError:
        why = f"no train split shards in {args.data}"
    except EvaluationError as e:
        if "no train episode" not in str(e):
            raise
        why = str(e).removeprefix("regression: ")
    return {"protocol": args.regression_protocol or DEFAULT_REGRESSION_PROTOCOL, "error": None,
            "skipped": why}


if __name__ == "__main__":
    sys.exit(main())
