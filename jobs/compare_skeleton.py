"""Compare a trained skeleton model with the untrained model, the best constant skeleton and the
paper, on the test episodes: prints a Markdown table, writes OUT/comparison.{json,md} and
OUT/skeletons.png (one test frame per body: true skeleton above, predicted below).

    python jobs/compare_skeleton.py --checkpoint runs/learn-skeleton/train --data SHARDS --out DIR

See ``kpray/skeleton_report.py`` for what each row means. Bad input: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True,
                    help="run folder (STORAGE/NAME, newest checkpoint) or a checkpoint_* folder")
    ap.add_argument("--data", required=True, help="shard folder holding test-*.tar")
    ap.add_argument("--split", default="test")
    ap.add_argument("--eps", type=float, default=None, help="joint hit threshold (default: paper's)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the untrained model and of the "
                                                        "frame each video's links come from")
    ap.add_argument("--out", default="eval", help="output folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a model config field before scoring, VALUE in JSON (repeatable), "
                         "e.g. --set psi_head='\"solver\"' scores the trained pi with the "
                         "structure-loss solver as psi")
    args = ap.parse_args(argv)
    from kpray.evaluation import error_exit
    from kpray.skeleton_report import compare_skeleton, to_markdown, write_comparison

    try:
        from kpray.data import iter_episodes

        episodes = list(iter_episodes(args.data, split=args.split))
        from kpray.train.cli import parse_set_items

        c = compare_skeleton(args.checkpoint, episodes, eps=args.eps, seed=args.seed,
                             overrides=parse_set_items(args.set))
    except Exception as e:  # noqa: BLE001 - bad input, unreadable shards or checkpoint
        return error_exit("compare_skeleton.py", e)
    print(to_markdown(c), end="")
    pj, pm = write_comparison(c, args.out)
    print(f"-> {pj}, {pm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
