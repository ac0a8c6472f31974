"""sim/: real MuJoCo renders (EGL) of every body kind, checked against the episode contract.

Expected joint counts J per body kind (sim.bodies.n_joints): spider with K legs 3K + 1 (centre,
K hips, K knees, K feet); cartpole with K poles K + 1 (pivot, K - 1 hinges, tip); swimmer with K
rods K + 1 (head, K - 1 hinges, tail); walker 8, hopper 7, cheetah 9, manipulator 8.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import deque

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sim import DATASET_NAMES, parse_dataset, render_episode  # noqa: E402
from sim.datasets import DatasetSpec  # noqa: E402
from sim.bodies import n_joints  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, SIZE = 12, 64

# (dataset name, kind, K, expected J)
BODIES = ([(f"spider:{k}", "spider", k, 3 * k + 1) for k in (3, 4, 5, 8)]
          + [(f"cartpole:{k}", "cartpole", k, k + 1) for k in range(1, 6)]
          + [(f"swimmer:{k}", "swimmer", k, k + 1) for k in range(2, 8)]
          + [(name, name, None, j) for name, j in
             (("walker", 8), ("hopper", 7), ("cheetah", 9), ("manipulator", 8))])
COUNT_KEY = {"spider": "n_legs", "cartpole": "n_poles", "swimmer": "n_links"}


def _digest(ep: dict) -> str:
    h = hashlib.sha256()
    for key in ("frames", "masks", "joints", "visible", "adjacency"):
        h.update(np.ascontiguousarray(ep[key]).tobytes())
    return h.hexdigest()


def _on_own_mask(ep: dict) -> np.ndarray:
    """``[T, J]``: the joint's rounded pixel has a mask pixel in its 3x3 neighbourhood."""
    masks = np.pad(ep["masks"], ((0, 0), (1, 1), (1, 1)))
    t_idx = np.arange(masks.shape[0])[:, None]
    r = np.rint(ep["joints"]).astype(int) + 1
    hi = masks.shape[1] - 1
    ok = np.zeros(ep["visible"].shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ok |= masks[t_idx, np.clip(r[..., 1] + dy, 0, hi), np.clip(r[..., 0] + dx, 0, hi)]
    return ok


def _is_tree(adj: np.ndarray) -> bool:
    J = len(adj)
    if adj.sum() // 2 != J - 1:
        return False
    seen, todo = {0}, deque([0])
    while todo:
        for j in np.nonzero(adj[todo.popleft()])[0]:
            if j not in seen:
                seen.add(int(j))
                todo.append(int(j))
    return len(seen) == J


@pytest.fixture(scope="module")
def episodes():
    """Three short episodes per body kind, rendered once for the module."""
    return {name: [render_episode(name, "train", seed=0, index=i, frames=T, size=SIZE) for i in range(3)]
            for name, *_ in BODIES}


@pytest.mark.parametrize("name,kind,k,J", BODIES, ids=[b[0] for b in BODIES])
def test_fields_shapes_and_skeleton(episodes, name, kind, k, J):
    assert n_joints(kind, k) == J
    for ep in episodes[name]:
        assert ep["frames"].shape == (T, SIZE, SIZE, 3) and ep["frames"].dtype == np.uint8
        assert ep["masks"].shape == (T, SIZE, SIZE) and ep["masks"].dtype == bool
        assert ep["joints"].shape == (T, J, 2) and ep["joints"].dtype == np.float32
        assert ep["visible"].shape == (T, J) and ep["visible"].dtype == bool
        assert ep["adjacency"].shape == (J, J) and ep["adjacency"].dtype == bool
        assert np.isfinite(ep["joints"]).all()
        adj = ep["adjacency"]
        assert (adj == adj.T).all() and not adj.diagonal().any()
        assert _is_tree(adj)
        meta = ep["meta"]
        json.dumps(meta)  # JSON-serialisable
        assert meta["kind"] == kind and meta["n_joints"] == J and len(meta["joint_names"]) == J
        if kind in COUNT_KEY:
            assert meta[COUNT_KEY[kind]] == k
        for key in ("dataset", "split", "seed", "index", "frames", "size", "quality", "camera"):
            assert key in meta
        assert set(meta["versions"]) == {"mujoco", "dm_control"}
        # the tracking camera keeps every joint in the image, and the object is a good part of it
        assert ((ep["joints"] >= -0.5) & (ep["joints"] < SIZE - 0.5)).all()
        frac = ep["masks"].mean(axis=(1, 2))
        assert (frac > 0.003).all() and (frac < 0.6).all()


@pytest.mark.parametrize("name,kind,k,J", BODIES, ids=[b[0] for b in BODIES])
def test_projection_lands_on_own_mask(episodes, name, kind, k, J):
    """Projected GT joints that are visible lie on the object's mask (3x3), and most are visible
    (visibility comes from ray casts, not from the mask, so this is not tautological)."""
    vis = np.concatenate([ep["visible"].ravel() for ep in episodes[name]])
    on = np.concatenate([_on_own_mask(ep).ravel() for ep in episodes[name]])
    assert vis.mean() >= 0.6, f"only {vis.mean():.0%} of joints visible"
    assert on[vis].mean() >= 0.95, f"only {on[vis].mean():.1%} of visible joints on the mask"


def test_frames_look_rendered(episodes):
    ep = episodes["spider:5"][0]
    frames, masks = ep["frames"].astype(float), ep["masks"]
    assert frames.std() > 10  # not blank
    # the object's pixels differ from the background's (bright random colours, dark blue floor)
    assert np.abs(frames[masks].mean(0) - frames[~masks].mean(0)).max() > 20


def test_deterministic_same_args_and_different_index():
    a = render_episode("mwhc", "test", seed=3, index=7, frames=6, size=48)
    render_episode("spiders", "train", seed=1, index=0, frames=4, size=48)  # other work between
    b = render_episode("mwhc", "test", seed=3, index=7, frames=6, size=48)
    assert _digest(a) == _digest(b) and a["meta"] == b["meta"]
    c = render_episode("mwhc", "test", seed=3, index=8, frames=6, size=48)
    assert not np.array_equal(a["frames"], c["frames"])


def test_deterministic_across_processes():
    ep = render_episode("spiders", "train", seed=5, index=2, frames=5, size=40)
    code = ("import hashlib, numpy as np; from sim import render_episode; "
            "ep = render_episode('spiders', 'train', seed=5, index=2, frames=5, size=40); "
            "h = hashlib.sha256(); "
            "[h.update(np.ascontiguousarray(ep[k]).tobytes()) for k in "
            "('frames', 'masks', 'joints', 'visible', 'adjacency')]; print(h.hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "MUJOCO_GL": os.environ["MUJOCO_GL"]}, check=True)
    assert out.stdout.strip().splitlines()[-1] == _digest(ep)


def test_dataset_spec_accepts_str_or_spec():
    spec = parse_dataset("cartpoles")
    a = render_episode(spec, "train", seed=0, index=1, frames=3, size=32)
    b = render_episode("cartpoles", "train", seed=0, index=1, frames=3, size=32)
    assert _digest(a) == _digest(b)
    assert spec.to_json()["train"] == [f"cartpole:{k}" for k in range(1, 6)]


@pytest.mark.parametrize("bad", ["nope", "", "spider", "spider:0", "spider:x", "walker:3",
                                 "cartpole:9", "swimmer:1", "spiders:3", "spider:3-parts",
                                 "spiders-parts", "walker-part", "walker-nobg-nobg", "nope-nobg",
                                 "walker-nobg-parts", "-nobg", "swimmers-parts", "cartpoles-parts-parts",
                                 "cartpoles-nobg-parts", "walker-bands", "cartpoles-parts-bands",
                                 "cartpoles-bands-parts", "cartpoles-bands-bands", "cartpoles-nobg-bands"])
def test_unknown_dataset_raises(bad):
    with pytest.raises(ValueError, match="unknown dataset"):
        parse_dataset(bad)
    with pytest.raises(ValueError):
        render_episode(bad, "train", seed=0, index=0, frames=2, size=32)


def test_dataset_names_and_bodies():
    assert {"spiders", "spiders0shot", "cartpoles", "swimmers", "mwhc"} <= set(DATASET_NAMES)
    rng = np.random.default_rng(0)
    draws = {name: {parse_dataset(name).sample_body(rng, "train").name for _ in range(300)}
             for name in ("spiders", "cartpoles", "swimmers", "mwhc")}
    assert draws["spiders"] == {f"spider:{k}" for k in range(3, 9)}
    assert draws["cartpoles"] == {f"cartpole:{k}" for k in range(1, 6)}
    assert draws["swimmers"] == {f"swimmer:{k}" for k in range(2, 8)}
    assert draws["mwhc"] == {"walker", "hopper", "cheetah", "manipulator"}
    with pytest.raises(ValueError):
        render_episode("spiders", "val", seed=0, index=0, frames=2, size=32)


def test_part_colours_give_every_part_its_own_colour():
    from sim.bodies import build_body

    spec = parse_dataset("walker-parts").train[0]
    assert spec.name == "walker-parts" and spec.kind == "walker" and spec.parts

    def colours(name):
        body = build_body(parse_dataset(name).train[0], np.random.default_rng(3))
        m = body.model
        per_body = [m.geom_rgba[m.geom_bodyid == b][0, :3] for b in body.object_bodies]
        d = np.linalg.norm(np.array(per_body)[:, None] - np.array(per_body)[None], axis=-1)
        return len(per_body), d[np.triu_indices(len(per_body), 1)]

    n, d = colours("walker-parts")
    assert n == 7 and d.min() < 0.2 and np.sort(d)[3] > 0.3   # 3 left/right twins alike, the rest apart
    n, d = colours("walker")
    assert n == 7 and d.max() < 0.3               # one colour, varied by at most 0.08 per channel
    ep = render_episode("walker-parts", "test", seed=0, index=0, frames=2, size=32)
    assert ep["meta"]["body"] == "walker-parts" and np.asarray(ep["joints"]).shape[1] == 8


def test_cartpole_parts_colour_each_pole_alike_in_every_body():
    from sim.bodies import build_body

    spec = parse_dataset("cartpoles-parts")
    assert spec.name == "cartpoles-parts" and all(b.parts and b.kind == "cartpole" for b in spec.train)
    assert [b.name for b in spec.test] == [f"cartpole:{k}-parts" for k in range(1, 6)]
    assert parse_dataset("cartpole:3-parts").train[0].n == 3
    assert parse_dataset("cartpoles-parts-nobg").background is False
    assert all(b.parts for b in parse_dataset("mwhc-parts").train)

    def colours(name, seed):   # cart, pole_1, ... rgb
        body = build_body(parse_dataset(name).train[0], np.random.default_rng(seed))
        m = body.model
        return np.array([m.geom_rgba[m.geom_bodyid == b][0, :3] for b in body.object_bodies])

    five = colours("cartpole:5-parts", 0)
    d = np.linalg.norm(five[:, None] - five[None], axis=-1)[np.triu_indices(6, 1)]
    assert d.min() > 0.15                          # cart and every pole apart
    three = colours("cartpole:3-parts", 1)         # another body, another seed: same hues
    assert np.abs(three - five[:4]).max() < 0.25
    plain = colours("cartpole:5", 0)[1:]           # plain poles: one colour, varied a little
    assert np.linalg.norm(plain[:, None] - plain[None], axis=-1).max() < 0.4
    ep = render_episode("cartpole:2-parts", "test", seed=0, index=0, frames=2, size=32)
    assert ep["meta"]["body"] == "cartpole:2-parts" and np.asarray(ep["joints"]).shape[1] == 3


def test_cartpole_bands_paint_each_pole_bright_at_its_hinge_dark_at_its_end():
    import colorsys

    import mujoco

    from sim.bodies import build_body

    spec = parse_dataset("cartpoles-bands")
    assert spec.name == "cartpoles-bands" and [b.name for b in spec.test] == [
        f"cartpole:{k}-bands" for k in range(1, 6)]
    assert parse_dataset("cartpole:3-bands").train[0].n == 3
    assert parse_dataset("cartpoles-bands-nobg").background is False
    body = build_body(parse_dataset("cartpole:3-bands").train[0], np.random.default_rng(0))
    parts = build_body(parse_dataset("cartpole:3-parts").train[0], np.random.default_rng(0))
    m = body.model
    for i in range(1, 4):
        pole = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"pole_{i}")
        length = 2 * m.geom_size[pole, 1]
        bands = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"pole_{i}_band_{j}") for j in range(3)]
        assert min(bands) >= 0 and (m.geom_bodyid[bands] == m.geom_bodyid[pole]).all()
        # end to end from the hinge (z = 0) to the far end, covering the pole's side
        centres = m.geom_pos[bands, 2]
        assert np.allclose(centres, length * (np.arange(3) + 0.5) / 3, atol=1e-6)
        assert (m.geom_size[bands, 0] > m.geom_size[pole, 0]).all() and (m.body_mass[m.geom_bodyid[pole]] > 0)
        hsv = np.array([colorsys.rgb_to_hsv(*m.geom_rgba[g, :3]) for g in [pole, *bands]])
        assert np.allclose(hsv[:, 0], hsv[0, 0], atol=1e-3)          # the pole's hue throughout
        assert hsv[1, 2] - hsv[2, 2] > 0.15 and hsv[2, 2] - hsv[3, 2] > 0.15  # darker away from the hinge
    # the same body as -parts otherwise: geometry, part hues and the skeleton
    for g in ("cart", "pole_1", "pole_3"):
        a, b = (mujoco.mj_name2id(x.model, mujoco.mjtObj.mjOBJ_GEOM, g) for x in (body, parts))
        assert np.allclose(body.model.geom_rgba[a], parts.model.geom_rgba[b])
        assert np.allclose(body.model.geom_size[a], parts.model.geom_size[b])
    assert body.skeleton.edges == parts.skeleton.edges and body.skeleton.names == parts.skeleton.names
    ep = render_episode("cartpole:2-bands", "test", seed=0, index=0, frames=2, size=32)
    assert ep["meta"]["body"] == "cartpole:2-bands" and np.asarray(ep["joints"]).shape[1] == 3


