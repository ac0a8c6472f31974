"""AutoLink's comparison against its untrained model: the limb-agreement score on a hand case,
the untrained model's exactness, and jobs/compare_autolink.py end to end on a tiny checkpoint
over real rendered shards (no Ray: the checkpoint is written in the loop's format)."""
import importlib.util
import itertools
import json
import math
import pathlib

import numpy as np
import pytest
import torch

from kpray import autolink_report as R

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_limb_agreement_hand_case():
    # GT: a 4-joint chain; limbs 0 = (0, 1), 1 = (1, 2), 2 = (2, 3); limbs 0 and 2 share no joint
    j = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float64)
    adj = np.zeros((4, 4), bool)
    for a, b in ((0, 1), (1, 2), (2, 3)):
        adj[a, b] = adj[b, a] = True
    kp = np.array([[3, 0], [7, 0], [10, 5], [5, 10], [2, 10]], np.float64)   # limbs 0 0 1 2 2
    shift = np.array([1.0, 1.0])
    kps = np.stack([kp, kp + shift, kp.copy()])
    joints = np.stack([j, j + shift, j])
    kps[2, 0] = [3, 10]          # one frame off its limb: the median over frames ignores it
    w = np.ones((5, 5))
    for (a, b), v in {(0, 1): 5.0, (2, 3): 4.0, (0, 3): 3.0}.items():
        w[a, b] = w[b, a] = v    # top 3: same limb, adjacent limbs, limbs 0 and 2 (not adjacent)
    np.fill_diagonal(w, 0)
    r = R.limb_agreement(kps, joints, adj, w)
    assert r["limbs"] == [(0, 1), (1, 2), (2, 3)] and r["n_edges"] == 3
    assert r["assignment"] == [0, 0, 1, 2, 2]
    assert r["distance_px"] == pytest.approx([0, 0, 0, 0, 0])
    assert [e[:2] for e in r["edges"]] == [(0, 1), (2, 3), (0, 3)]
    assert r["same_or_adjacent"] == pytest.approx(2 / 3) and r["same"] == pytest.approx(1 / 3)
    # the random expectation, by brute force: every set of 3 distinct pairs, equally likely
    limb = r["assignment"]
    ends = [set(x) for x in r["limbs"]]
    pairs = list(itertools.combinations(range(5), 2))
    near = {p: bool(ends[limb[p[0]]] & ends[limb[p[1]]]) for p in pairs}
    same = {p: limb[p[0]] == limb[p[1]] for p in pairs}
    draws = list(itertools.combinations(pairs, 3))
    assert r["random_same_or_adjacent"] == pytest.approx(
        np.mean([np.mean([near[p] for p in d]) for d in draws]))
    assert r["random_same"] == pytest.approx(np.mean([np.mean([same[p] for p in d]) for d in draws]))
    assert r["random_same_or_adjacent"] == pytest.approx(0.6) and r["random_same"] == pytest.approx(0.2)
    # a body with no limb: undefined
    assert math.isnan(R.limb_agreement(kps, joints, np.zeros((4, 4), bool), w)["same"])


def test_segment_distances():
    d = R.segment_distances(np.array([[[5, 3], [-4, 0], [12, 0]]]), np.array([[[0, 0], [1, 1]]]),
                            np.array([[[10, 0], [1, 1]]]))
    assert d.shape == (1, 3, 2)
    assert d[0, :, 0] == pytest.approx([3, 4, 2])                    # beside, before, after
    assert d[0, 0, 1] == pytest.approx(math.hypot(4, 2))              # a degenerate segment


