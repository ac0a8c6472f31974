"""psi as a solver of the structure losses (``psi_head="solver"``, kpray.models.skeleton_solver)."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from kpray import skeleton_oracle as O
from kpray.losses.skeleton import PRESETS, LossWeights
from kpray.models.skeleton import SkeletonConfig, SkeletonModel
from kpray.models.skeleton_solver import greedy_links, structure_objective
from kpray.ops.coords import expected_location, to_normalised


def solver_config(**kw) -> SkeletonConfig:
    w = LossWeights(**{**PRESETS["cartpoles"].as_dict(), "sparse_joints": 3, "uniform": 10000})
    return SkeletonConfig.from_preset("cartpoles", near_exclude_endpoints=False, l_max=2.0,
                                      uniform_alpha=0.7, weights=w, **kw)


def links_of(px: torch.Tensor, c: SkeletonConfig) -> set:
    """Pixel points [P, 2] on a 64x64 image (one-hot maps) -> the solver's links {(i, j)}."""
    pts = to_normalised(px[None], 64)
    s = greedy_links(c, O.one_hot_maps(pts, 64), pts)
    assert torch.equal(s, s.T) and not s.diagonal().any()
    return {(i, j) for i in range(len(px)) for j in range(i + 1, len(px)) if s[i, j] == 1}


def test_solver_links_a_straight_body_once_and_a_bent_one_through_its_corner():
    c = solver_config(num_points=12)
    straight = torch.tensor([[10 + 4 * k, 32.0] for k in range(12)])          # 4 px apart
    # 7 points down x = 20 to the corner (20, 36), then 5 to the right along y = 36
    bent = torch.tensor([[20.0, 12 + 4 * k] for k in range(7)] + [[24 + 4 * k, 36.0] for k in range(5)])
    assert links_of(straight, c) == {(0, 11)}           # one link between the ends: 2 joints
    assert links_of(bent, c) == {(0, 6), (6, 11)}        # no link across the gap: 3 joints
    # started from a link across the gap, the search drops it and ends at the same optimum
    pts = to_normalised(bent[None], 64)
    wrong = torch.zeros(12, 12)
    wrong[0, 11] = wrong[11, 0] = 1
    s = greedy_links(c, O.one_hot_maps(pts, 64), pts, start=wrong)
    assert {(i, j) for i in range(12) for j in range(i + 1, 12) if s[i, j] == 1} == {(0, 6), (6, 11)}


def test_solver_evidence_replaces_the_points_foreground_in_the_gap_test():
    from kpray.models.skeleton_solver import solve_links

    c = solver_config(num_points=6)
    # two groups of three points 4 px apart on one line, 28 px of empty line between them
    px = torch.tensor([[10.0, 32], [14, 32], [18, 32], [46, 32], [50, 32], [54, 32]])
    pts = to_normalised(px[None], 64)
    maps = O.one_hot_maps(pts, 64)

    def links(evidence):
        s = solve_links(c, maps, pts, evidence=evidence)
        return {(i, j) for i in range(6) for j in range(i + 1, 6) if s[i, j] == 1}

    assert links(None) == {(0, 2), (3, 5)}              # the points' evidence: no link over the gap
    bar = torch.zeros(1, 64, 64)
    bar[0, 30:35, 8:57] = 1                             # a body along the whole line
    assert links(bar) == {(0, 5)}                       # the gap is body: one link end to end
    assert links(torch.zeros(1, 64, 64)) == set()       # no foreground: every link has a gap