def test_nobg_removes_the_background_and_nothing_else():
    spec = parse_dataset("cartpoles-nobg")
    assert spec.name == "cartpoles-nobg" and not spec.background and parse_dataset("cartpoles").background
    assert spec.train == parse_dataset("cartpoles").train and spec.to_json()["background"] is False
    ep = render_episode("walker-parts-nobg", "train", seed=0, index=0, frames=3, size=32)
    assert ep["meta"]["background"] is False and ep["meta"]["dataset"] == "walker-parts-nobg"
    # The episode's draw depends on the dataset's name: a spec named like the plain dataset but
    # without background gives the plain episode, so the two can be compared pixel for pixel.
    plain_spec = parse_dataset("walker-parts")
    plain = render_episode(plain_spec, "train", seed=0, index=0, frames=3, size=32)
    bare = render_episode(DatasetSpec(plain_spec.name, plain_spec.train, plain_spec.test,
                                      background=False), "train", seed=0, index=0, frames=3, size=32)
    for e in (ep, bare):
        frames, masks = np.asarray(e["frames"]), np.asarray(e["masks"])
        assert masks.any() and (~masks).any()
        assert frames[~masks].max() == 0 and frames[masks].max() > 100
    masks = np.asarray(plain["masks"])
    assert plain["meta"]["background"] is True and np.asarray(plain["frames"])[~masks].max() > 0
    # off the mask black, on it exactly the plain render: nothing else changes
    assert np.array_equal(bare["masks"], masks) and np.array_equal(bare["joints"], plain["joints"])
    assert np.array_equal(np.asarray(bare["frames"])[masks], np.asarray(plain["frames"])[masks])


