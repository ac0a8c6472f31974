"""Swimmer: a planar chain of K capsule rods in a viscous fluid (dm_control ``swimmer`` style).

dm_control's ``swimmer._make_model`` refuses fewer than 3 bodies, so the chain is generated here
for any K >= 2: the head rod carries the planar root (slide x, slide y, hinge z) and a nose, each
next rod hangs off the previous one's end by a z hinge with range +-360/K degrees (capped at 120).
The fluid drag (density 3000, as in dm_control) is integrated with ``implicitfast``: with explicit
Euler, random initial velocities made about 1 in 4 seven-rod episodes blow up; implicit, 0 in 40
at twice the time step (0.004 s).

Skeleton (J = K + 1): head end, the K-1 hinges between rods, tail end. Links: a chain.
"""
from __future__ import annotations

import mujoco
import numpy as np

from sim.bodies.base import (Body, CameraPrefs, Skeleton, bid, capsule_end, joint_anchor,
                             joint_attached, paint, random_rgb, subtree,
                             suite_assets)

_XML = """
<mujoco model="swimmer">
  <include file="./common/skybox.xml"/>
  <include file="./common/visual.xml"/>
  <include file="./common/materials.xml"/>
  <option timestep="0.004" density="3000" integrator="implicitfast">
    <flag contact="disable"/>
  </option>
  <default>
    <default class="swimmer">
      <joint type="hinge" axis="0 0 1" limited="true" armature="1e-6" solreflimit=".05 1" solimplimit="0 .8 .1"/>
      <geom type="capsule" size="{radius}" material="self" mass=".01"/>
    </default>
    <default class="free">
      <joint limited="false" stiffness="0" armature="0"/>
    </default>
    <motor gear="1e-3" ctrllimited="true" ctrlrange="-1 1"/>
  </default>
  <worldbody>
    <light name="light" directional="true" pos="0 0 5" dir="0 0 -1" diffuse=".6 .6 .6"/>
    <geom name="floor" type="plane" size="20 20 5" material="grid"/>
    <body name="rod_0" pos="0 0 .1" childclass="swimmer">
      <joint name="rootx" class="free" type="slide" axis="1 0 0"/>
      <joint name="rooty" class="free" type="slide" axis="0 1 0"/>
      <joint name="rootz" class="free" type="hinge" axis="0 0 1"/>
      <geom name="rod_0" fromto="0 0 0 0 {length} 0"/>
      <geom name="nose" type="sphere" size="{nose}" mass="0"/>
{rods}
    </body>
  </worldbody>
  <actuator>
{motors}
  </actuator>
</mujoco>
"""


def make_model(n_links: int, rng: np.random.Generator,
               quality: str = "fast") -> tuple[str, dict, dict]:
    length = rng.uniform(0.08, 0.12)
    radius = length * rng.uniform(0.15, 0.2)
    limit = min(360.0 / n_links, 120.0)
    rods, close, motors = [], [], []
    for i in range(1, n_links):
        indent = "      " + "  " * (i - 1)
        rods.append(f'{indent}<body name="rod_{i}" pos="0 {length} 0">\n'
                    f'{indent}  <joint name="joint_{i}" range="{-limit} {limit}"/>\n'
                    f'{indent}  <geom name="rod_{i}" fromto="0 0 0 0 {length} 0"/>')
        close.append(f"{indent}</body>")
        motors.append(f'    <motor name="motor_{i}" joint="joint_{i}"/>')
    xml = _XML.format(length=length, radius=radius, nose=radius * 1.3,
                      rods="\n".join(rods + close[::-1]), motors="\n".join(motors))
    return xml, suite_assets(quality), dict(rod_length=length, rod_radius=radius)


def skeleton(model: mujoco.MjModel, n_links: int) -> Skeleton:
    head = bid(model, "rod_0")
    names, anchors, attached = ["head"], [[(head, np.zeros(3))]], [frozenset({head})]
    for i in range(1, n_links):
        names.append(f"joint_{i}")
        anchors.append([joint_anchor(model, f"joint_{i}")])
        attached.append(joint_attached(model, f"joint_{i}"))
    tail = capsule_end(model, f"rod_{n_links - 1}")
    names.append("tail")
    anchors.append([tail])
    attached.append(frozenset({tail[0]}))
    return Skeleton(names, anchors, attached, [(i, i + 1) for i in range(n_links)])


def build(n_links: int, rng: np.random.Generator, quality: str = "fast") -> Body:
    xml, assets, params = make_model(n_links, rng, quality)
    model = mujoco.MjModel.from_xml_string(xml, assets)
    head = bid(model, "rod_0")
    bodies = subtree(model, head)
    paint(model, bodies, random_rgb(rng))

    def reset(data: mujoco.MjData, rng: np.random.Generator) -> None:
        data.qpos[2] = rng.uniform(-np.pi, np.pi)  # heading
        data.qvel[2] = rng.normal(0.0, 3.0)
        for j in range(3, model.njnt):
            lo, hi = model.jnt_range[j]
            data.qpos[model.jnt_qposadr[j]] = rng.uniform(lo, hi)
            data.qvel[model.jnt_dofadr[j]] = rng.normal(0.0, 3.0)

    return Body("swimmer", model, skeleton(model, n_links), bodies, head, reset, frame_dt=0.04,
                camera=CameraPrefs(azimuth=(0.0, 180.0), elevation=(-85.0, -50.0), orbit=(0.5, 2.5)),
                meta={"n_links": n_links, **{k: round(float(v), 4) for k, v in params.items()}})
