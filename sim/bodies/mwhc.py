"""Walker, hopper, cheetah and manipulator from dm_control's suite XML, in ZERO gravity.

Zero gravity (the paper's M+W+H+C dataset) means these bodies float, tumble and are as likely to be
upside down as upright: each starts lifted 3 m above the floor, at a random root angle and with a
random spin. The XML is edited with lxml as dm_control's ``manipulator.make_model`` does: the
floor is widened (a background in every view); the manipulator loses its props (ball, peg, cup,
slot, targets), walls, backdrop and static base, and its radii are scaled x1.6 so its fingers
still cover pixels at 64x64.

Skeletons (J per kind; links in brackets):
- walker (8): neck (torso top), hip (the two hips merged into their midpoint), knee_r/l,
  ankle_r/l, toe_r/l (foot ends)   [neck-hip, hip-knee-ankle-toe for each leg]
- hopper (7): neck (torso top), waist, hip, knee, ankle, toe, heel (the foot's two ends)
  [chain neck..ankle, ankle-toe, ankle-heel]
- cheetah (9): head (head tip), fhip, bhip (torso joints), bknee, bankle, btoe, fknee, fankle,
  ftoe   [head-fhip-bhip along the spine, each hip -> knee -> ankle -> toe]
- manipulator (8): root, shoulder, elbow, wrist, thumb, finger, thumbtip, fingertip
  [chain root..wrist, wrist-thumb-thumbtip, wrist-finger-fingertip]; the fingertip joints, at the
  tip spheres' centres, stand for the tips (terminal ends).
"""
from __future__ import annotations

import mujoco
import numpy as np
from dm_control.suite import common
from lxml import etree

from sim.bodies.base import (Body, CameraPrefs, Skeleton, bid, capsule_end, joint_anchor,
                             joint_attached, paint, part_rgbs, random_rgb, randomise_hinges,
                             subtree, suite_assets)

KINDS = ("walker", "hopper", "cheetah", "manipulator")
LIFT = 3.0  # metres above the floor at the start
_ROOT = {"walker": "torso", "hopper": "torso", "cheetah": "torso", "manipulator": "upper_arm"}
_MANIPULATOR_REMOVE = {"body": ("ball", "peg", "slot", "cup", "target_ball", "target_peg"),
                       "geom": ("wall1", "wall2", "background", "arm_root"),
                       "texture": ("background",), "material": ("background",)}


def make_model(kind: str, quality: str = "fast") -> tuple[bytes, dict]:
    """The suite's XML for ``kind`` edited for zero gravity (see module docstring)."""
    xml = common.read_model(f"{kind}.xml")
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    option = root.find("option")
    if option is None:
        option = etree.SubElement(root, "option")
    option.set("gravity", "0 0 0")
    if kind == "manipulator":
        option.set("timestep", "0.002")  # no contacts left to resolve finely; 0.001 is 2x slower
        for tag, names in _MANIPULATOR_REMOVE.items():
            for el in [el for el in root.iter(tag) if el.get("name") in names]:
                el.getparent().remove(el)
        for el in root.iter("geom"):  # thicker arm and hand (explicit sizes and class defaults)
            in_arm = any(a.get("name") == "upper_arm" for a in el.iterancestors("body"))
            in_default = any(a.tag == "default" for a in el.iterancestors())
            if (in_arm or in_default) and el.get("size"):
                size = [float(s) for s in el.get("size").split()]
                size[0] *= 1.6
                el.set("size", " ".join(map(str, size)))
    for el in root.find("worldbody").iter("geom"):
        if el.get("type") == "plane":  # the floor: wide, at z=0, a background in every view
            el.set("pos", "0 0 0")
            el.set("size", "50 50 5")  # 3rd = render grid spacing: 0.2 would draw ~10^5 quads
            el.attrib.pop("zaxis", None)
    body = next(el for el in root.find("worldbody") if el.tag == "body" and el.get("name") == _ROOT[kind])
    x, y, z = (float(v) for v in body.get("pos").split())
    body.set("pos", f"{x} {y} {z + LIFT}")
    return etree.tostring(root), suite_assets(quality)