TINY = {"num_keypoints": 4, "detector_width": 4, "decoder_width": 4, "decoder_depth": 2,
        "loss": "lpips", "perceptual_net": "alex", "pretrained": False, "thickness": 1e-3,
        "image_size": 64, "heatmap_size": 16}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Real cartpole:2 shards (2 train, 4 test episodes) and a run folder with AutoLink's step-0
    checkpoint, built as train_func builds it, and a step-2 checkpoint after two Adam steps."""
    from kpray.train.config import TrainConfig, resolve
    from kpray.train.loop import save_state, seed_everything
    from kpray.train.models import get_adapter
    from rendered import write_rendered_shards

    root = tmp_path_factory.mktemp("autolink_report")
    shards = write_rendered_shards(str(root / "shards"), train_shards=(2,), test_episodes=4,
                                   frames=6, size=64, dataset="cartpole:2")
    cfg = resolve(TrainConfig(model="autolink", data=shards, steps=2, seed=5, model_config=TINY))
    seed_everything(cfg.seed)
    adapter = get_adapter("autolink")
    model = adapter.build(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in (0, 2):
        ckpt = root / "run" / f"checkpoint_{step:06d}"
        ckpt.mkdir(parents=True)
        save_state(str(ckpt), model, opt, step, [], cfg)
        if step == 0:
            from kpray.data import iter_episodes

            frames = next(iter(iter_episodes(shards, split="train")))["frames"][:4]
            from kpray.train.data import to_device

            images = to_device({"x": torch.from_numpy(frames).permute(0, 3, 1, 2)}, "cpu",
                               model.config.image_size)["x"]
            for s in range(2):
                loss, _ = model(images, step=s)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return root, shards, cfg


def test_untrained_model_is_the_runs_step_zero(tiny_run):
    from kpray.train.loop import load_state

    root, _, cfg = tiny_run
    step0 = load_state(str(root / "run" / "checkpoint_000000"))["model"]
    built = R.untrained_model(cfg).state_dict()     # pixel_grad loss, no backbone: same weights
    assert set(built) == set(step0)
    assert all(torch.equal(built[k], step0[k]) for k in step0)


def test_untrained_model_is_the_start_init_candidates_chose(tiny_run):
    """With init_candidates > 1 the untrained model is the start the run chose at step 0 (the
    checkpoint's init_choice), not the seed's own: built as train_func builds it, chosen in a
    step-0 forward, and rebuilt by untrained_model from the choice alone."""
    from kpray.data import iter_episodes
    from kpray.train.data import to_device
    from kpray.train.loop import seed_everything
    from kpray.train.models import get_adapter

    root, shards, cfg = tiny_run
    cfg = cfg.replace(model_config={**cfg.model_config, "init_candidates": 3})
    seed_everything(cfg.seed)
    model = get_adapter("autolink").build(cfg)
    frames = next(iter(iter_episodes(shards, split="train")))["frames"][:4]
    images = to_device({"x": torch.from_numpy(frames).permute(0, 3, 1, 2)}, "cpu",
                       model.config.image_size)["x"]
    model.train()
    with torch.no_grad():
        model.choose_start(images)
    choice = int(model.init_choice)
    chosen = model.state_dict()
    for guess in range(3):
        built = R.untrained_model(cfg, guess).state_dict()
        same = all(torch.equal(built[k], chosen[k]) for k in chosen
                   if k not in ("init_choice",))
        assert same == (guess == choice), guess


def _job():
    spec = importlib.util.spec_from_file_location("compare_autolink",
                                                  REPO / "jobs" / "compare_autolink.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def test_compare_job_end_to_end(tiny_run, capsys):
    from PIL import Image

    root, shards, _ = tiny_run
    job, out = _job(), root / "cmp"
    assert job.main(["--checkpoint", str(root / "run"), "--data", shards, "--out", str(out)]) == 0
    c = json.loads((out / "comparison.json").read_text())
    assert set(c["rows"]) == {"untrained", "trained"} and c["steps"] == 2 and c["videos"] == 4
    for name in ("untrained", "trained"):
        row = c["rows"][name]
        assert set(row) == {k for k, *_ in R.KEYS}
        assert all(v is not None and math.isfinite(v) for v in row.values()), (name, row)
        assert 0 <= row["limb_same"] <= row["limb_same_or_adjacent"] <= 1
        assert c["regression"][name]["n_train_episodes"] == 2
        assert c["limbs"][name]["n_edges"] == 2                       # cartpole:2: 2 GT edges
        assert len(c["limbs"][name]["assignment"]) == 4
    assert c["rows"]["trained"] != c["rows"]["untrained"]
    assert c["targets"]["joint_f1"] == [">=", 0.65] and c["figure"] == "autolink_graph.png"
    assert Image.open(out / "autolink_graph.png").size[0] > 500
    md = (out / "comparison.md").read_text()
    assert "| metric | untrained | trained | target |" in md and "<= 0.09" in md
    printed = capsys.readouterr().out
    assert "joint F1" in printed and "spread ratio" in printed

    # --regression-episodes 0: the regression rows are n/a, the rest is still computed
    assert job.main(["--checkpoint", str(root / "run" / "checkpoint_000002"), "--data", shards,
                     "--out", str(root / "cmp0"), "--regression-episodes", "0"]) == 0
    c0 = json.loads((root / "cmp0" / "comparison.json").read_text())
    assert c0["rows"]["trained"]["regression_error"] is None
    assert c0["rows"]["trained"]["joint_f1"] == pytest.approx(c["rows"]["trained"]["joint_f1"])
    capsys.readouterr()

    assert job.main(["--checkpoint", str(root / "none"), "--data", shards,
                     "--out", str(root / "bad")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no checkpoint" in err
    assert not (root / "bad").exists()
