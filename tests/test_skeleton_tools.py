"""The skeleton model's research tools: oracle points, diagnostics, validation extras, and the
comparison against the untrained model and the best constant skeleton."""
import json
import math

import numpy as np
import pytest
import torch

from kpray import skeleton_oracle as O
from kpray.ops.coords import to_normalised


def test_oracle_points_hand_case():
    joints = np.array([[[0, 0], [10, 0], [10, 20]]], dtype=np.float32)      # [T=1, J=3, 2]
    adj = np.zeros((3, 3), bool)
    adj[0, 1] = adj[1, 0] = adj[1, 2] = adj[2, 1] = True
    pts = O.oracle_points(joints, adj, 7)
    assert pts.shape == (1, 7, 2)
    assert np.allclose(pts[0, :3], joints[0])                                 # the joints first
    # 4 extra points, to links (0,1), (1,2), (0,1), (1,2): two per link at 1/3 and 2/3
    assert np.allclose(pts[0, 3:], [[10 / 3, 0], [10, 20 / 3], [20 / 3, 0], [10, 40 / 3]])
    assert O.oracle_points(joints, adj, 2).shape == (1, 2, 2)                 # fewer than J


def test_one_hot_maps_put_each_point_on_its_pixel():
    px = torch.tensor([[[3.0, 5.0], [63.0, 0.0]]])
    maps = O.one_hot_maps(to_normalised(px, 64), 64)
    assert maps.shape == (1, 2, 64, 64) and torch.equal(maps.sum(dim=(-1, -2)), torch.ones(1, 2))
    assert maps[0, 0, 5, 3] == 1 and maps[0, 1, 0, 63] == 1


def test_points_on_mask_hand_case():
    from kpray.train.skeleton_adapter import points_on_mask

    masks = np.zeros((1, 8, 8), bool)
    masks[0, 2, 2] = True
    pts = np.array([[[2, 2], [3, 3], [5, 5], [-1, 2]]], dtype=np.float32)     # on, next to, off, out
    assert points_on_mask(pts, masks, dilate=1) == pytest.approx(0.5)
    assert points_on_mask(pts, masks, dilate=0) == pytest.approx(0.25)


def test_oracle_choice_keeps_the_points_on_true_joints():
    from kpray.skeleton_report import oracle_choice

    # 64x64 frames, eps 0.15 normalised = 4.8 px; true chain 0-1-2
    gt = np.array([[[10, 10], [30, 10], [30, 40]], [[12, 10], [32, 12], [30, 44]]], np.float64)
    adj = np.zeros((3, 3), bool)
    adj[0, 1] = adj[1, 0] = adj[1, 2] = adj[2, 1] = True
    ep = {"frames": np.zeros((2, 64, 64, 3), np.uint8), "joints": gt, "adjacency": adj}
    pts = np.stack([gt[:, 2] + [1, 0],            # near joint 2
                    gt[:, 0] + [0, 2],            # near joint 0
                    gt[:, 1] + [12, 0],           # 12 px from joint 1: too far
                    np.full((2, 2), 60.0)], 1)    # a distractor
    joints, sub = oracle_choice(ep, pts, 0.15)
    assert joints.shape == (2, 2, 2)
    assert np.allclose(joints, pts[:, :2])        # in point order: points 0 and 1
    assert not sub.any()                          # joints 0 and 2 are not linked to each other
    joints, sub = oracle_choice(ep, pts, 0.5)     # 12 px is within 16 px: joint 1 kept too
    assert joints.shape[1] == 3 and sub.sum() == 4


