"""Evaluate predictions on the test shards: metrics.json, tables.md (paper Tables I/II) and figures.

    python jobs/evaluate.py --predictions PRED.npz --data SHARDS [--split test] [--dataset NAME]
                            [--eps E] [--out DIR] [--model-name NAME] [--figures N]

The predictions file format is documented in ``kpray/evaluation.py`` and ``docs/metrics.md``.
``--checkpoint PATH`` (a run folder STORAGE/NAME or one of its checkpoint_* folders) runs the
trained model over the test episodes first, then evaluates its predictions the same way.
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
    return ap.parse_args(argv)


def fail(msg: str) -> int:
    print(f"evaluate.py: error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)
    from kpray.evaluation import EvaluationError, evaluate_videos, load_predictions
    from kpray.train.predict import predict_from_checkpoint

    try:
        from kpray.data import iter_episodes

        if args.checkpoint is not None:
            episodes = [ep for ep in iter_episodes(args.data, split=args.split)
                        if args.dataset is None or ep["meta"].get("dataset") == args.dataset]
            preds, model = predict_from_checkpoint(args.checkpoint, episodes)
        else:
            episodes = iter_episodes(args.data, split=args.split)
            preds, model = load_predictions(args.predictions)
        summary = evaluate_videos(episodes, preds, args.out,
                                  eps=args.eps, dataset=args.dataset, split=args.split,
                                  model_name=args.model_name or model or "ours",
                                  n_figures=args.figures)
    except EvaluationError as e:
        return fail(str(e))
    except Exception as e:  # unreadable shards, decoding errors: still one line and exit 2
        first = str(e).splitlines()[0] if str(e) else ""
        return fail(f"{type(e).__name__}: {first}")
    n = sum(d["n_videos"] for d in summary["datasets"].values())
    print(f"evaluated {n} videos ({', '.join(summary['datasets'])}) -> {args.out}/metrics.json, "
          f"{args.out}/tables.md, {args.out}/figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
