"""Train AutoLink with DDP on Ray Train (see --help).

Examples:
  python jobs/train_autolink.py --data shards/walker --keypoints 16 --thickness 5e-5 --workers 2 \
      --steps 2000 --batch-size 16 --name autolink-walker --storage runs
  ray job submit --working-dir . -- python jobs/train_autolink.py --data /shared/shards/walker \
      --keypoints 16 --thickness 5e-5 --workers 8 --gpu --steps 20000 --batch-size 64 \
      --name autolink-walker --storage /shared/runs

Rerunning the same command (same --name and --storage) resumes from the latest checkpoint.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kpray.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("autolink"))
