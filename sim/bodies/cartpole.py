"""Cartpole with K poles in a chain (dm_control ``cartpole.xml`` with ``_make_model(n_poles)``
style), in gravity, poles started at random angles so they swing through full turns.

The pole length shrinks with K (total height ~1.6-3 m) and the radius is thicker than
dm_control's so that every pole still covers pixels at 64x64.

Skeleton (J = K + 1): pivot (cart centre = hinge_1, the cart box and pole_1 meet there), the
hinges hinge_2..hinge_K, and the tip of the last pole. Links: a chain.
"""
from __future__ import annotations

import colorsys

import mujoco
import numpy as np

from sim.bodies.base import (Body, CameraPrefs, Skeleton, bid, capsule_end, joint_anchor,
                             joint_attached, paint, random_rgb, subtree,
                             suite_assets)

_XML = """
<mujoco model="cart-k-pole">
  <include file="./common/skybox.xml"/>
  <include file="./common/visual.xml"/>
  <include file="./common/materials.xml"/>
  <option timestep="0.01" integrator="RK4">
    <flag contact="disable" energy="enable"/>
  </option>
  <default>
    <default class="pole">
      <joint type="hinge" axis="0 1 0" damping="2e-6"/>
      <geom type="capsule" fromto="0 0 0 0 0 {length}" size="{radius}" material="self" mass=".1"/>
    </default>
  </default>
  <worldbody>
    <light name="light" pos="0 0 {light}"/>
    <geom name="floor" pos="0 0 -.05" size="50 50 5" type="plane" material="grid"/>
    <geom name="rail1" type="capsule" pos="0  .07 {z}" zaxis="1 0 0" size="0.02 2" material="decoration"/>
    <geom name="rail2" type="capsule" pos="0 -.07 {z}" zaxis="1 0 0" size="0.02 2" material="decoration"/>
    <body name="cart" pos="0 0 {z}">
      <joint name="slider" type="slide" limited="true" axis="1 0 0" range="-1.8 1.8" solreflimit=".08 1" damping="5e-4"/>
      <geom name="cart" type="box" size="0.2 0.15 0.1" material="self" mass="1"/>
{poles}
    </body>
  </worldbody>
  <actuator>
    <motor name="slide" joint="slider" gear="10" ctrllimited="true" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""


def make_model(n_poles: int, rng: np.random.Generator,
               quality: str = "fast", bands: int = 0) -> tuple[str, dict, dict]:
    """MJCF of the chain; with ``bands`` > 0 each pole also holds that many massless cylinders
    (``pole_i_band_j``, j = 0 at its hinge), end to end along it and a hair wider, which cover
    its side so that they can be painted apart."""
    length = rng.uniform(0.85, 1.15) * 1.6 / (1.0 + 0.4 * (n_poles - 1))
    radius = rng.uniform(0.055, 0.07)
    poles, close = [], []
    for i in range(1, n_poles + 1):
        pos = "" if i == 1 else f' pos="0 0 {length}"'
        indent = "      " + "  " * (i - 1)
        geoms = [f'{indent}  <geom name="pole_{i}"/>']
        for j in range(bands):
            a, b = length * j / bands, length * (j + 1) / bands
            geoms.append(f'{indent}  <geom name="pole_{i}_band_{j}" type="cylinder" '
                         f'fromto="0 0 {a} 0 0 {b}" size="{radius * 1.04}" mass="0" '
                         f'contype="0" conaffinity="0"/>')
        poles.append(f'{indent}<body name="pole_{i}" childclass="pole"{pos}>\n'
                     f'{indent}  <joint name="hinge_{i}"/>\n' + "\n".join(geoms))
        close.append(f"{indent}</body>")
    z = n_poles * length + 0.4  # hanging poles stay above the floor
    xml = _XML.format(length=length, radius=radius, z=z, light=z + 5,
                      poles="\n".join(poles + close[::-1]))
    return xml, suite_assets(quality), dict(pole_length=length, pole_radius=radius)


def skeleton(model: mujoco.MjModel, n_poles: int) -> Skeleton:
    names = [f"hinge_{i}" for i in range(1, n_poles + 1)]
    anchors = [[joint_anchor(model, n)] for n in names]
    attached = [joint_attached(model, n) for n in names]
    tip = capsule_end(model, f"pole_{n_poles}")
    names.append("tip")
    anchors.append([tip])
    attached.append(frozenset({tip[0]}))
    return Skeleton(names, anchors, attached, [(i, i + 1) for i in range(n_poles)])


# ``parts``: hue of the cart and of pole i (fixed, so pole i looks alike in every body): nine
# hues 40 degrees apart (cart + up to 8 poles), in an order that puts 160 degrees between
# neighbours, so that every hinge joins two clearly different colours.
_PART_HUES = tuple((4 * i / 9) % 1.0 for i in range(9))
# ``bands``: how many bands a pole is painted in along its length, and their brightness (HSV
# value), from the band at the pole's hinge (bright) to the one at its far end (dark), so that
# every third of a pole looks different from the others.
BANDS = 3
_BAND_VALUES = (0.95, 0.75, 0.55)


def build(n_poles: int, rng: np.random.Generator, quality: str = "fast",
          parts: bool = False, bands: bool = False) -> Body:
    """A cartpole with ``n_poles`` poles: a random cart colour and one random colour for the
    poles (slightly varied per pole), or with ``parts`` the cart and each pole its own fixed hue
    (``_PART_HUES``; saturation and value jittered a little). ``bands`` (implies ``parts``):
    each pole also in ``BANDS`` bands of its hue along its length, bright at its hinge and dark
    at its far end (``_BAND_VALUES``), so that a place along a pole has its own look."""
    xml, assets, params = make_model(n_poles, rng, quality, BANDS if bands else 0)
    model = mujoco.MjModel.from_xml_string(xml, assets)
    cart = bid(model, "cart")
    poles = [bid(model, f"pole_{i}") for i in range(1, n_poles + 1)]
    if parts or bands:
        for i, (hue, b) in enumerate(zip(_PART_HUES, [cart, *poles])):
            sat = rng.uniform(0.75, 0.95)
            paint(model, [b], colorsys.hsv_to_rgb(hue, sat, rng.uniform(0.8, 0.95)))
            for j in range(BANDS if bands and i > 0 else 0):
                g = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, f"pole_{i}_band_{j}")
                model.geom_rgba[g, :3] = colorsys.hsv_to_rgb(hue, sat, _BAND_VALUES[j])
    else:
        paint(model, [cart], random_rgb(rng))
        rgb = random_rgb(rng)
        for p in poles:  # one colour for the poles, slightly varied per pole
            paint(model, [p], np.clip(np.asarray(rgb) + rng.uniform(-0.1, 0.1, 3), 0, 1))

    def reset(data: mujoco.MjData, rng: np.random.Generator) -> None:
        data.qpos[0] = rng.uniform(-1.0, 1.0)
        data.qvel[0] = rng.normal(0.0, 0.5)
        data.qpos[1:] = rng.uniform(-np.pi, np.pi, n_poles)
        data.qvel[1:] = rng.normal(0.0, 2.0, n_poles)

    return Body("cartpole", model, skeleton(model, n_poles), subtree(model, cart), cart, reset,
                frame_dt=0.04, camera=CameraPrefs(azimuth=(90.0, 35.0), elevation=(-30.0, 0.0),
                                                  orbit=(0.0, 0.4), mirror=True),
                meta={"n_poles": n_poles, **{k: round(float(v), 4) for k, v in params.items()}})