def skeleton(model: mujoco.MjModel, kind: str) -> Skeleton:
    pts: dict[str, tuple[list, frozenset]] = {}

    def joint(name, label=None):
        pts[label or name] = ([joint_anchor(model, name)], joint_attached(model, name))

    def end(label, geom, away_from=(0.0, 0.0, 0.0)):
        a = capsule_end(model, geom, away_from)
        pts[label] = ([a], frozenset({a[0]}))

    if kind == "walker":
        end("neck", "torso", joint_anchor(model, "right_hip")[1])
        pts["hip"] = ([joint_anchor(model, "right_hip"), joint_anchor(model, "left_hip")],
                      joint_attached(model, "right_hip") | joint_attached(model, "left_hip"))
        for s in ("right", "left"):
            joint(f"{s}_knee", f"knee_{s[0]}")
            joint(f"{s}_ankle", f"ankle_{s[0]}")
            end(f"toe_{s[0]}", f"{s}_foot", joint_anchor(model, f"{s}_ankle")[1])
        edges = [("neck", "hip")] + [e for s in "rl" for e in
                                     (("hip", f"knee_{s}"), (f"knee_{s}", f"ankle_{s}"), (f"ankle_{s}", f"toe_{s}"))]
    elif kind == "hopper":
        end("neck", "torso", joint_anchor(model, "waist")[1])
        for n in ("waist", "hip", "knee", "ankle"):
            joint(n)
        end("toe", "foot")
        end("heel", "foot", pts["toe"][0][0][1])
        edges = [("neck", "waist"), ("waist", "hip"), ("hip", "knee"), ("knee", "ankle"),
                 ("ankle", "toe"), ("ankle", "heel")]
    elif kind == "cheetah":
        end("head", "head", joint_anchor(model, "fthigh")[1])
        joint("fthigh", "fhip")
        joint("bthigh", "bhip")
        for s in "bf":
            joint(f"{s}shin", f"{s}knee")
            joint(f"{s}foot", f"{s}ankle")
            end(f"{s}toe", f"{s}foot")
        edges = [("head", "fhip"), ("fhip", "bhip")] + [e for s in "bf" for e in (
            (f"{s}hip", f"{s}knee"), (f"{s}knee", f"{s}ankle"), (f"{s}ankle", f"{s}toe"))]
    elif kind == "manipulator":
        for n, label in (("arm_root", "root"), ("arm_shoulder", "shoulder"), ("arm_elbow", "elbow"),
                         ("arm_wrist", "wrist"), ("thumb", None), ("finger", None),
                         ("thumbtip", None), ("fingertip", None)):
            joint(n, label)
        edges = [("root", "shoulder"), ("shoulder", "elbow"), ("elbow", "wrist"), ("wrist", "thumb"),
                 ("wrist", "finger"), ("thumb", "thumbtip"), ("finger", "fingertip")]
    else:
        raise ValueError(f"unknown body kind {kind!r}")
    names = list(pts)
    index = {n: i for i, n in enumerate(names)}
    return Skeleton(names, [pts[n][0] for n in names], [pts[n][1] for n in names],
                    [(index[a], index[b]) for a, b in edges])


def build(kind: str, rng: np.random.Generator, quality: str = "fast", parts: bool = False) -> Body:
    """The body of ``kind``: one random colour, slightly varied per part, or with ``parts`` a fixed
    colour per part type (``part_rgbs``: left and right twins alike)."""
    xml, assets = make_model(kind, quality)
    model = mujoco.MjModel.from_xml_string(xml.decode(), assets)
    root = bid(model, _ROOT[kind])
    bodies = subtree(model, root)
    if kind == "manipulator":  # the pinch-site body has no geoms; keep only bodies with geoms
        bodies = np.array([b for b in bodies if model.body_geomnum[b] > 0])
    if parts:
        for b, rgb in zip(bodies, part_rgbs(rng, [model.body(b).name for b in bodies])):
            paint(model, [b], rgb)
    else:
        rgb = np.asarray(random_rgb(rng))
        for b in bodies:
            paint(model, [b], np.clip(rgb + rng.uniform(-0.08, 0.08, 3), 0, 1))
    planar = kind != "manipulator"
    roots = ("rootx", "rootz", "rooty") if planar else ()

    def reset(data: mujoco.MjData, rng: np.random.Generator) -> None:
        randomise_hinges(model, data, rng, [model.joint(j).name for j in range(model.njnt)
                                            if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE
                                            and model.joint(j).name not in roots], vel_std=2.0)
        if planar:  # random root angle (upside down as likely as upright) and spin
            spin = rng.choice([-1.0, 1.0]) * rng.uniform(1.5, 3.5)
            for name, q, v in (("rooty", rng.uniform(-np.pi, np.pi), spin),
                               ("rootx", 0.0, rng.normal(0, 0.2)), ("rootz", 0.0, rng.normal(0, 0.2))):
                j = model.joint(name).id
                data.qpos[model.jnt_qposadr[j]] = q
                data.qvel[model.jnt_dofadr[j]] = v
        else:
            j = model.joint("arm_root").id
            data.qvel[model.jnt_dofadr[j]] = rng.choice([-1.0, 1.0]) * rng.uniform(1.5, 3.5)

    return Body(kind, model, skeleton(model, kind), bodies, root, reset, frame_dt=0.04,
                camera=CameraPrefs(azimuth=(90.0, 30.0), elevation=(-40.0, -10.0), orbit=(0.0, 0.4),
                                   mirror=True),
                meta={"zero_gravity": True})
