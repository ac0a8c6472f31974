"""Tracking camera and the exact pinhole projection MuJoCo's renderer uses.

The camera is a free ``MjvCamera`` (lookat, distance, azimuth, elevation). Per episode it looks at
the (smoothed) centre of the joints' bounding box, from a distance fitted (smoothly, per frame)
so that the sphere enclosing every joint stays inside a random fraction of the field of view, and it
orbits (azimuth changes by a random rate per frame) so that limbs swap image regions.

Projection follows ``mjr_render``: after ``mjv_updateScene`` the average of the scene's two
``MjvGLCamera`` (stereo eyes; ``mjv_averageCamera``) holds the eye position, forward and up axes and an OpenGL frustum (``glFrustum(center - halfwidth,
center + halfwidth, bottom, top, near, far)`` with ``halfwidth`` from the viewport's aspect ratio
when ``frustum_width`` is 0). Pixel centres are at integer coordinates: column
``x = (x_ndc + 1) * W / 2 - 0.5``, row ``y = (1 - y_ndc) * H / 2 - 0.5`` (row 0 at the top of
the image as returned by the renderer).
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from sim.bodies.base import CameraPrefs


@dataclass
class CameraPath:
    """Per-frame free-camera parameters: lookat ``[T, 3]`` (m), distance ``[T]`` (m), azimuth and
    elevation ``[T]`` (degrees)."""

    lookat: np.ndarray
    distance: np.ndarray
    azimuth: np.ndarray
    elevation: np.ndarray
    fill: float

    def describe(self) -> dict:
        return {"type": "free, tracking the centre of the joints' bounding box",
                "distance_m": [round(float(self.distance.min()), 4), round(float(self.distance.max()), 4)],
                "azimuth_deg": [round(float(self.azimuth[0]), 3), round(float(self.azimuth[-1]), 3)],
                "elevation_deg": round(float(self.elevation[0]), 3), "fill": round(self.fill, 4)}

    def apply(self, cam: mujoco.MjvCamera, t: int) -> None:
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = self.lookat[t]
        cam.distance = self.distance[t]
        cam.azimuth = self.azimuth[t]
        cam.elevation = self.elevation[t]


def smooth(x: np.ndarray, half: int = 4) -> np.ndarray:
    """Moving average over ``2 * half + 1`` frames along axis 0 (edge-padded): no camera jitter."""
    pad = [(half, half)] + [(0, 0)] * (x.ndim - 1)
    xp = np.pad(x, pad, mode="edge")
    c = np.cumsum(np.concatenate([np.zeros_like(xp[:1]), xp]), axis=0)
    return (c[2 * half + 1:] - c[:-2 * half - 1]) / (2 * half + 1)


def running_max(x: np.ndarray, half: int) -> np.ndarray:
    """``out[t] = max(x[t - half : t + half + 1])`` for ``x [T]``."""
    xp = np.pad(x, half, mode="edge")
    return np.lib.stride_tricks.sliding_window_view(xp, 2 * half + 1).max(-1)


def fit_camera(joints3d: np.ndarray, rng: np.random.Generator, prefs: CameraPrefs,
               fovy_deg: float, margin: float = 0.08, half: int = 4) -> CameraPath:
    """joints3d ``[T, J, 3]`` (m) -> a ``CameraPath`` keeping every joint in view.

    Looks at the smoothed centre of the joints' bounding box; the distance makes the sphere that
    encloses the joints span ``fill`` (random) of the field of view. The sphere's radius is a
    running max over ``+-2*half`` frames, then averaged over ``+-half`` frames: every average
    contains frame t's own radius, so it never falls below it (the body stays in view) while the
    zoom changes smoothly.
    """
    lookat = smooth(0.5 * (joints3d.min(1) + joints3d.max(1)), half)
    radius = np.linalg.norm(joints3d - lookat[:, None], axis=-1).max(1) + margin  # [T]
    radius = smooth(running_max(radius, 2 * half), half)
    fill = float(rng.uniform(0.65, 0.9))
    distance = radius / np.sin(fill * np.deg2rad(fovy_deg) / 2)
    centre, spread = prefs.azimuth
    az0 = centre + rng.uniform(-spread, spread)
    if prefs.mirror and rng.uniform() < 0.5:
        az0 += 180.0
    rate = rng.choice([-1.0, 1.0]) * rng.uniform(*prefs.orbit)
    T = len(joints3d)
    azimuth = az0 + rate * np.arange(T)
    elevation = np.full(T, rng.uniform(*prefs.elevation))
    return CameraPath(lookat, distance, azimuth, elevation, fill)


def project(points: np.ndarray, glcam: mujoco.MjvGLCamera, width: int, height: int):
    """points ``[N, 3]`` world -> (pixels ``[N, 2]`` (x col, y row), depth ``[N]`` along forward)."""
    pos, fwd, up = np.asarray(glcam.pos), np.asarray(glcam.forward), np.asarray(glcam.up)
    right = np.cross(fwd, up)
    v = points - pos
    depth = v @ fwd
    near, top, bottom = glcam.frustum_near, glcam.frustum_top, glcam.frustum_bottom
    halfwidth = glcam.frustum_width or 0.5 * width / height * (top - bottom)
    xs = near * (v @ right) / depth
    ys = near * (v @ up) / depth
    x_ndc = (xs - glcam.frustum_center) / halfwidth
    y_ndc = 2.0 * (ys - bottom) / (top - bottom) - 1.0
    pix = np.stack([(x_ndc + 1.0) * width / 2 - 0.5, (1.0 - y_ndc) * height / 2 - 0.5], -1)
    return pix, depth