def test_joint_record_finds_each_true_joint_in_its_share_of_frames():
    from kpray.skeleton_report import _joints_record, per_body

    # 64x64, eps 0.15 = 4.7 px; true chain hinge_1 - hinge_2 - tip over 2 frames
    gt = np.array([[[10, 10], [30, 10], [30, 40]], [[12, 10], [32, 12], [30, 44]]], np.float64)
    adj = np.zeros((3, 3), bool)
    adj[0, 1] = adj[1, 0] = adj[1, 2] = adj[2, 1] = True
    ep = {"frames": np.zeros((2, 64, 64, 3), np.uint8), "joints": gt, "adjacency": adj,
          "meta": {"body": "cartpole:2", "joint_names": ["hinge_1", "hinge_2", "tip"]}}
    joints = np.stack([gt[:, 2] + [[1, 0], [9, 0]],    # the tip, 9 px off in frame 1
                       gt[:, 0] + [0, 2]], 1)          # hinge_1; hinge_2 has no joint
    r = _joints_record(ep, joints, np.array([[0, 1], [1, 0]], bool), 0.15)
    assert r["hits"] == pytest.approx([1.0, 0.0, 0.5])
    assert r["joint_names"] == ["hinge_1", "hinge_2", "tip"]
    # per frame F1 = 2 hits_t / (P + J), so its mean is 2 * sum(hits) / (P + J)
    assert r["joint_f1"] == pytest.approx(2 * sum(r["hits"]) / (2 + 3))
    b = per_body([r, dict(r, hits=[0.0, 1.0, 1.0])])["cartpole:2"]
    assert b["hits"] == pytest.approx([0.5, 0.5, 0.75]) and b["joint_names"][2] == "tip"


def test_point_placement_per_body_hand_case():
    from kpray.skeleton_report import SPLAT_REACH_PX, point_placement

    # one 2-frame cartpole:1 video, hinge_1 (10, 10) - tip (10, 30) (normalised eps 0.15 = 4.7 px)
    gt = np.array([[[10, 10], [10, 30]]] * 2, np.float64)
    ep = {"frames": np.zeros((2, 64, 64, 3), np.uint8), "joints": gt,
          "adjacency": np.array([[0, 1], [1, 0]], bool),
          "meta": {"body": "cartpole:1", "joint_names": ["hinge_1", "tip"]}}
    # frame 0: a point on the hinge (covers y 10-11.5: 4 samples) and one 10 px down the pole
    # (y 18.5-21.5: 7 samples); frame 1: both 6 px off the pole; links sampled every 0.5 px:
    # 41 samples, 1.5 px reach
    pts = np.array([[[10, 10], [10, 20]], [[16, 10], [16, 12]]], np.float64)
    got = point_placement([ep, dict(ep)], [(pts, None), (pts, None)], 0.15)["cartpole:1"]
    assert SPLAT_REACH_PX == 1.5
    assert got["coverage"] == pytest.approx((4 + 7) / 41 / 2)
    assert got["reach"] == pytest.approx([0.5, 0.0]) and got["joint_names"] == ["hinge_1", "tip"]


def test_comparison_means_count_nan_as_zero_except_the_left_out_bcc():
    from kpray.skeleton_report import KEYS, _mean

    recs = [{k: 0.5 for k, _, _ in KEYS} | {"joints": 2}, {k: 0.5 for k, _, _ in KEYS} | {"joints": 4}]
    recs[0].update(bcc=1.0, bcc_defined=1.0, dist=0.2)
    recs[1].update(bcc=math.nan, bcc_defined=math.nan, dist=math.nan)   # a 1-pole body
    m = _mean(recs)
    assert m["bcc"] == pytest.approx(0.5) and m["bcc_defined"] == pytest.approx(1.0)
    assert m["dist"] == pytest.approx(0.2) and m["joints"] == 3          # lower-is-better: left out


