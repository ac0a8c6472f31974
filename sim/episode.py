"""One episode: (dataset, split, seed, index) -> rendered frames, masks and ground-truth joints.

Recipe (paper, supplementary IX): draw a body uniformly from the dataset's split, a random initial
pose (joint angles; root orientation and spin), then a random policy that holds a uniformly random
action (inside the actuators' ctrlrange) for 5 control steps (one control step = one frame,
``Body.frame_dt`` seconds of physics). The whole trajectory is simulated first so that the tracking
camera can be fitted to it (see ``sim.camera``); then every frame is rendered.

Rendering: one GL context per process and image size, one ``MjrContext`` per episode (the model
changes), an ``MjvScene`` and a free ``MjvCamera`` updated per frame. ``quality="fast"`` turns
shadows, reflections, the skybox and multisampling off and uses coarser meshes for capsules
(several times faster on a CPU); ``"full"`` keeps
dm_control's default look. Both keep the floor as background, unless the dataset removes it
(``-nobg``: every pixel off ``masks`` black).

Ground truth:
- ``masks``: a segmentation render (``mjRND_SEGMENT`` + ``mjRND_IDCOLOR``) of the same scene;
  pixels whose geom belongs to one of the object's bodies (floor, rails and other world geoms are
  background).
- ``visible[t, j]``: the joint projects inside the image, in front of the camera, and is not
  hidden by another part of the object: a ray (``mj_ray``, world/static geoms excluded) from the
  camera to the joint does not first hit a geom of an object body that is NOT attached to the joint
  before reaching it. Background at the joint's pixel does not hide it (thin limbs rasterise thin).

Determinism: every random draw comes from ``np.random.default_rng([seed, split_code, index,
crc32(dataset name)])`` in a fixed order, MuJoCo's physics is deterministic, and nothing depends
on the process or on earlier episodes, so equal arguments give byte-identical arrays.
"""
from __future__ import annotations

import os
import zlib

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "0")  # see sim/__init__.py

from importlib.metadata import version as _version  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from sim.bodies import Body, build_body  # noqa: E402
from sim.camera import fit_camera, project  # noqa: E402
from sim.datasets import SPLITS, DatasetSpec, parse_dataset  # noqa: E402

ACTION_REPEAT = 5  # control steps (frames) each random action is held for
QUALITIES = ("fast", "full")
_GL_CONTEXTS: dict[tuple[int, int], "mujoco.GLContext"] = {}  # one per process and image size


def _gl_context(width: int, height: int):
    ctx = _GL_CONTEXTS.get((width, height))
    if ctx is None:
        ctx = _GL_CONTEXTS[(width, height)] = mujoco.GLContext(width, height)
    ctx.make_current()
    return ctx


class FrameRenderer:
    """RGB + object mask of one model at ``size x size``, reusing GL state across frames."""

    def __init__(self, model: mujoco.MjModel, object_bodies: np.ndarray, size: int, quality: str):
        if quality not in QUALITIES:
            raise ValueError(f"unknown quality {quality!r}: choose from {', '.join(QUALITIES)}")
        # An offscreen buffer of exactly the image size; "fast" also drops multisampling (2x).
        model.vis.global_.offwidth = model.vis.global_.offheight = size
        if quality == "fast":
            model.vis.quality.offsamples = 0
            model.vis.quality.shadowsize = 0  # no shadow map to allocate: shadows are off
            # Coarser capsule/sphere meshes (default 28 x 16): llvmpipe's cost is mostly vertices,
            # and a limb a few pixels wide looks the same at 64x64. About 2x faster.
            model.vis.quality.numslices = 12
            model.vis.quality.numstacks = 6
        self.model, self.size = model, size
        _gl_context(size, size)
        self.con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.con)
        self.scene = mujoco.MjvScene(model, maxgeom=max(100, 4 * model.ngeom))
        self.option = mujoco.MjvOption()
        self.rect = mujoco.MjrRect(0, 0, size, size)
        if quality == "fast":
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                self.scene.flags[flag] = 0
        self.object_geom = np.isin(model.geom_bodyid, object_bodies)  # [ngeom] bool
        self._seg = np.empty((size, size, 3), np.uint8)

    def close(self) -> None:
        if self.con is not None:
            self.con.free()
            self.con = None

    def update(self, data: mujoco.MjData, cam: mujoco.MjvCamera) -> mujoco.MjvGLCamera:
        _gl_context(self.size, self.size)  # cheap; another renderer may have switched contexts
        mujoco.mjv_updateScene(self.model, data, self.option, None, cam,
                               mujoco.mjtCatBit.mjCAT_ALL, self.scene)
        # camera[0] and [1] are the two stereo eyes (+-ipd/2 sideways); without stereo mjr_render
        # draws from their average, so project with that (camera[0] alone is off by 0.034 m).
        return mujoco.mjv_averageCamera(self.scene.camera[0], self.scene.camera[1])

    def render(self, rgb_out: np.ndarray, mask_out: np.ndarray) -> None:
        """Fill ``rgb_out [H, W, 3]`` uint8 and ``mask_out [H, W]`` bool (both bottom row first,
        as OpenGL reads them; the caller flips the whole episode once)."""
        mujoco.mjr_render(self.rect, self.scene, self.con)
        mujoco.mjr_readPixels(rgb_out, None, self.rect, self.con)
        flags = self.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 1
        flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
        mujoco.mjr_render(self.rect, self.scene, self.con)
        mujoco.mjr_readPixels(self._seg, None, self.rect, self.con)
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 0
        flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 0
        # IDCOLOR encodes segid + 1 (0 = background) in RGB; segid indexes the scene's geoms.
        lut = np.zeros(self.scene.ngeom + 1, dtype=bool)
        for i in range(self.scene.ngeom):
            g = self.scene.geoms[i]
            if g.objtype == mujoco.mjtObj.mjOBJ_GEOM and self.object_geom[g.objid]:
                lut[g.segid + 1] = True
        seg = self._seg.astype(np.int64)
        segid = seg[..., 0] | (seg[..., 1] << 8) | (seg[..., 2] << 16)
        mask_out[:] = lut[np.minimum(segid, len(lut) - 1)] & (segid < len(lut))


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    return SPLITS.index(split)


