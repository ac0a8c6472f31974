"""DM Control scene builders and the episode renderer.

This package imports neither torch nor ray: it turns (dataset, split, seed, index) into one
rendered episode as numpy arrays, following the episode contract of ``../shared/DESIGN.md``:

- ``frames``    ``[T, H, W, 3]`` uint8, rendered RGB
- ``masks``     ``[T, H, W]`` bool, the object's own pixels (segmentation render)
- ``joints``    ``[T, J, 2]`` float32, pixels, ``[..., 0]`` = x (column), ``[..., 1]`` = y (row),
                pixel centres at integers
- ``visible``   ``[T, J]`` bool, inside the frame and not hidden by another body
- ``adjacency`` ``[J, J]`` bool, symmetric, a tree
- ``meta``      dict (JSON-serialisable)

Entry points (see ``sim.episode`` and ``sim.datasets``)::

    from sim import render_episode, parse_dataset, DATASET_NAMES
    ep = render_episode("cartpoles", split="train", seed=0, index=3, frames=90, size=64)
"""
import os as _os

_os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco loads
# Mesa llvmpipe (CPU GL): rasterise in the calling thread. For 64x64 frames its worker threads cost
# more than they save, and data generation runs one process per core anyway (measured 1.3-3x).
_os.environ.setdefault("LP_NUM_THREADS", "0")

from sim.datasets import DATASET_NAMES, DatasetSpec, BodySpec, parse_dataset  # noqa: E402
from sim.episode import render_episode  # noqa: E402

__all__ = ["DATASET_NAMES", "BodySpec", "DatasetSpec", "parse_dataset", "render_episode"]