def test_batched_objective_equals_the_loss_of_each_candidate():
    from torch.func import vmap

    from kpray.losses.skeleton import effective_weights
    from kpray.models.skeleton import link_coverages, structure_terms
    from kpray.ops.coords import expected_location

    torch.manual_seed(0)
    c = solver_config(num_points=5)
    maps = torch.softmax(3 * torch.randn(2, 5, 64 * 64), -1).view(2, 5, 64, 64)
    pts = expected_location(maps)
    cands = (torch.rand(6, 5, 5) > 0.5).float()
    cands = torch.triu(cands, 1) + torch.triu(cands, 1).transpose(1, 2)
    batched = vmap(structure_objective(c, maps, pts))(cands)
    w = effective_weights(c.loss_weights(), 10 ** 9, 0)
    cov = link_coverages(c, maps, maps, pts, pts)
    for s, got in zip(cands, batched):
        terms = structure_terms(c, s[None].expand(2, 5, 5), maps, maps, pts, pts, coverage=cov)
        assert float(got) == pytest.approx(float(sum(w[k] * v for k, v in terms.items())), rel=1e-5)


def _chain_video(p: int, k: int, seed: int):
    """k frames of p points along a bent chain of three straight parts, jittered per frame:
    (one-hot maps [k, p, 64, 64], points [k, p, 2])."""
    from kpray.ops.coords import expected_location

    g = torch.Generator().manual_seed(seed)
    corners = torch.tensor([[16.0, 16], [16, 36], [36, 36], [46, 24]])
    t = torch.linspace(0, 3, p)
    part = t.floor().clamp(max=2).long()
    base = corners[part] + (t - part)[:, None] * (corners[part + 1] - corners[part])
    px = (base + torch.randn(k, p, 2, generator=g)).round().clamp(0, 63)
    maps = O.one_hot_maps(to_normalised(px, 64), 64)
    return maps, expected_location(maps)


SOLVER_VARIANTS = [{}, {"near_exclude_endpoints": True, "weights": {"sparse_joints": 1.0}},
                   {"near_endpoint_credit": 0.5, "near_margin": 0.05},
                   {"near_density_sigma": 0.05, "sparse_p": 1.0, "weights": {"sparse_joints": 4.0}},
                   {"solver_rigidity": 300.0, "l_max": 0.5}]


def _variant(p: int, v: dict) -> SkeletonConfig:
    c = dataclasses.replace(solver_config(num_points=p), **{k: x for k, x in v.items() if k != "weights"})
    return dataclasses.replace(c, weights=LossWeights(**{**c.loss_weights().as_dict(), **v.get("weights", {})}))


@pytest.mark.parametrize("variant", range(len(SOLVER_VARIANTS)))
def test_link_costs_take_the_objective_apart_and_the_fast_search_finds_the_same_links(variant):
    from kpray.models.skeleton_solver import LinkCosts, greedy_links_by_objective

    c = _variant(14, SOLVER_VARIANTS[variant])
    maps, pts = _chain_video(14, 3, seed=variant)
    cands = (torch.rand(8, 14, 14, generator=torch.Generator().manual_seed(variant)) > 0.8).float()
    cands = torch.triu(cands, 1) + torch.triu(cands, 1).transpose(1, 2)
    iu, ju = torch.triu_indices(14, 14, 1)
    for targets in ((None, None), (maps.roll(1, 0), pts.roll(1, 0))):
        costs = LinkCosts(c, maps, pts, *targets)
        f = structure_objective(c, maps, pts, *targets)
        for s in cands:
            present = s[iu, ju] > 0.5
            near = -(costs.near[:, present].amax(1) if present.any() else torch.zeros(1)).clamp_min(0).sum()
            value = near + costs.linear[present].sum() + costs.sparse(s[None])[0]
            assert float(value) == pytest.approx(float(f(s)), rel=1e-5, abs=1e-3)
        fast = greedy_links(c, maps, pts, *targets)
        assert torch.equal(fast, greedy_links_by_objective(c, maps, pts, *targets))
        assert fast.sum() > 0                            # the chain gets links: a real search
    # a softmax max in near's forward cannot be taken apart: the search scores every candidate
    soft = dataclasses.replace(c, near_max="softmax")
    assert torch.equal(greedy_links(soft, maps, pts), greedy_links_by_objective(soft, maps, pts))


