"""Train AutoLink with DDP on Ray Train (see --help).

Examples:
  # CPU scale, no ImageNet weights needed (the recipe of `make learn-autolink`)
  python jobs/train_autolink.py --data shards/walker --keypoints 10 --thickness 1e-3 \
      --loss laplacian --set image_size=64 --set heatmap_size=16 --set detector_width=16 \
      --set decoder_width=16 --set decoder_coords=true --lr 3e-4 --batch-size 16 --steps 3000 \
      --cpus-per-worker 2 --name autolink-walker --storage runs
  # the paper's scale on a GPU cluster, the official VGG16 loss from a local weights file
  ray job submit --working-dir . -- python jobs/train_autolink.py --data /shared/shards/walker \
      --keypoints 16 --thickness 5e-5 --workers 8 --gpu --steps 20000 --batch-size 64 \
      --perceptual-weights /shared/weights/vgg16-397923af.pth --name autolink-walker \
      --storage /shared/runs

Rerunning the same command (same --name and --storage) resumes from the latest checkpoint.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kpray.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("autolink"))
