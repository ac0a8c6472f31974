"""Render DM Control episodes into WebDataset shards with Ray actors.

Examples:
  python jobs/gen_data.py --dataset cartpoles --episodes 1000 --workers 2 --out shards/cartpoles
  ray job submit --working-dir . -- python jobs/gen_data.py --dataset spiders --episodes 100000 \
      --workers 64 --out /shared/kpray/spiders

Rerunning the same command resumes: only missing shards are rendered.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kpray.datagen import GenError, GenSpec, generate  # noqa: E402

DATASET_HELP = """spiders (3-8 legs, random limb colours) | spiders0shot (train 3,6,7,8 legs; test 4,5) |
cartpoles (1-5 poles) | swimmers (2-7 rods) | mwhc (walker, hopper, cheetah, manipulator in zero
gravity) | single bodies: spider:K, cartpole:K, swimmer:K, walker, hopper, cheetah, manipulator |
walker-parts etc. (a fixed colour per part type) | cartpoles-bands, cartpole:K-bands (as -parts,
each pole in three bands along it) | any name + '-nobg' (background removed: black
off the object, as AutoLink's Human3.6M protocol), e.g. walker-parts-nobg"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument("--episodes", type=int, default=1000, help="train episodes (default 1000)")
    p.add_argument("--test-episodes", type=int, default=60, help="test episodes, never shared with train (default 60, as in the paper)")
    p.add_argument("--workers", type=int, default=2, help="render actors, one CPU each (default 2; capped at the cluster's CPUs)")
    p.add_argument("--out", default=None, help="output folder, local or shared storage (default shards/<dataset>)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed: same seed, same bytes (default 0)")
    p.add_argument("--frames", type=int, default=90, help="frames per episode (default 90)")
    p.add_argument("--size", type=int, default=64, help="frame height and width in pixels (default 64)")
    p.add_argument("--quality", default="fast", choices=["fast", "full"],
                   help="fast: no shadows, reflections or skybox (~5x faster); full: dm_control's default look")
    p.add_argument("--shard-size", type=int, default=50, help="episodes per shard (default 50)")
    p.add_argument("--frame-codec", default="webp", choices=["webp", "png", "jpg"],
                   help="webp: lossless, ~1.7 KB/frame (default); png: lossless, larger; jpg: lossy, smallest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    out = a.out or os.path.join("shards", a.dataset.replace(":", "-"))
    spec = GenSpec(dataset=a.dataset, seed=a.seed, episodes=a.episodes, test_episodes=a.test_episodes,
                   frames=a.frames, size=a.size, quality=a.quality, shard_size=a.shard_size,
                   frame_codec=a.frame_codec)
    try:
        m = generate(spec, out, workers=a.workers, show_progress=not a.no_progress)
    except GenError as e:
        print(f"gen_data.py: error: {e}", file=sys.stderr)
        return 2
    tr, te = m["splits"]["train"], m["splits"]["test"]
    print(f"{out}: {tr['episodes']} train + {te['episodes']} test episodes in "
          f"{len(tr['shards']) + len(te['shards'])} shards, {m['bytes_per_frame']:.0f} bytes/frame; "
          f"preview: {os.path.join(out, 'preview.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