def _simulate(body: Body, rng: np.random.Generator, frames: int):
    """Random policy rollout -> (qpos ``[T, nq]``, joints ``[T, J, 3]``, com ``[T, 3]``, warnings)."""
    model = body.model
    data = mujoco.MjData(model)
    body.reset(data, rng)
    mujoco.mj_forward(model, data)
    lo, hi = model.actuator_ctrlrange.T
    qpos = np.empty((frames, model.nq))
    joints = np.empty((frames, body.skeleton.n_joints, 3))
    com = np.empty((frames, 3))
    for t in range(frames):
        if t % ACTION_REPEAT == 0:
            data.ctrl[:] = rng.uniform(lo, hi)
        qpos[t] = data.qpos
        joints[t] = body.skeleton.positions(data)
        com[t] = data.subtree_com[body.root_body]
        mujoco.mj_step(model, data, nstep=body.substeps)
    warnings = int(sum(w.number for w in data.warning))
    return qpos, joints, com, warnings


def render_episode(dataset: str | DatasetSpec, split: str, seed: int, index: int, frames: int = 90,
                   size: int = 64, quality: str = "fast") -> dict:
    """Render one episode; see the module docstring and ``sim/__init__.py`` for the fields.

    Returns ``frames [T, H, W, 3]`` uint8, ``masks [T, H, W]`` bool, ``joints [T, J, 2]`` float32
    (pixels, x = column, y = row), ``visible [T, J]`` bool, ``adjacency [J, J]`` bool, ``meta``.
    """
    spec = parse_dataset(dataset)
    if quality not in QUALITIES:
        raise ValueError(f"unknown quality {quality!r}: choose from {', '.join(QUALITIES)}")
    rng = np.random.default_rng([int(seed), _split_code(split), int(index),
                                 zlib.crc32(spec.name.encode())])
    body_spec = spec.sample_body(rng, split)
    body = build_body(body_spec, rng, quality)
    model, skel = body.model, body.skeleton
    qpos, joints3d, com, warnings = _simulate(body, rng, frames)
    path = fit_camera(joints3d, rng, body.camera, float(model.vis.global_.fovy))

    J = skel.n_joints
    rgb = np.empty((frames, size, size, 3), np.uint8)
    masks = np.empty((frames, size, size), bool)
    joints = np.empty((frames, J, 2), np.float32)
    visible = np.empty((frames, J), bool)
    data = mujoco.MjData(model)
    cam = mujoco.MjvCamera()
    geom_body = model.geom_bodyid
    hit = np.zeros(1, np.int32)
    renderer = FrameRenderer(model, body.object_bodies, size, quality)
    try:
        for t in range(frames):
            data.qpos[:] = qpos[t]
            mujoco.mj_kinematics(model, data)
            mujoco.mj_comPos(model, data)
            mujoco.mj_camlight(model, data)
            path.apply(cam, t)
            glcam = renderer.update(data, cam)
            renderer.render(rgb[t], masks[t])
            pts = skel.positions(data)
            pix, depth = project(pts, glcam, size, size)
            joints[t] = pix
            eye = np.array(glcam.pos, dtype=np.float64)
            inside = (depth > 0) & np.all((pix >= -0.5) & (pix < size - 0.5), axis=1)
            for j in range(J):
                if not inside[j]:
                    visible[t, j] = False
                    continue
                x = mujoco.mj_ray(model, data, eye, pts[j] - eye, None, 0, -1, hit)
                occluded = x >= 0 and x < 1.0 - 1e-6 and geom_body[hit[0]] not in skel.attached[j]
                visible[t, j] = not occluded
    finally:
        renderer.close()
    # OpenGL reads bottom row first: flip once for the whole episode.
    rgb = np.ascontiguousarray(rgb[:, ::-1])
    masks = np.ascontiguousarray(masks[:, ::-1])
    if not spec.background:
        rgb[~masks] = 0

    meta = {
        "dataset": spec.name, "split": split, "body": body_spec.name, "kind": body_spec.kind,
        **body_spec.count_meta(), "n_joints": J, "joint_names": list(skel.names),
        "seed": int(seed), "index": int(index), "frames": int(frames), "size": int(size),
        "quality": quality, "background": spec.background, "frame_dt": body.frame_dt,
        "action_repeat": ACTION_REPEAT,
        "camera": {**path.describe(), "fovy_deg": float(model.vis.global_.fovy)},
        "body_params": body.meta, "physics_warnings": warnings,
        "versions": {"mujoco": mujoco.__version__, "dm_control": _version("dm-control")},
    }
    return {"frames": rgb, "masks": masks, "joints": joints, "visible": visible,
            "adjacency": skel.adjacency(), "meta": meta}