def test_solver_rigidity_adds_each_links_length_spread_over_the_video():
    from kpray.losses.skeleton import length_spread, video_rigidity
    from kpray.ops.coords import expected_location

    torch.manual_seed(1)
    maps = torch.softmax(3 * torch.randn(3, 5, 64 * 64), -1).view(3, 5, 64, 64)
    pts = expected_location(maps)
    s = torch.triu((torch.rand(5, 5) > 0.5).float(), 1)
    s = s + s.T
    plain = float(structure_objective(solver_config(num_points=5), maps, pts)(s))
    rigid = solver_config(num_points=5, solver_rigidity=300.0)
    assert float(video_rigidity(s, length_spread(pts))) > 0
    assert float(structure_objective(rigid, maps, pts)(s)) == pytest.approx(
        plain + 300.0 * float(video_rigidity(s, length_spread(pts))), rel=1e-5)
    # one frame has no spread; a source/target pair (training) leaves the term out
    assert float(structure_objective(rigid, maps[:1], pts[:1])(s)) == pytest.approx(
        float(structure_objective(solver_config(num_points=5), maps[:1], pts[:1])(s)), rel=1e-5)
    with pytest.raises(ValueError, match="solver_rigidity"):
        SkeletonModel(solver_config(num_points=5, psi_head="solver", solver_rigidity=-1.0))


def test_model_with_the_solver_trains_pi_alone_and_predicts_video_skeletons():
    c = solver_config(num_points=6, pi_width=8, background_width=8, psi_head="solver",
                      solver_frames=3)
    model = SkeletonModel(c)
    assert not list(model.psi.parameters())
    x = torch.rand(2, 3, 64, 64)
    loss, logs = model((x, x.flip(0)), step=0)
    # nothing learns from the rest (reliance and gumbel_tau are logged, not trained on)
    assert set(logs) == {"recon", "contiguity", "gumbel_tau", "reliance"}
    loss.backward()
    assert all(p.grad is not None for p in model.pi.parameters())
    model.eval()
    frames = torch.rand(7, 3, 64, 64)
    per_frame = model.predict(frames).links                           # each frame its own
    video = model.predict(frames, video=True).links                  # one for the video
    assert per_frame.shape == video.shape == (7, 6, 6)
    assert set(per_frame.unique().tolist()) <= {0.0, 1.0}
    assert all(torch.equal(video[0], v) for v in video)
    # K = 1 and the caller reads one frame's links: that frame alone is searched, same result
    one = dataclasses.replace(c, solver_frames=1)
    m1 = SkeletonModel(one)
    m1.load_state_dict(model.state_dict())
    m1.eval()
    full = m1.predict(frames, video=True).links
    picked = m1.predict(frames, video=True, link_frame=4).links
    assert picked.shape == full.shape and all(torch.equal(full[4], v) for v in picked)
    with pytest.raises(ValueError, match="psi_target"):
        SkeletonModel(dataclasses.replace(c, psi_target="fit"))


def test_track_order_keeps_each_label_on_its_path_when_points_swap_places():
    from kpray.models.skeleton_solver import along_tracks, track_order

    # pi's channels 0 and 1 trade hinges at frame 1 and trade back at frame 3; 2 drifts alone
    a, b, z = [10.0, 10.0], [18.0, 10.0], [40.0, 40.0]
    pts = torch.tensor([[a, b, z], [b, a, z], [[b[0], 11.0], [a[0], 11.0], [41.0, 40.0]],
                        [[10.0, 12.0], [18.0, 12.0], [42.0, 40.0]]])
    order = track_order(pts)
    assert order.tolist() == [[0, 1, 2], [1, 0, 2], [1, 0, 2], [0, 1, 2]]
    tracked = along_tracks(order, pts)
    assert tracked[:, 0, 0].tolist() == [10.0] * 4 and tracked[:, 1, 0].tolist() == [18.0] * 4
    # the labels travel with anything else per point: maps [T, P, H, W]
    maps = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 3, 1, 1).expand(4, 3, 2, 2)
    assert along_tracks(order, maps)[1, :, 0, 0].tolist() == [4.0, 3.0, 5.0]
    # the match is one to one at least total distance, not each label's nearest: label 0's
    # nearest at frame 1 is label 1's place, but taking it would send label 1 28 px away
    two = torch.tensor([[[0.0, 0.0], [10.0, 0.0]], [[30.0, 0.0], [8.0, 0.0]]])
    assert track_order(two).tolist() == [[0, 1], [1, 0]]


