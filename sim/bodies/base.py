"""What every body module returns: a compiled model, its ground-truth skeleton, its random reset.

A skeleton joint is a point fixed in one or more bodies: ``(body_id, local_pos[3])`` anchors in
the body's frame, averaged when several are given (that is how coincident joints are merged, e.g.
the walker's two hips). Its world position is ``xpos[b] + xmat[b] @ local``; for a MuJoCo joint
the anchor is ``jnt_pos`` in the joint's body, which equals ``data.xanchor``.
"""
from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass, field
from typing import Callable

import mujoco
import numpy as np

Anchor = tuple[int, np.ndarray]  # (body id, position [3] in that body's frame)


@dataclass
class Skeleton:
    """Ground-truth joints and links of one body.

    names:    J joint names
    anchors:  per joint, the anchors averaged into it
    attached: per joint, the body ids that touch it (a MuJoCo joint: its body and the parent; a
              free end: its own body); a joint is hidden only by a body NOT in this set
    edges:    J-1 links (i, j), a tree
    """

    names: list[str]
    anchors: list[list[Anchor]]
    attached: list[frozenset[int]]
    edges: list[tuple[int, int]]

    def __post_init__(self):
        flat = [(j, b, p) for j, anchors in enumerate(self.anchors) for b, p in anchors]
        self._bids = np.array([b for _, b, _ in flat], dtype=np.int64)          # [A]
        self._local = np.array([p for _, _, p in flat], dtype=np.float64)      # [A, 3]
        self._merge = np.zeros((len(self.names), len(flat)))                   # [J, A]
        for a, (j, _, _) in enumerate(flat):
            self._merge[j, a] = 1.0
        self._merge /= self._merge.sum(1, keepdims=True)

    @property
    def n_joints(self) -> int:
        return len(self.names)

    def positions(self, data: mujoco.MjData) -> np.ndarray:
        """World positions ``[J, 3]`` of the joints for the current (forwarded) state."""
        rot = data.xmat[self._bids].reshape(-1, 3, 3)
        world = data.xpos[self._bids] + np.einsum("aij,aj->ai", rot, self._local)
        return self._merge @ world

    def adjacency(self) -> np.ndarray:
        """``[J, J]`` bool, symmetric, zero diagonal."""
        adj = np.zeros((self.n_joints, self.n_joints), dtype=bool)
        for i, j in self.edges:
            adj[i, j] = adj[j, i] = True
        return adj


@dataclass
class CameraPrefs:
    """Where a tracking camera may look from (degrees): azimuth centre +- spread (mirrored to
    the opposite side with probability 1/2 when ``mirror``), elevation range, and the orbit rate
    range (deg/frame, random sign) that turns the view during the episode."""

    azimuth: tuple[float, float] = (0.0, 180.0)
    elevation: tuple[float, float] = (-55.0, -15.0)
    orbit: tuple[float, float] = (0.5, 2.0)
    mirror: bool = False


@dataclass
class Body:
    """A built body: model, skeleton, the object's body ids, root (tracked) body, reset."""

    kind: str
    model: mujoco.MjModel
    skeleton: Skeleton
    object_bodies: np.ndarray            # [B] body ids whose geoms are the object
    root_body: int                        # its subtree COM is the camera's target
    reset: Callable[[mujoco.MjData, np.random.Generator], None]
    frame_dt: float = 0.04                # seconds of simulation per rendered frame
    camera: CameraPrefs = field(default_factory=CameraPrefs)
    meta: dict = field(default_factory=dict)

    @property
    def substeps(self) -> int:
        return max(1, int(round(self.frame_dt / self.model.opt.timestep)))


# ---- assets ---------------------------------------------------------------------------------

_TINY_SKYBOX = b"""<mujoco><asset><texture name="skybox" type="skybox" builtin="gradient"
  rgb1=".4 .6 .8" rgb2="0 0 0" width="8" height="8"/></asset></mujoco>"""


