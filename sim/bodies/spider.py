"""Spider: a free spherical torso with K radial legs (thigh + shin), every limb its own colour.

dm_control has no K-legged spider, so the MJCF is generated here (ant-like). Each thigh carries
two hinges at the hip (yaw about the torso's z, pitch), each shin a knee hinge. The spider starts
in the air (0.6-1.6 m above its foot reach) with a uniformly random orientation and a random spin,
so it tumbles, lands and turns; gravity is on. Torso size, leg lengths and thickness are random;
legs collide with the floor but not with each other (time step 0.01 s: half the cost of 0.005,
no instability in 120 test episodes).

Skeleton (J = 3K + 1): the torso has K hips, so a centre node (torso centre) is added and linked
to every hip; each leg is hip -> knee -> foot (the shin's free end). Links: centre-hip_i,
hip_i-knee_i, knee_i-foot_i (3K edges).
"""
from __future__ import annotations

import mujoco
import numpy as np

from sim.bodies.base import (Body, CameraPrefs, Skeleton, bid, capsule_end, joint_anchor,
                             joint_attached, paint, random_rgb, subtree,
                             suite_assets)

_XML = """
<mujoco model="spider">
  <include file="./common/skybox.xml"/>
  <include file="./common/visual.xml"/>
  <include file="./common/materials.xml"/>
  <option timestep="0.01"/>
  <default>
    <joint type="hinge" damping="0.5" armature="0.02" limited="true"/>
    <geom type="capsule" contype="1" conaffinity="0" friction="1 .1 .1" density="300" material="self"/>
    <motor ctrllimited="true" ctrlrange="-1 1"/>
  </default>
  <worldbody>
    <light name="light" directional="true" pos="0 0 10" dir="0 0 -1" diffuse=".5 .5 .5"/>
    <geom name="floor" type="plane" size="50 50 5" material="grid" conaffinity="1" contype="1"/>
    <body name="torso" pos="0 0 {height}">
      <freejoint name="root"/>
      <geom name="torso" type="sphere" size="{r_torso}"/>
{legs}
    </body>
  </worldbody>
  <actuator>
{motors}
  </actuator>
</mujoco>
"""

_LEG = """      <body name="thigh_{i}" pos="{x} {y} 0" euler="0 0 {deg}">
        <joint name="hip_yaw_{i}" axis="0 0 1" range="-35 35"/>
        <joint name="hip_pitch_{i}" axis="0 -1 0" range="-50 50"/>
        <geom name="thigh_{i}" fromto="0 0 0 {tx} 0 {tz}" size="{r_leg}"/>
        <body name="shin_{i}" pos="{tx} 0 {tz}">
          <joint name="knee_{i}" axis="0 -1 0" range="-80 40"/>
          <geom name="shin_{i}" fromto="0 0 0 {sx} 0 {sz}" size="{r_shin}"/>
        </body>
      </body>"""

_MOTORS = """    <motor name="hip_yaw_{i}" joint="hip_yaw_{i}" gear="{g_hip}"/>
    <motor name="hip_pitch_{i}" joint="hip_pitch_{i}" gear="{g_hip}"/>
    <motor name="knee_{i}" joint="knee_{i}" gear="{g_knee}"/>"""


def make_model(n_legs: int, rng: np.random.Generator,
               quality: str = "fast") -> tuple[str, dict, dict]:
    """MJCF string, assets, and the sampled size parameters (metres)."""
    r_torso = rng.uniform(0.15, 0.25)
    l_thigh = rng.uniform(0.25, 0.4)
    l_shin = rng.uniform(0.35, 0.55)
    r_leg = rng.uniform(0.045, 0.06)
    lift, drop = np.deg2rad(25.0), np.deg2rad(55.0)  # thigh up-and-out, shin down-and-out
    offset = rng.uniform(0, 360)
    legs, motors = [], []
    for i in range(n_legs):
        deg = offset + 360.0 * i / n_legs + rng.uniform(-8, 8)
        a = np.deg2rad(deg)
        legs.append(_LEG.format(
            i=i, x=r_torso * np.cos(a), y=r_torso * np.sin(a), deg=deg,
            tx=l_thigh * np.cos(lift), tz=l_thigh * np.sin(lift),
            sx=l_shin * np.cos(drop), sz=-l_shin * np.sin(drop), r_leg=r_leg, r_shin=0.85 * r_leg))
        motors.append(_MOTORS.format(i=i, g_hip=25, g_knee=15))
    height = l_shin + rng.uniform(0.6, 1.6)  # dropped from the air: it falls, lands and tumbles
    xml = _XML.format(height=height, r_torso=r_torso, legs="\n".join(legs), motors="\n".join(motors))
    return xml, suite_assets(quality), dict(r_torso=r_torso, l_thigh=l_thigh, l_shin=l_shin, r_leg=r_leg)


def skeleton(model: mujoco.MjModel, n_legs: int) -> Skeleton:
    torso = bid(model, "torso")
    names, anchors, attached, edges = ["centre"], [[(torso, np.zeros(3))]], [frozenset({torso})], []
    for i in range(n_legs):
        hip, knee = joint_anchor(model, f"hip_yaw_{i}"), joint_anchor(model, f"knee_{i}")
        foot = capsule_end(model, f"shin_{i}")
        base = len(names)
        names += [f"hip_{i}", f"knee_{i}", f"foot_{i}"]
        anchors += [[hip], [knee], [foot]]
        attached += [joint_attached(model, f"hip_yaw_{i}"), joint_attached(model, f"knee_{i}"),
                     frozenset({foot[0]})]
        edges += [(0, base), (base, base + 1), (base + 1, base + 2)]
    return Skeleton(names, anchors, attached, edges)


def build(n_legs: int, rng: np.random.Generator, quality: str = "fast") -> Body:
    xml, assets, params = make_model(n_legs, rng, quality)
    model = mujoco.MjModel.from_xml_string(xml, assets)
    torso = bid(model, "torso")
    bodies = subtree(model, torso)
    paint(model, [torso], random_rgb(rng))
    for i in range(n_legs):  # every limb its own colour
        paint(model, [bid(model, f"thigh_{i}"), bid(model, f"shin_{i}")], random_rgb(rng))

    def reset(data: mujoco.MjData, rng: np.random.Generator) -> None:
        quat = rng.normal(size=4)  # uniform random orientation (any yaw and tilt)
        data.qpos[3:7] = quat / np.linalg.norm(quat)
        data.qvel[0:3] = rng.normal(0.0, 0.5, size=3)
        data.qvel[3:6] = rng.normal(0.0, 4.0, size=3)  # spin: it tumbles while falling
        for j in range(1, model.njnt):
            lo, hi = model.jnt_range[j]
            data.qpos[model.jnt_qposadr[j]] = rng.uniform(lo, hi)
            data.qvel[model.jnt_dofadr[j]] = rng.normal(0.0, 2.0)

    return Body("spider", model, skeleton(model, n_legs), bodies, torso, reset,
                frame_dt=0.04, camera=CameraPrefs(azimuth=(0.0, 180.0), elevation=(-70.0, -25.0),
                                                  orbit=(0.5, 2.5)),
                meta={"n_legs": n_legs, **{k: round(float(v), 4) for k, v in params.items()}})