def test_model_relabels_a_videos_points_along_tracks_before_its_skeleton():
    # each frame's arg-max points, relabelled ("tracked" would also move them between peaks)
    c = solver_config(num_points=6, pi_width=8, background_width=8, psi_head="solver",
                      solver_frames=3, point_readout="argmax")
    torch.manual_seed(0)
    model = SkeletonModel(c).eval()
    frames = torch.rand(5, 3, 64, 64)
    plain = model.predict(frames, video=True)
    model.config = dataclasses.replace(c, solver_track_points=True)
    tracked = model.predict(frames, video=True)
    steps = lambda p: (p[1:] - p[:-1]).norm(dim=-1).sum()                 # noqa: E731
    # the same points each frame, in an order that moves them less from frame to frame (never
    # more: each step is the least-distance matching of the two frames' point sets)
    assert torch.equal(tracked.points[0], plain.points[0])
    for t in range(5):
        assert sorted(map(tuple, tracked.points[t].tolist())) == sorted(map(tuple, plain.points[t].tolist()))
    assert steps(tracked.points) < steps(plain.points)
    assert all(torch.equal(tracked.links[0], v) for v in tracked.links)
    # one frame alone (no video): no tracks to follow
    assert torch.equal(model.predict(frames[:1]).points, plain.points[:1])


def test_spanning_tree_and_the_solver_starts():
    from kpray.models.skeleton_solver import solve_links, spanning_tree

    # an L of 4 points over two frames: the tree links each to its nearest, never 0-3 across
    pts = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [0.2, 0.3]]] * 2)
    tree = spanning_tree(pts)
    assert torch.equal(tree, tree.T) and int(tree.sum()) == 2 * 3
    assert {(i, j) for i in range(4) for j in range(i + 1, 4) if tree[i, j]} == {(0, 1), (1, 2), (2, 3)}
    c = solver_config(num_points=12)
    bent = torch.tensor([[20.0, 12 + 4 * k] for k in range(7)] + [[24 + 4 * k, 36.0] for k in range(5)])
    p = to_normalised(bent[None], 64)
    maps = O.one_hot_maps(p, 64)
    f = structure_objective(c, maps, p)
    runs = {start: solve_links(dataclasses.replace(c, solver_start=start), maps, p)
            for start in ("empty", "tree", "best")}
    assert float(f(runs["best"])) == pytest.approx(min(float(f(runs["empty"])), float(f(runs["tree"]))))
    assert float(f(runs["tree"])) <= float(f(spanning_tree(p)))        # toggling only lowers it
    with pytest.raises(ValueError, match="solver_start"):
        SkeletonModel(solver_config(num_points=6, pi_width=8, background_width=8,
                                    psi_head="solver", solver_start="mst"))