def test_spearman_is_nan_for_a_constant_side():
    from kpray.metrics import spearman

    assert spearman([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(1.0)
    assert math.isnan(spearman([7, 7, 7, 7], [2, 3, 4, 5]))


def test_skeleton_diagnostics_split_gradients_by_network():
    """Each term's gradient reaches the network it should: recon trains pi, not psi; with psi's
    input maps detached and structure_moves_points off, the structure terms train psi only."""
    import dataclasses

    from kpray.models.skeleton import SkeletonConfig, SkeletonModel
    from kpray.train.skeleton_adapter import SkeletonAdapter

    torch.manual_seed(0)
    model = SkeletonModel(SkeletonConfig.from_preset(
        "cartpoles", num_points=6, pi_width=4, psi_width=4, background_width=4,
        background_latent=8, ramp_steps=0, psi_detach_maps=True, psi_target="loss"))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    batch = {"source": torch.rand(3, 3, 64, 64), "target": torch.rand(3, 3, 64, 64)}
    d = SkeletonAdapter().diagnostics(model, batch, step=10)
    assert d["grad_pi/recon"] > 0 and d["grad_psi/recon"] == 0
    for k in ("near", "sparse_links", "sparse_joints", "length"):
        assert d[f"grad_psi/{k}"] > 0 and d[f"grad_pi/{k}"] == 0, k
    assert d["psi_z_abs"] > 0 and d["psi_z_batch_std"] > 0                   # random images differ
    assert all(math.isfinite(v) for v in d.values())
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())          # BN stats untouched
    assert all(p.grad is None for p in model.parameters())                    # nothing accumulated
    fit = SkeletonModel(dataclasses.replace(model.config, psi_target="fit", psi_fit_steps=10))
    d = SkeletonAdapter().diagnostics(fit, batch, step=10)
    assert d["grad_psi/psi_fit"] > 0 and d["grad_pi/psi_fit"] == 0
    assert d["grad_psi/near"] == 0 and d["grad_psi/sparse_joints"] == 0  # psi learns from the fit


def test_validation_reports_points_on_object_and_bodies(tiny_checkpoint):
    from kpray.train.models import get_adapter

    root, shards, cfg = tiny_checkpoint
    adapter = get_adapter("skeleton")
    model = adapter.build(cfg)
    data = {"test": __import__("kpray.train.data", fromlist=["x"]).load_episodes(str(shards), "test", 3, 5)}
    m = adapter.validate(model, data, cfg)
    assert 0 <= m["val_points_on_object"] <= 1 and 0 < m["val_mask_fraction"] < 0.5
    assert {"val_joints_cartpole1", "val_links_cartpole3"} <= set(m)
    assert -1 <= m["val_joint_count_spearman"] <= 1
    model.eval()
    frames = data["test"][0]["frames"]
    full = adapter.predict(model, frames)
    assert np.array_equal(adapter.points(model, frames), full["points"])   # points without psi


def test_compare_job_writes_the_table(tiny_checkpoint, capsys):
    from conftest import load_script

    root, shards, _ = tiny_checkpoint
    job = load_script("jobs/compare_skeleton.py")
    out = root / "cmp"
    assert job.main(["--checkpoint", str(root / "run"), "--data", str(shards), "--out", str(out)]) == 0
    c = json.loads((out / "comparison.json").read_text())
    assert set(c["rows"]) == {"trained", "untrained", "best constant skeleton",
                              "oracle choice of points"}
    assert c["paper"]["joint_f1"] == 0.84 and c["videos"] == 3            # cartpoles row
    # one skeleton for every video: the same joint count whatever the body
    for row in c["rows"].values():                     # leaving NaN videos out cannot lower it
        assert not row["bcc_defined"] < row["bcc"]
    const = c["bodies"]["best constant skeleton"]
    assert len({v["joints"] for v in const.values()}) == 1
    assert math.isnan(c["spearman"]["best constant skeleton"])
    assert set(c["bodies"]["trained"]) == {"cartpole:1", "cartpole:2", "cartpole:3"}
    from PIL import Image

    fig = Image.open(out / "skeletons.png")
    assert fig.size == (3 * (64 * 3 + 2) + 2, 2 * (64 * 3 + 2) + 2)        # 3 bodies, 2 rows
    md = (out / "comparison.md").read_text()
    assert "structure Bcc" in md and "Spearman" in md and "cartpole:3" in md
    assert "per true joint" in md
    for body in c["bodies"]["trained"].values():      # one share per true joint, named
        assert len(body["hits"]) == len(body["joint_names"]) == body["true_joints"]
        assert all(0 <= h <= 1 for h in body["hits"])
    for name in ("trained", "untrained"):             # reach bounds the hits of the same points
        for b, placed in c["placement"][name].items():
            assert 0 <= placed["coverage"] <= 1 and len(placed["reach"]) == c["bodies"][name][b]["true_joints"]
            assert all(r >= h - 1e-9 for r, h in zip(placed["reach"], c["bodies"][name][b]["hits"]))
    assert "links covered" in md
    assert "structure Bcc" in capsys.readouterr().out
    assert job.main(["--checkpoint", str(root / "none"), "--data", str(shards),
                     "--out", str(root / "bad")]) == 2
    assert not (root / "bad").exists()


def train_and_test_folder(shards, tmp_path):
    """A shard folder whose train and test splits are both the tiny checkpoint's test shard
    (the probes need a train split)."""
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-000000.tar", "test-000000.tar"):
        shutil.copy(shards / "test-000000.tar", data / name)
    return data


def test_probe_trains_psi_alone_on_frozen_points(tiny_checkpoint, tmp_path):
    from conftest import load_script
    from kpray.train.predict import load_checkpoint

    root, shards, _ = tiny_checkpoint
    data = train_and_test_folder(shards, tmp_path)
    probe = load_script("benchmarks/skeleton_probe.py")
    out = tmp_path / "probe"
    assert probe.main(["--out", str(out), "--init", str(root / "run"), "--train-only", "psi",
                       "--log-every", "1", "--", "--data", str(data), "--preset", "cartpoles",
                       "--steps", "3", "--batch-size", "2", "--points", "6", "--set", "pi_width=8",
                       "--set", "psi_width=8", "--set", "background_width=8"]) == 0
    from kpray.train.loop import seed_everything
    from kpray.train.models import get_adapter

    before = load_checkpoint(str(root / "run"))[0]["model"]
    state, cfg = load_checkpoint(str(out))
    after = state["model"]
    assert state["step"] == 3
    frozen = [k for k in before if not k.startswith("psi.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)   # pi and B, BN stats too
    seed_everything(cfg.seed)                 # the probe's fresh psi, before its 3 steps
    fresh = get_adapter("skeleton").build(cfg).state_dict()
    assert not torch.equal(fresh["psi.fc.weight"], after["psi.fc.weight"])
    assert len((out / "terms.jsonl").read_text().splitlines()) == 3
    c = json.loads((out / "comparison.json").read_text())
    assert "oracle choice of points" in c["rows"] and c["videos"] == 3


def test_start_signal_reports_reliance_and_points_on_object_per_start(tiny_checkpoint, tmp_path,
                                                                      capsys):
    """benchmarks/skeleton_start_signal.py: one row per (start, step), reliance <= 1 and points on
    the object in [0, 1]; two training seeds are two different starts."""
    from conftest import load_script

    _, shards, _ = tiny_checkpoint
    data = train_and_test_folder(shards, tmp_path)
    script = load_script("benchmarks/skeleton_start_signal.py")
    assert script.main(["--seeds", "0,1", "--at", "1,2", "--episodes", "2", "--", "--data",
                        str(data), "--preset", "cartpoles", "--batch-size", "2", "--points", "6",
                        "--set", "pi_width=8", "--set", "psi_width=8",
                        "--set", "background_width=8"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    rel, train_rel, on = ([float(r[i]) for r in rows] for i in (2, 3, 5))
    assert all(r <= 1 for r in rel + train_rel) and all(0 <= x <= 1 for x in on)
    assert [r[2:6] for r in rows[:2]] != [r[2:6] for r in rows[2:]]     # reliance .. on object


def test_literal_flag_applies_the_paper_reading_and_set_overrides(tmp_path):
    from kpray.models.skeleton import PAPER_LITERAL
    from kpray.train.cli import build_parser, config_from_args
    from kpray.train.models import make_model_config
    from tests.rendered import write_rendered_shards

    data = write_rendered_shards(str(tmp_path / "d"), train_shards=(1,), test_episodes=0, frames=4)
    p = build_parser("skeleton")
    args = p.parse_args(["--data", data, "--preset", "cartpoles", "--literal",
                         "--set", "gumbel_noise=false"])
    cfg = config_from_args(args, "skeleton")
    mc = make_model_config("skeleton", cfg.preset, cfg.model_config)
    assert mc.gumbel_noise is False                                       # --set wins
    assert all(getattr(mc, k) == v for k, v in PAPER_LITERAL.items() if k != "gumbel_noise")
    plain = make_model_config("skeleton", "cartpoles",
                              config_from_args(p.parse_args(["--data", data]), "skeleton").model_config)
    assert plain.psi_maps == "peak" and plain.uniform_evidence == "peak"


@pytest.fixture(scope="module")
def one_and_three_poles():
    from sim import render_episode

    return {k: render_episode(f"cartpole:{k}", "train", seed=0, index=k, frames=4, size=64)
            for k in (1, 3)}


def _structure_loss_and_grad(ep, adj_pp, cfg):
    """Weighted structure loss and dL/dS [P, P] of oracle points of frames 0 -> 1 of ep."""
    from kpray.losses.skeleton import effective_weights
    from kpray.models.skeleton import structure_terms

    pts = O.oracle_points(ep["joints"], ep["adjacency"], cfg.num_points)
    ps, pt = (to_normalised(torch.from_numpy(pts[f][None]), 64) for f in (0, 1))
    s = torch.from_numpy(adj_pp.astype(np.float32))[None].requires_grad_(True)
    terms = structure_terms(cfg, s, O.one_hot_maps(ps, 64), O.one_hot_maps(pt, 64), ps, pt)
    w = effective_weights(cfg.loss_weights(), 0, 0)
    loss = sum(w[k] * v for k, v in terms.items())
    loss.backward()
    return float(loss.detach()), s.grad[0].numpy()


def test_oracle_structure_loss_depends_on_the_body(one_and_three_poles):
    """The small oracle check: on points along the true skeleton, each body's own skeleton has
    the lower structure loss, and at one shared skeleton the loss asks to drop a link on the
    1-pole body that it asks to keep on the 3-pole body. If the losses stopped depending on the
    image, no psi could learn an image-dependent skeleton from them."""
    import dataclasses

    from kpray.losses.skeleton import LossWeights, PRESETS
    from kpray.models.skeleton import SkeletonConfig

    cfg = SkeletonConfig.from_preset("cartpoles", num_points=16)
    cfg = dataclasses.replace(cfg, weights=LossWeights(**{**PRESETS["cartpoles"].as_dict(),
                                                          "sparse_joints": 1.0}))
    chain = {}
    for n in (1, 3):
        a = np.zeros((16, 16), bool)
        for k in range(n):
            a[k, k + 1] = a[k + 1, k] = True
        chain[n] = a
    for n, ep in one_and_three_poles.items():
        own, _ = _structure_loss_and_grad(ep, chain[n], cfg)
        other, _ = _structure_loss_and_grad(ep, chain[4 - n], cfg)
        assert own < other, (n, own, other)
    _, g1 = _structure_loss_and_grad(one_and_three_poles[1], chain[3], cfg)
    _, g3 = _structure_loss_and_grad(one_and_three_poles[3], chain[3], cfg)
    assert g1[2, 3] > 0 > g3[2, 3]            # drop link (2, 3) on one pole, keep it on three


def test_psi_on_oracle_points_follows_the_body():
    """The small oracle check of psi: trained alone (psi_target="fit") on true points of 1-pole
    and 3-pole cartpoles, it gives their 3-pole frames more links than their 1-pole frames.
    Fails if psi's output stops depending on the body (the same skeleton for every image)."""
    import dataclasses

    from kpray.models.skeleton import SkeletonConfig
    from sim import render_episode

    def episodes(index):
        return [render_episode(f"cartpole:{k}", "train", seed=0, index=index + i, frames=8, size=64)
                for k in (1, 3) for i in range(2)]

    cfg = SkeletonConfig.from_preset("cartpoles", num_points=16, psi_width=8, psi_target="fit",
                                     psi_fit_init="zero", near_endpoint_credit=0.5)
    cfg = dataclasses.replace(cfg, weights=dataclasses.replace(cfg.loss_weights(), sparse_joints=1.0))
    train = episodes(0)
    psi, history = O.train_psi(train, cfg, steps=150, batch_size=8, seed=0)
    links = {}
    for ep in train:
        s = O.predict_links(psi, ep, cfg.num_points)                      # [T, P, P]
        n = int(ep["meta"]["n_poles"])
        links.setdefault(n, []).append(float((np.triu(s, 1) >= 0.5).sum(axis=(1, 2)).mean()))
    assert np.mean(links[3]) >= np.mean(links[1]) + 1, links
    # and close to the truth (1 and 3 links): psi trained by the losses themselves (psi_target
    # "loss") gave 3 and 7.5 here
    assert np.mean(links[1]) <= 1.5 and 2 <= np.mean(links[3]) <= 5, links
    assert history[-1]["links_std"] > 0                                       # varies over a batch


def test_identity_report_separates_covering_from_keeping():
    """Two points that swap joints between two frames cover both joints in every frame
    (recall 1 matched per frame) but keep neither over the video (recall 0.5 with one matching
    per video, as the joint metrics match); points that stay keep both."""
    from conftest import load_script

    mod = load_script("benchmarks/skeleton_identity.py")
    joints = np.array([[[10, 10], [50, 50]]] * 2, float)                     # [T=2, J=2, 2]
    swapped = np.array([[[10, 10], [50, 50]], [[50, 50], [10, 10]]], float)
    r = mod.identity_report(swapped, joints, 64, eps=0.15)
    assert np.allclose(r["covered"], 1.0) and not r["kept"].any()
    assert r["recall_frame"] == 1.0 and r["recall_video"] == 0.5
    r = mod.identity_report(joints + 1.0, joints, 64, eps=0.15)              # 1 px off, kept
    assert r["kept"].all() and r["recall_frame"] == 1.0 and r["recall_video"] == 1.0


def test_identity_report_spread_of_bones_and_of_pairs_that_skip_a_hinge():
    """A 3-joint chain whose second bone turns about the middle joint: on the true joints the
    bones keep their length (spread 0) and the pair that skips the hinge does not; points that
    slide along the first bone give that bone a spread of its own."""
    from conftest import load_script

    mod = load_script("benchmarks/skeleton_identity.py")
    angles = np.linspace(0, np.pi / 2, 5)
    joints = np.stack([np.tile([20.0, 30.0], (5, 1)), np.tile([30.0, 30.0], (5, 1)),
                       np.stack([30 + 10 * np.cos(angles), 30 + 10 * np.sin(angles)], -1)], 1)
    adj = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)
    r = mod.identity_report(joints, joints, 64, eps=0.15, adjacency=adj)
    assert len(r["spread"]["bone"]) == 2 and len(r["spread"]["skip"]) == 1
    assert all(p == pytest.approx(0.0, abs=1e-9) and t == pytest.approx(0.0, abs=1e-9)
               for p, t in r["spread"]["bone"])
    # the skipping pair shortens from 20 px (straight) to 10 sqrt(2) px (a right angle)
    assert r["spread"]["skip"][0][0] > 0.05 and r["spread"]["skip"][0][0] == r["spread"]["skip"][0][1]
    sliding = joints.copy()
    sliding[:, 0, 0] += np.array([0.0, 2.0, 0.0, 2.0, 0.0])              # the first point slides
    r = mod.identity_report(sliding, joints, 64, eps=0.15, adjacency=adj)
    first_bone = [p for p, t in r["spread"]["bone"] if p > 0]
    assert len(first_bone) == 1 and first_bone[0] == pytest.approx(mod.relative_spread(
        sliding[:, 0], sliding[:, 1]))
    assert mod.relative_spread(sliding[:, 0], sliding[:, 1]) == pytest.approx(0.96 / 9.2)


def test_probe_restart_clears_adam_and_the_screen_tools_read_the_probe(tiny_checkpoint, tmp_path,
                                                                       capsys):
    """A probe whose start is restarted at step 2 (restart_below 1: any reliance is below it)
    restarts Adam too (its step count is 1 after 3 steps, not 3), and
    benchmarks/start_outcomes.py reads the reliance the decision printed from the probe's log;
    screen_arms.py reads its comparison; screen_weights.py packs its weights in half precision
    and unpacks them into a checkpoint that loads."""
    from conftest import load_script
    from kpray.train.predict import load_checkpoint

    _, shards, _ = tiny_checkpoint
    data = train_and_test_folder(shards, tmp_path)
    probe = load_script("benchmarks/skeleton_probe.py")
    out = tmp_path / "probes" / "p"
    assert probe.main(["--out", str(out), "--log-every", "1", "--", "--data", str(data),
                       "--preset", "cartpoles", "--steps", "3", "--batch-size", "2", "--points", "6",
                       "--set", "pi_width=8", "--set", "psi_width=8", "--set", "background_width=8",
                       "--set", "restart_step=2", "--set", "restart_window=2",
                       "--set", "restart_below=1.0"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "probes" / "p.log").write_text(printed)
    state, _ = load_checkpoint(str(out))
    assert int(state["model"]["restarts"]) == 1 and int(state["model"]["start_step"]) == 2
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {1}
    outcomes = load_script("benchmarks/start_outcomes.py")
    said = float(printed.split("restart at step 2: reliance ")[1].split()[0])
    row = outcomes.read_probe(str(out))
    assert row["at decision"] == pytest.approx(said) and row["steps"] == 3
    assert row["steps 400-600"] != row["steps 400-600"]               # NaN: no step logged there
    assert outcomes.main([str(tmp_path / "probes"), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert outcomes.main([str(tmp_path / "nothing")]) == 2
    arms = load_script("benchmarks/screen_arms.py")                 # reads the same real probe
    assert arms.read_probe(str(out))["trained"]["joint_f1"] == pytest.approx(
        json.loads((out / "comparison.json").read_text())["rows"]["trained"]["joint_f1"])
    assert arms.main([str(tmp_path / "probes"), "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 0 and arms.main([str(tmp_path / "nothing")]) == 2
    weights = load_script("benchmarks/screen_weights.py")
    assert weights.pack(str(tmp_path / "probes"), str(tmp_path), files=1) == ["p"]
    assert weights.main(["unpack", str(tmp_path), str(tmp_path / "back")]) == 0
    back, _ = load_checkpoint(str(tmp_path / "back" / "p"))
    for k, v in state["model"].items():
        w = back["model"][k]
        assert w.dtype == v.dtype and torch.allclose(w, v, rtol=1e-3, atol=1e-3), k
    assert "optimizer" not in back and int(back["model"]["start_step"]) == 2
    assert weights.main(["unpack", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert outcomes.decision_reliance("step 250: reliance 0.315 >= 0.25; start kept") == 0.315
    assert outcomes.decisions("restart at step 250: reliance 0.165 < 0.25; start 1\n" * 2 +
                              "step 500: reliance 0.409 >= 0.25; start kept") == {250: 0.165,
                                                                                   500: 0.409}


def test_screen_arms_groups_starts_by_arm_and_counts_targets_by_hand():
    """benchmarks/screen_arms.py: the arm is the name without data/seed parts; a start meets Bcc
    only above 0.75 *and* above the constant skeleton; NaN meets nothing; per-arm counts."""
    from conftest import load_script

    arms = load_script("benchmarks/screen_arms.py")
    assert [arms.arm_of(n) for n in ("p4-s20-base", "long-p5-s21", "p12-s3-tr-05")] == \
        ["base", "long", "tr-05"]

    def probe(name, f1, bcc, const, rho):
        t = {"joint_f1": f1, "dist": 0.1, "diff": 1.0, "bcc_defined": bcc, "struct_f1": 0.7,
             "spearman": rho}
        return {"probe": name, "arm": arms.arm_of(name), "steps": 10, "trained": t,
                "constant": {"bcc_defined": const}}

    good = probe("p1-s1-a", 0.61, 0.80, 0.79, 0.6)                  # meets all six
    below_const = probe("p1-s2-a", 0.61, 0.80, 0.81, 0.6)           # Bcc under the constant
    nan_rho = probe("p1-s1-b", 0.59, 0.80, 0.5, float("nan"))
    assert all(arms.meets(good).values())
    assert [k for k, v in arms.meets(below_const).items() if not v] == \
        ["Bcc >= 0.75 and above the constant"]
    assert {k for k, v in arms.meets(nan_rho).items() if not v} == {"joint F1 >= 0.60",
                                                                     "Spearman >= 0.5"}
    s = arms.summary([good, nan_rho, below_const])
    assert list(s) == ["a", "b"] and s["a"]["n"] == 2 and s["a"]["all"] == 1
    assert s["a"]["met"]["Bcc >= 0.75 and above the constant"] == 1
    assert s["a"]["mean"]["joint_f1"] == pytest.approx(0.61) and s["b"]["all"] == 0
    assert s["b"]["met"]["Spearman >= 0.5"] == 0
