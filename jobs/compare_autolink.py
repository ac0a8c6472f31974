"""Compare a trained AutoLink model with the untrained model (the run's exact step-0 weights) on
the test episodes: prints a Markdown table, writes OUT/comparison.{json,md} and
OUT/autolink_graph.png (test frames with the trained model's keypoints and strongest edges, the
GT skeleton, the untrained model's keypoints, and both edge-weight matrices).

    python jobs/compare_autolink.py --checkpoint runs/autolink/train --data SHARDS --out DIR

Rows: keypoint regression error (default protocol and plain; fitted on the train split of
--data), spread ratio, joint F1 / distance, structure Bcc / F1, and the learned graph's limb
agreement against random keypoint pairs. See ``kpray/autolink_report.py`` for what each row
means. Bad input: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True,
                    help="run folder (STORAGE/NAME, newest checkpoint) or a checkpoint_* folder")
    ap.add_argument("--data", required=True,
                    help="shard folder holding test-*.tar (and train-*.tar for the regression)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--eps", type=float, default=None, help="joint hit threshold (default: paper's)")
    ap.add_argument("--regression-episodes", type=int, default=60,
                    help="train split episodes the keypoint regression is fitted on (0: none)")
    ap.add_argument("--out", default="eval", help="output folder")
    args = ap.parse_args(argv)
    from kpray.autolink_report import compare_autolink, to_markdown, write_comparison
    from kpray.evaluation import error_exit

    try:
        from kpray.data import iter_episodes

        episodes = list(iter_episodes(args.data, split=args.split))
        c = compare_autolink(args.checkpoint, episodes, data=args.data, eps=args.eps,
                             regression_episodes=args.regression_episodes)
    except Exception as e:  # noqa: BLE001 - bad input, unreadable shards or checkpoint
        return error_exit("compare_autolink.py", e)
    print(to_markdown(c), end="")
    pj, pm = write_comparison(c, args.out)
    print(f"-> {pj}, {pm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