def test_spiders0shot_splits():
    spec = parse_dataset("spiders0shot")
    rng = np.random.default_rng(1)
    train = {spec.sample_body(rng, "train").n for _ in range(300)}
    test = {spec.sample_body(rng, "test").n for _ in range(300)}
    assert train == {3, 6, 7, 8} and test == {4, 5}
    legs = {render_episode("spiders0shot", "test", seed=0, index=i, frames=2, size=32)["meta"]["n_legs"]
            for i in range(6)}
    assert legs <= {4, 5}
    legs = {render_episode("spiders0shot", "train", seed=0, index=i, frames=2, size=32)["meta"]["n_legs"]
            for i in range(6)}
    assert legs <= {3, 6, 7, 8}


@pytest.mark.parametrize("dataset", ["spiders", "cartpoles", "swimmers", "mwhc"])
def test_pose_varies_over_episode(dataset):
    """Joints move a lot (pixels, at 64x64) between the first and the 40th frame (1.6 s)."""
    disp = []
    for i in range(3):
        ep = render_episode(dataset, "train", seed=0, index=i, frames=40, size=SIZE)
        disp.append(np.linalg.norm(ep["joints"][-1] - ep["joints"][0], axis=-1).mean())
    assert np.mean(disp) > 6.0 and min(disp) > 3.0, disp


def test_full_quality_renders_same_scene():
    fast = render_episode("walker", "train", seed=0, index=4, frames=3, size=SIZE, quality="fast")
    full = render_episode("walker", "train", seed=0, index=4, frames=3, size=SIZE, quality="full")
    np.testing.assert_array_equal(fast["joints"], full["joints"])  # same body, pose and camera
    assert full["meta"]["quality"] == "full"
    assert (full["masks"] == fast["masks"]).mean() > 0.97  # coarser meshes in fast: edges differ
    assert _on_own_mask(full)[full["visible"]].mean() >= 0.95
    with pytest.raises(ValueError):
        render_episode("walker", "train", seed=0, index=4, frames=3, size=SIZE, quality="ultra")


def test_sim_imports_neither_torch_nor_ray():
    code = "import sys, sim; assert 'torch' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
