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