def test_solver_on_a_pair_keeps_only_links_that_hold_in_both_frames():
    from kpray.models.skeleton_solver import SolverSkeletonPredictor

    c = solver_config(num_points=12)
    straight = torch.tensor([[10 + 4 * k, 32.0] for k in range(12)])
    bent = torch.tensor([[20.0, 12 + 4 * k] for k in range(7)] + [[24 + 4 * k, 36.0] for k in range(5)])
    maps = [O.one_hot_maps(to_normalised(p[None], 64), 64) for p in (straight, bent)]

    def pairs(s):
        return {(i, j) for i in range(12) for j in range(i + 1, 12) if s[i, j] == 1}

    solver = SolverSkeletonPredictor(c)
    alone = solver(None, maps[0])[0]
    assert pairs(alone) == {(0, 11)}                 # the straight frame alone: one link
    # the same points bent in the target frame: the link across the gap no longer holds
    paired = solver(None, maps[0], maps[1])[0]
    assert (0, 11) not in pairs(paired) and pairs(paired) == {(0, 6), (6, 11)}


def test_solver_links_the_points_where_the_model_reads_them_not_their_maps_means():
    from kpray.models.skeleton_solver import SolverSkeletonPredictor, solver_points

    c = solver_config(num_points=12)
    bent = torch.tensor([[20.0, 12 + 4 * k] for k in range(7)] + [[24 + 4 * k, 36.0] for k in range(5)])
    maps = O.one_hot_maps(to_normalised(bent[None], 64), 64)
    maps[0, 6] *= 0.6                   # the corner's map: 0.6 on the corner, 0.4 in a far corner
    maps[0, 6, 60, 60] = 0.4            # of the image, so its mean (36, 45.6) px is off the body

    def pairs(s):
        return {(i, j) for i in range(12) for j in range(i + 1, 12) if s[i, j] == 1}

    assert torch.allclose(solver_points(c, maps), to_normalised(bent[None], 64))   # arg-max
    for solver in (lambda s: s.video_links(maps), lambda s: s(None, maps)[0]):
        # as the metrics read the points: the chain through the corner
        assert pairs(solver(SolverSkeletonPredictor(c))) == {(0, 6), (6, 11)}
        # at the maps' means the corner point is off the body: two links that miss the corner
        expected = dataclasses.replace(c, solver_points="expected")
        assert pairs(solver(SolverSkeletonPredictor(expected))) == {(0, 5), (7, 11)}
        # a model that reads its points at the means gives its solver the means too
        means = dataclasses.replace(c, point_readout="expected")
        assert pairs(solver(SolverSkeletonPredictor(means))) == {(0, 5), (7, 11)}
    # the points the model read (point_readout "tracked" reads them over a video) steer the search
    read = expected_location(maps)
    assert pairs(SolverSkeletonPredictor(c).video_links(maps, read)) == {(0, 5), (7, 11)}
    assert pairs(SolverSkeletonPredictor(c)(None, maps, read=read)[0]) == {(0, 5), (7, 11)}
    with pytest.raises(ValueError, match="solver_points"):
        SkeletonModel(dataclasses.replace(c, num_points=4, solver_points="mean"))


def test_solver_rigidity_moves_pi_only_from_its_start_step():
    c = solver_config(num_points=6, pi_width=8, background_width=8, psi_head="solver",
                      rigidity_weight=10.0, rigidity_points_gain=0.01, rigidity_start_step=3,
                      gumbel_noise=False)
    model = SkeletonModel(c)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    _, logs = model((x, x.flip(0)), step=2)
    assert "rigidity" not in logs                       # before its start the solver is skipped
    _, logs = model((x, x.flip(0)), step=3)
    assert {"rigidity", "num_links", "near"} <= set(logs)   # from then on: the pair's links
    # the links are the solver's on the pair (source and target maps), not on the source alone
    seen = []
    solve = model.psi.forward
    model.psi.forward = lambda image, maps, target_maps=None: seen.append(target_maps) or solve(
        image, maps, target_maps)
    model((x, x.flip(0)), step=3)
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape == (2, 6, 64, 64)


