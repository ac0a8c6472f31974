"""Dataset names -> the set of bodies an episode is drawn from.

Accepted names (``DATASET_NAMES`` lists the base names; fixed-topology names take ``:K``):

- ``spiders``       spiders with 3..8 legs (train and test)
- ``spiders0shot``  train split 3, 6, 7, 8 legs; test split 4, 5 legs (unseen topologies)
- ``cartpoles``     cartpoles with 1..5 poles
- ``swimmers``      swimmers with 2..7 rods
- ``mwhc``          walker, hopper, cheetah, manipulator, all in zero gravity
- ``spider:K`` (K in 1..12), ``cartpole:K`` (1..8), ``swimmer:K`` (2..12), ``walker``, ``hopper``,
  ``cheetah``, ``manipulator``: one fixed body (the latter four in zero gravity, as in ``mwhc``).
- ``walker-parts``, ``hopper-parts``, ``cheetah-parts``, ``manipulator-parts``: the same body with
  each part type (MuJoCo body: torso, thigh, leg, foot, ...) its own fixed colour, left and right
  twins alike, where the plain body is one random colour. A diagnostic: does a keypoint model
  learn when appearance tells parts apart, as it does for people?
- ``cartpoles-parts``, ``cartpole:K-parts``: the cart and each pole its own fixed colour (pole i
  the same hue in every body), where the plain poles share one random colour. A diagnostic of
  the skeleton model: do its points keep their identity over a video when the poles, and so the
  hinges between them, look different?
- ``cartpoles-bands``, ``cartpole:K-bands``: as ``-parts``, and each pole painted in three bands
  along its length (bright at its hinge, dark at its far end), so that a place along a pole,
  not only the pole, has its own look. A diagnostic of the skeleton model: do its points keep
  one place on a pole over a video when nothing but colour tells them where they are?
- any of the above with ``-nobg`` (``walker-parts-nobg``, ``cartpoles-nobg``, ...): the same
  episodes' bodies with the background removed, every pixel off the object mask black (floor,
  horizon, rails). AutoLink's main Human3.6M numbers are on background-removed images (its
  section 4, "We remove the background as in [126, 66]"); this is that protocol for our data.

``parse_dataset(name).sample_body(rng, split)`` draws a ``BodySpec`` uniformly from the split's bodies.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

DATASET_NAMES = ("spiders", "spiders0shot", "cartpoles", "swimmers", "mwhc",
                 "spider", "cartpole", "swimmer", "walker", "hopper", "cheetah", "manipulator")
SPLITS = ("train", "test")
NO_BACKGROUND = "-nobg"  # suffix: the same dataset with the background removed
PARTS = "-parts"         # suffix: every part its own fixed colour (bodies in _PAINTABLE)
BANDS = "-bands"         # suffix: -parts, and every pole in bands along its length (cartpoles)

# Body kinds that take a count K, with the count's name in `meta` and its accepted range.
_COUNTED = {"spider": ("n_legs", 1, 12), "cartpole": ("n_poles", 1, 8), "swimmer": ("n_links", 2, 12)}
_FIXED = ("walker", "hopper", "cheetah", "manipulator")
_PAINTABLE = (*_FIXED, "cartpole")   # body kinds whose builder takes ``parts``


@dataclass(frozen=True)
class BodySpec:
    """One body: ``kind`` in spider/cartpole/swimmer/walker/hopper/cheetah/manipulator, ``n`` its
    count (legs, poles, rods) or None for the fixed-topology bodies."""

    kind: str
    n: int | None = None
    parts: bool = False             # every part its own colour (kinds in _PAINTABLE)
    bands: bool = False             # as parts, and each pole in bands along it (cartpole)

    @property
    def name(self) -> str:
        base = self.kind if self.n is None else f"{self.kind}:{self.n}"
        return base + (BANDS if self.bands else PARTS if self.parts else "")

    def count_meta(self) -> dict:
        """``{"n_legs": K}`` / ``{"n_poles": K}`` / ``{"n_links": K}``, or ``{}``."""
        return {_COUNTED[self.kind][0]: self.n} if self.kind in _COUNTED else {}


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its canonical ``name`` and the bodies of each split."""

    name: str
    train: tuple[BodySpec, ...]
    test: tuple[BodySpec, ...]
    background: bool = True         # False: pixels off the object mask are rendered black

    def bodies(self, split: str) -> tuple[BodySpec, ...]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
        return self.train if split == "train" else self.test

    def sample_body(self, rng: np.random.Generator, split: str) -> BodySpec:
        """A body drawn uniformly from the split's bodies."""
        bodies = self.bodies(split)
        return bodies[int(rng.integers(len(bodies)))]

    def to_json(self) -> dict:
        return {"name": self.name, "train": [b.name for b in self.train],
                "test": [b.name for b in self.test], "background": self.background}


def _same(name: str, bodies) -> DatasetSpec:
    bodies = tuple(bodies)
    return DatasetSpec(name, bodies, bodies)


def parse_dataset(name: str | DatasetSpec) -> DatasetSpec:
    """``"spiders"`` / ``"cartpole:3"`` / ... -> ``DatasetSpec``; ``ValueError`` on unknown names."""
    if isinstance(name, DatasetSpec):
        return name
    err = ValueError(f"unknown dataset {name!r}: choose from {', '.join(DATASET_NAMES)} "
                     f"(spider/cartpole/swimmer take ':K', e.g. 'spider:5'; "
                     f"walker/hopper/cheetah/manipulator/mwhc/cartpoles/cartpole:K take '-parts'; "
                     f"cartpoles/cartpole:K take '-bands'; "
                     f"any takes '-nobg')")
    if not isinstance(name, str):
        raise err
    key = name.strip().lower()
    if key.endswith(NO_BACKGROUND):
        try:
            base = parse_dataset(key[:-len(NO_BACKGROUND)])
        except ValueError:
            raise err from None
        if not base.background:
            raise err
        return DatasetSpec(base.name + NO_BACKGROUND, base.train, base.test, background=False)
    if key == "spiders":
        return _same(key, (BodySpec("spider", k) for k in range(3, 9)))
    if key == "spiders0shot":
        return DatasetSpec(key, tuple(BodySpec("spider", k) for k in (3, 6, 7, 8)),
                           tuple(BodySpec("spider", k) for k in (4, 5)))
    if key == "cartpoles":
        return _same(key, (BodySpec("cartpole", k) for k in range(1, 6)))
    if key == "swimmers":
        return _same(key, (BodySpec("swimmer", k) for k in range(2, 8)))
    if key == "mwhc":
        return _same(key, (BodySpec(k) for k in ("walker", "hopper", "cheetah", "manipulator")))
    if key in _FIXED:
        return _same(key, (BodySpec(key),))
    for suffix, kinds, flag in ((PARTS, _PAINTABLE, "parts"), (BANDS, ("cartpole",), "bands")):
        if key.endswith(suffix):   # a painted variant of a plain dataset of these kinds
            try:
                base = parse_dataset(key[:-len(suffix)])
            except ValueError:
                raise err from None
            bodies = base.train + base.test
            if not base.background or any(b.parts or b.bands or b.kind not in kinds for b in bodies):
                raise err
            return DatasetSpec(base.name + suffix, *(tuple(replace(b, **{flag: True}) for b in split)
                                                     for split in (base.train, base.test)))
    kind, sep, count = key.partition(":")
    if sep and kind in _COUNTED and count.isdigit():
        k = int(count)
        _, lo, hi = _COUNTED[kind]
        if lo <= k <= hi:
            return _same(f"{kind}:{k}", (BodySpec(kind, k),))
    raise err