def suite_assets(quality: str) -> dict:
    """dm_control's common assets (skybox, visual, materials). For "fast" the 800x800 random-mark
    skybox (never drawn there: the skybox flag is off) is swapped for an 8x8 one: generating and
    uploading it cost ~0.1 s per episode, as much as rendering 25 frames."""
    from dm_control.suite import common
    if quality == "full":
        return common.ASSETS
    return {**common.ASSETS, "./common/skybox.xml": _TINY_SKYBOX}


# ---- anchors ---------------------------------------------------------------------------------

def bid(model: mujoco.MjModel, name: str) -> int:
    i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
    if i < 0:
        raise KeyError(f"no body {name!r}")
    return i


def joint_anchor(model: mujoco.MjModel, joint: str) -> Anchor:
    """The MuJoCo joint's anchor (``jnt_pos`` in its body frame; equals ``data.xanchor``)."""
    j = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, joint)
    if j < 0:
        raise KeyError(f"no joint {joint!r}")
    return int(model.jnt_bodyid[j]), model.jnt_pos[j].copy()


def joint_attached(model: mujoco.MjModel, joint: str) -> frozenset[int]:
    b = joint_anchor(model, joint)[0]
    return frozenset({b, int(model.body_parentid[b])})


def capsule_end(model: mujoco.MjModel, geom: str, away_from=(0.0, 0.0, 0.0)) -> Anchor:
    """The end of a capsule's axis (in its body frame) farther from ``away_from`` (body frame)."""
    g = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom)
    if g < 0:
        raise KeyError(f"no geom {geom!r}")
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, model.geom_quat[g])
    axis = rot.reshape(3, 3)[:, 2] * model.geom_size[g, 1]
    ends = model.geom_pos[g] + np.stack([axis, -axis])
    far = int(np.argmax(np.linalg.norm(ends - np.asarray(away_from), axis=1)))
    return int(model.geom_bodyid[g]), ends[far].copy()


def subtree(model: mujoco.MjModel, root: int) -> np.ndarray:
    """Body ids of ``root`` and all its descendants."""
    ids = [root]
    for b in range(root + 1, model.nbody):
        if model.body_parentid[b] in ids:
            ids.append(b)
    return np.array(ids, dtype=np.int64)


# ---- randomisation ---------------------------------------------------------------------------

def random_rgb(rng: np.random.Generator) -> tuple[float, float, float]:
    """A saturated, bright colour (so the object stands out from the dark blue floor)."""
    return colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.45, 1.0), rng.uniform(0.65, 1.0))


def part_rgbs(rng: np.random.Generator, names) -> list[tuple[float, float, float]]:
    """One colour per part name, the same in every episode: hues evenly spaced over the part
    types in sorted order, a left part coloured as its right twin (``left_thigh`` as
    ``right_thigh``: as people's two legs look alike), saturation and value jittered a little
    per part. Appearance then tells part types apart, as it does for people (head, shirt,
    trousers), which a one-coloured body does not."""
    types = [re.sub(r"^(left|right)_", "", str(n)) for n in names]
    order = sorted(set(types))
    return [colorsys.hsv_to_rgb(order.index(t) / len(order), rng.uniform(0.75, 0.95),
                                rng.uniform(0.8, 0.95)) for t in types]


def paint(model: mujoco.MjModel, bodies, rgb) -> None:
    """Give every geom of ``bodies`` the colour ``rgb`` (drops their material so it shows)."""
    mask = np.isin(model.geom_bodyid, np.asarray(list(bodies)))
    model.geom_matid[mask] = -1
    model.geom_rgba[mask] = (*rgb, 1.0)


def randomise_hinges(model: mujoco.MjModel, data: mujoco.MjData, rng: np.random.Generator,
                     joints, vel_std: float = 1.0) -> None:
    """Uniform angle inside each hinge's range (or a full turn if unlimited), normal velocity."""
    for name in joints:
        j = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        lo, hi = model.jnt_range[j] if model.jnt_limited[j] else (-np.pi, np.pi)
        data.qpos[model.jnt_qposadr[j]] = rng.uniform(lo, hi)
        data.qvel[model.jnt_dofadr[j]] = rng.normal(0.0, vel_std)


def hinge_names(model: mujoco.MjModel, exclude=()) -> list[str]:
    return [model.joint(j).name for j in range(model.njnt)
            if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE and model.joint(j).name not in exclude]