def test_evaluation_jobs_score_a_trained_pi_with_the_solver(tiny_checkpoint):
    from conftest import load_script

    root, shards, _ = tiny_checkpoint
    job = load_script("jobs/compare_skeleton.py")
    out = root / "cmp-solver"
    sets = ["--set", 'psi_head="solver"', "--set", "solver_frames=4"]
    assert job.main(["--checkpoint", str(root / "run"), "--data", str(shards), "--out", str(out),
                     *sets]) == 0
    c = json.loads((out / "comparison.json").read_text())
    assert c["videos"] == 3 and "trained" in c["rows"]
    from kpray.train.predict import load_model

    model, *_ = load_model(str(root / "run"), overrides={"psi_head": "solver", "weights": {"uniform": 5.0}})
    assert model.config.psi_head == "solver" and not list(model.psi.parameters())
    assert model.config.loss_weights().uniform == 5.0
    assert job.main(["--checkpoint", str(root / "run"), "--data", str(shards),
                     "--out", str(root / "bad"), "--set", "psi_head=nope"]) == 2
    assert not (root / "bad").exists()


def test_solver_on_oracle_points_follows_the_body():
    """On true points (joints, then points spread along the true links) of rendered cartpoles,
    the solver's skeleton grows with the body and matches the truth. Fails if its links stop
    depending on the points."""
    from sim import render_episode

    eps = [render_episode(f"cartpole:{k}", "test", seed=0, index=i, frames=4, size=64)
           for k in (1, 3, 5) for i in range(2)]
    psi, history = O.train_psi(eps, solver_config(num_points=16, psi_head="solver"), steps=10)
    assert history == []                                              # nothing to train
    r = O.evaluate_psi(psi, eps, 16, 0.15)
    links = {k: np.mean([v["links"] for v in r["videos"] if v["body"] == f"cartpole:{k}"])
             for k in (1, 3, 5)}
    assert links[1] < links[3] < links[5] and links[5] >= links[1] + 1, links
    assert r["mean"]["struct_f1"] >= 0.8 and r["mean"]["joint_f1"] >= 0.8, r["mean"]


def test_structure_benchmarks_take_mask_evidence_split_terms_by_body_and_time_the_search(tiny_checkpoint, capsys):
    from conftest import load_script

    root, shards, _ = tiny_checkpoint
    sop = load_script("benchmarks/structure_on_points.py")
    sop.main([str(root / "run"), str(shards), "--solver", "video", "--evidence", "mask",
              "--threads", "1", "--setting", '{"solver_frames": 2}',
              "--setting", '{"solver_frames": 2, "solver_track_points": true}'])
    out = capsys.readouterr().out
    assert "3 test videos, solver video" in out and out.count('| `{"solver_frames": 2}` |') == 1
    assert out.count('| `{"solver_frames": 2, "solver_track_points": true}` |') == 1
    with pytest.raises(SystemExit):                      # the mask oracle is the video solver's
        sop.main([str(root / "run"), str(shards), "--solver", "fit", "--evidence", "mask"])
    svo = load_script("benchmarks/solver_vs_oracle.py")
    assert svo.main([str(root / "run"), str(shards), "--frames", "2", "--by-body",
                     "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for k in (1, 2, 3):                                  # one row per body and kind of links
        assert out.count(f"| cartpole:{k} (1) |") == 3, out
    speed = load_script("benchmarks/solver_speed.py")
    speed.main([str(root / "run"), str(shards), "--threads", "1"])
    out = capsys.readouterr().out
    assert "| fast (LinkCosts) |" in out and "| 3 of 3 |" in out, out   # the same links
    ident = load_script("benchmarks/point_identity.py")
    assert ident.main([str(root / "run"), str(shards), "--radius", "64", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    # within 64 px every point is on a joint in every frame: one row per body, frames 1.00
    assert out.startswith("3 test videos, radius 64 px") and out.count(" | 1.00 | ") == 3, out
    assert ident.main([str(root / "run"), str(shards), "--radius", "64", "--threads", "1",
                       "--track"]) == 0
    out = capsys.readouterr().out
    assert "relabelled along tracks" in out and out.count(" | 1.00 | ") == 3, out
