"""One module per body, dm_control suite style: an MJCF builder plus its skeleton accessors.

``build_body(spec, rng) -> Body`` dispatches on ``spec.kind``.
"""
from __future__ import annotations

import numpy as np

from sim.bodies import cartpole, mwhc, spider, swimmer
from sim.bodies.base import Body, Skeleton

_BUILDERS = {
    "spider": lambda s, rng, q: spider.build(s.n, rng, q),
    "cartpole": lambda s, rng, q: cartpole.build(s.n, rng, q, parts=s.parts, bands=s.bands),
    "swimmer": lambda s, rng, q: swimmer.build(s.n, rng, q),
    **{k: (lambda s, rng, q, k=k: mwhc.build(k, rng, q, parts=s.parts)) for k in mwhc.KINDS},
}


def n_joints(kind: str, n: int | None = None) -> int:
    """Ground-truth joint count J: spider 3K+1, cartpole K+1, swimmer K+1, walker 8, hopper 7,
    cheetah 9, manipulator 8."""
    fixed = {"walker": 8, "hopper": 7, "cheetah": 9, "manipulator": 8}
    if kind in fixed:
        return fixed[kind]
    return {"spider": 3 * n + 1, "cartpole": n + 1, "swimmer": n + 1}[kind]


def build_body(spec, rng: np.random.Generator, quality: str = "fast") -> Body:
    """The body of ``spec`` (a ``BodySpec``), its random sizes and colours drawn from ``rng``.
    ``quality`` only swaps assets that "fast" never draws; the scene is the same."""
    return _BUILDERS[spec.kind](spec, rng, quality)


__all__ = ["Body", "Skeleton", "build_body", "n_joints"]
