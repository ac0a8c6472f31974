"""Search the autolink model's hyperparameters on Ray Tune + Optuna (see --help).

Examples:
  python jobs/tune_autolink.py --data shards/cartpoles --preset cartpoles --samples 50 \
      --workers-per-trial 2 --steps 2000 --name tune-autolink --storage runs
  ray job submit --working-dir . -- python jobs/tune_autolink.py --data /shared/shards/cartpoles \
      --preset cartpoles --samples 50 --workers-per-trial 2 --gpus-per-trial 1 --steps 20000 \
      --name tune-autolink --storage /shared/runs

Rerunning the same command (same --name and --storage) resumes the experiment.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kpray.tune_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("autolink"))
