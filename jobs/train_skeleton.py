"""Train the skeleton model with DDP on Ray Train (see --help).

Examples:
  python jobs/train_skeleton.py --data shards/cartpoles --preset cartpoles --workers 2 --steps 2000 \
      --batch-size 8 --name skeleton-cartpoles --storage runs
  ray job submit --working-dir . -- python jobs/train_skeleton.py --data /shared/shards/cartpoles \
      --preset cartpoles --workers 8 --gpu --steps 20000 --name skeleton-cartpoles --storage /shared/runs

Rerunning the same command (same --name and --storage) resumes from the latest checkpoint.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kpray.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("skeleton"))
