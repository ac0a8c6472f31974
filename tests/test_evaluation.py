"""Evaluation core, report writers, figures and jobs/evaluate.py, on synthetic episodes."""
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kpray import metrics as M
from kpray import plots, report
from kpray.evaluation import EvaluationError, evaluate_videos, load_predictions

REPO = Path(__file__).resolve().parents[1]
T, H, W = 6, 32, 32


def make_episode(index, dataset="spiders", split="test", J=4, seed=0):
    rng = np.random.default_rng(seed + index)
    frames = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    joints = rng.uniform(2, 29, (T, J, 2)).astype(np.float32)
    adj = np.zeros((J, J), bool)
    for j in range(1, J):                      # a chain
        adj[j - 1, j] = adj[j, j - 1] = True
    return {"frames": frames, "masks": np.zeros((T, H, W), bool), "joints": joints,
            "visible": np.ones((T, J), bool), "adjacency": adj,
            "meta": {"dataset": dataset, "index": index, "split": split}}


def perfect_prediction(ep, perm_seed=0):
    J = ep["joints"].shape[1]
    perm = np.random.default_rng(perm_seed).permutation(J)
    return {"points": ep["joints"][:, perm].astype(np.float64),
            "adj": ep["adjacency"][np.ix_(perm, perm)]}


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------- evaluate_videos

def test_evaluate_videos_perfect_and_outputs(tmp_path):
    eps_ = [make_episode(i) for i in range(3)] + [make_episode(10, dataset="cartpoles", J=3)]
    eps_.append(make_episode(99, split="train"))                     # other split: skipped
    preds = {ep["meta"]["index"]: perfect_prediction(ep) for ep in eps_[:4]}
    # one imperfect spiders video: drop a joint (P = J - 1) and shift the others by 1 px
    bad = preds[2]
    preds[2] = {"points": bad["points"][:, :3] + [1.0, 0.0], "adj": bad["adj"][:3, :3]}
    out = tmp_path / "eval"
    summary = evaluate_videos(eps_, preds, out, n_figures=2, model_name="skel")

    sp, cp = summary["datasets"]["spiders"], summary["datasets"]["cartpoles"]
    assert sp["n_videos"] == 3 and cp["n_videos"] == 1
    assert sp["eps"] == 0.20 and cp["eps"] == 0.15
    assert cp["joints"]["dist"] == 0 and cp["joints"]["f1"] == 1
    assert cp["joints"]["consistency"] == 1 and cp["structure"]["bcc"] == 1
    # spiders: two perfect videos, one with 1 px shift = 2/31 normalised units and P = 3, J = 4
    assert sp["joints"]["dist"] == pytest.approx((2 / 31) / 3)
    assert sp["joints"]["diff"] == pytest.approx(1 / 3)
    assert sp["joints"]["recall"] == pytest.approx((1 + 1 + 0.75) / 3)

    data = json.loads((out / "metrics.json").read_text())
    assert data["model"] == "skel" and data["split"] == "test"
    assert [v["index"] for v in data["videos"]] == [10, 0, 1, 2]
    assert data["datasets"]["spiders"]["joints"]["nan_count"]["dist"] == 0

    tables = report.parse_markdown_tables((out / "tables.md").read_text())
    assert len(tables) == 2
    t1 = {row["Dataset"]: row for row in tables[0]}
    t2 = {row["Dataset"]: row for row in tables[1]}
    assert list(t1) == ["Spiders", "Cartpoles"]                     # the paper's row order
    assert t2["Cartpoles"]["skel: Dist ↓"] == "0.000"
    assert t2["Cartpoles"]["skel: F1 ↑"] == "1.00"
    assert t2["Cartpoles"]["Anciukevicius et al. (paper): Dist ↓"] == "0.086"
    assert t2["Spiders"]["Kulkarni et al. [11] (paper): Diff ↓"] == "4.40"
    assert t1["Cartpoles"]["Anciukevicius et al. (paper): Bcc ↑"] == "0.94"
    assert t1["Spiders"]["Li et al. [28] (paper): Rec ↑"] == "0.66"
    assert t1["Spiders"]["N"] == "3"

    figs = sorted(p.name for p in (out / "figures").iterdir())
    assert figs == ["cartpoles_00010_connectivity.png", "cartpoles_00010_skeleton.png",
                    "spiders_00000_connectivity.png", "spiders_00000_skeleton.png",
                    "spiders_00001_connectivity.png", "spiders_00001_skeleton.png"]
    for f in figs:
        w, h = png_size(out / "figures" / f)
        assert w >= 300 and h >= 200 and (out / "figures" / f).stat().st_size > 5000


def test_eps_override_and_unknown_dataset(tmp_path):
    ep = make_episode(0, dataset="newbody")
    pred = {0: perfect_prediction(ep)}
    with pytest.raises(EvaluationError, match="epsilon"):
        evaluate_videos([ep], pred, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    s = evaluate_videos([ep], pred, tmp_path / "b", eps=0.05, n_figures=0)
    assert s["datasets"]["newbody"]["eps"] == 0.05
    assert "newbody" in (tmp_path / "b" / "tables.md").read_text()


@pytest.mark.parametrize("case", ["missing", "extra", "frames", "adj", "nan", "empty", "dup"])
def test_bad_input_writes_nothing(tmp_path, case):
    eps_ = [make_episode(i) for i in range(2)]
    preds = {i: perfect_prediction(ep) for i, ep in enumerate(eps_)}
    if case == "missing":
        del preds[1]
    elif case == "extra":
        preds[7] = preds[0]
    elif case == "frames":
        preds[0] = {"points": preds[0]["points"][:-1], "adj": preds[0]["adj"]}
    elif case == "adj":
        preds[0] = {"points": preds[0]["points"], "adj": np.zeros((2, 2), bool)}
    elif case == "nan":
        preds[0]["points"][0, 0, 0] = np.nan
    elif case == "empty":
        eps_ = []
    elif case == "dup":
        eps_.append(make_episode(1, dataset="swimmers"))
    with pytest.raises(EvaluationError):
        evaluate_videos(eps_, preds, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_prediction_is_scored_not_raised(tmp_path):
    ep = make_episode(0)
    s = evaluate_videos([ep], {0: {"points": np.zeros((T, 0, 2)), "adj": np.zeros((0, 0))}},
                        tmp_path, n_figures=1)
    j = s["datasets"]["spiders"]["joints"]
    assert math.isnan(j["dist"]) and j["nan_count"]["dist"] == 1 and j["f1"] == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["videos"][0]["joints"]["dist"] \
        is None


# --------------------------------------------------------------------------- predictions file

def test_load_predictions_round_trip(tmp_path):
    ep = make_episode(3)
    p = perfect_prediction(ep)
    np.savez(tmp_path / "p.npz", points_3=p["points"], adj_3=p["adj"], model=np.array("m1"))
    preds, model = load_predictions(tmp_path / "p.npz")
    assert model == "m1" and list(preds) == [3]
    assert np.array_equal(preds[3]["points"], p["points"])
    np.savez(tmp_path / "q.npz", points_3=p["points"])
    with pytest.raises(EvaluationError, match="adj_3"):
        load_predictions(tmp_path / "q.npz")
    np.savez(tmp_path / "r.npz", foo=p["points"])
    with pytest.raises(EvaluationError, match="foo"):
        load_predictions(tmp_path / "r.npz")
    with pytest.raises(EvaluationError, match="not found"):
        load_predictions(tmp_path / "none.npz")


# --------------------------------------------------------------------------- job entry point

def _job_main():
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import evaluate
    finally:
        sys.path.pop(0)
    return evaluate


def test_job_main_with_predictions(tmp_path, capsys):
    import webdataset as wds

    from kpray.data import encode_episode

    eps_ = [make_episode(i, dataset="swimmers") for i in range(2)]
    shards = tmp_path / "shards"
    shards.mkdir()
    with wds.TarWriter(str(shards / "test-000000.tar"), mtime=0.0) as sink:  # a real shard
        for ep in eps_:
            sink.write(encode_episode(ep, f"test-{ep['meta']['index']:06d}"))
    np.savez(tmp_path / "p.npz", **{f"{k}_{i}": v for i, ep in enumerate(eps_)
                                    for k, v in perfect_prediction(ep).items()})
    job = _job_main()
    rc = job.main(["--predictions", str(tmp_path / "p.npz"), "--data", str(shards),
                   "--out", str(tmp_path / "o"), "--figures", "1"])
    assert rc == 0
    s = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert s["datasets"]["swimmers"]["joints"]["f1"] == 1 and s["model"] == "ours"
    # bad input: one line, exit 2, nothing written
    capsys.readouterr()
    rc = job.main(["--predictions", str(tmp_path / "p.npz"), "--data", str(shards),
                   "--dataset", "spiders", "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no episodes" in err
    assert not (tmp_path / "o2").exists()


def test_job_missing_predictions_file_exits_2(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), "--predictions",
                        str(tmp_path / "none.npz"), "--data", "shards", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not found" in r.stderr
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- writers

def test_write_metrics_json_nan_and_numpy(tmp_path):
    p = report.write_metrics_json(tmp_path / "m.json", {"a": np.float32(0.5), "b": math.nan,
                                                        "c": np.arange(3), "d": {"e": np.inf}})
    assert json.loads(p.read_text()) == {"a": 0.5, "b": None, "c": [0, 1, 2], "d": {"e": None}}


def test_markdown_report_layout():
    res = {"swimmers": {"joints": {k: 0.5 for k in M.JOINT_KEYS} | {"n_videos": 60},
                        "structure": {k: math.nan for k in M.STRUCTURE_KEYS}
                        | {"n_videos": 60}}}
    text = report.markdown_report(res, model_name="run1", eps={"swimmers": 0.2})
    t1, t2 = report.parse_markdown_tables(text)
    header1 = list(t1[0])
    assert header1[:7] == ["Dataset", "N", "run1: Acc ↑", "run1: Bcc ↑", "run1: F1 ↑",
                           "run1: Prec ↑", "run1: Rec ↑"]
    assert len(header1) == 2 + 3 * 5 and len(t2[0]) == 2 + 3 * 6
    assert t1[0]["run1: Acc ↑"] == "n/a"
    assert t1[0]["Anciukevicius et al. (paper): Acc ↑"] == "0.89"
    assert t2[0]["run1: Dist ↓"] == "0.500" and t2[0]["run1: Diff ↓"] == "0.50"
    assert t2[0]["Kulkarni et al. [11] (paper): Constcy ↑"] == "0.72"


def test_plots_standalone(tmp_path):
    ep = make_episode(0, J=5)
    pred = ep["joints"][:, [4, 0, 1]] + 0.5
    adj = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)
    matching = M.video_matching(pred, ep["joints"])
    a = plots.plot_video_skeletons(tmp_path / "s.png", ep["frames"], pred, adj, ep["joints"],
                                   ep["adjacency"], matching=matching, n_frames=4)
    b = plots.plot_connectivity(tmp_path / "c.png", adj, ep["adjacency"], matching=matching)
    wa, ha = png_size(a)
    assert ha > wa  # 4 rows of 3 panels
    assert png_size(b)[0] > 500
    assert plots.connectivity_order(3, matching).tolist() == [1, 2, 0]
    _, pc = plots.joint_colours(5, matching, 3)
    gc, _ = plots.joint_colours(5)
    assert np.allclose(pc[0], gc[4]) and np.allclose(pc[1], gc[0])


TINY_MODELS = {
    "skeleton": ("cartpoles", {"pi_width": 8, "psi_width": 8, "background_width": 8, "num_points": 6}),
    "autolink": (None, {"num_keypoints": 4, "detector_width": 8, "decoder_width": 8,
                        "loss": "pixel_grad", "pretrained": False}),
}


@pytest.mark.parametrize("model_name", ["skeleton", "autolink"])
def test_job_evaluates_a_checkpoint(tmp_path, model_name, capsys):
    """A real model saved in the training checkpoint format, run over real rendered episodes."""
    import torch
    import webdataset as wds

    from kpray.data import encode_episode
    from kpray.train.config import TrainConfig, resolve
    from kpray.train.loop import save_state
    from kpray.train.models import get_adapter
    from sim import render_episode

    shards = tmp_path / "shards"
    shards.mkdir()
    with wds.TarWriter(str(shards / "test-000000.tar"), mtime=0.0) as sink:
        for i in range(2):
            ep = render_episode("cartpole:2", "test", seed=0, index=i, frames=6, size=64)
            sink.write(encode_episode(ep, f"test-{i:06d}"))
    preset, mc = TINY_MODELS[model_name]
    cfg = resolve(TrainConfig(model=model_name, data=str(shards), preset=preset, steps=1,
                              model_config=mc))
    model = get_adapter(model_name).build(cfg)
    ckpt = tmp_path / "run" / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    save_state(str(ckpt), model, torch.optim.Adam(model.parameters()), 1, [], cfg)

    job = _job_main()
    for path in (ckpt, tmp_path / "run"):  # a checkpoint folder, or the run folder (newest)
        out = tmp_path / f"out-{path.name}"
        assert job.main(["--checkpoint", str(path), "--data", str(shards), "--out", str(out),
                         "--figures", "1"]) == 0
        s = json.loads((out / "metrics.json").read_text())
        assert s["model"] == f"{model_name} step 1"
        assert s["datasets"]["cartpole:2"]["joints"]["n_videos"] == 2
        if model_name == "skeleton":
            assert "regression" not in s
        elif path == ckpt:  # no train split yet: the regression says why it is missing
            assert s["regression"] == {"protocol": "h36m", "error": None,
                                       "skipped": f"no train split shards in {shards}"}
            with wds.TarWriter(str(shards / "train-000000.tar"), mtime=0.0) as sink:
                for i in range(3):  # AutoLink's regression is fitted on the train split
                    ep = render_episode("cartpole:2", "train", seed=1, index=100 + i, frames=6,
                                        size=64)
                    sink.write(encode_episode(ep, f"train-{i:06d}"))
        else:
            reg = s["regression"]
            assert reg["protocol"] == "h36m" and reg["swap"] is None     # no left/right joints
            assert reg["joints"] == 3 and reg["joint_names"] == ["hinge_1", "hinge_2", "tip"]
            assert reg["n_train_frames"] == 18 and reg["n_test_frames"] == 12
            assert reg["n_train_episodes"] == 3 and reg["n_test_episodes"] == 2
            assert 0 <= reg["error"] < 10 and 0 <= reg["plain_error"] < 10
            assert reg["spread_ratio"] > 0 and reg["image_size"] == 64
            assert "keypoint regression (h36m)" in capsys.readouterr().out.splitlines()[-1]
            # --regression-episodes caps the fitting episodes; 0 turns the regression off
            assert job.main(["--checkpoint", str(path), "--data", str(shards), "--out",
                             str(out), "--figures", "0", "--regression-episodes", "1",
                             "--regression-protocol", "plain"]) == 0
            reg = json.loads((out / "metrics.json").read_text())["regression"]
            assert reg["n_train_frames"] == 6 and reg["protocol"] == "plain"
            assert reg["error"] == pytest.approx(reg["plain_error"])
            assert job.main(["--checkpoint", str(path), "--data", str(shards), "--out",
                             str(out), "--figures", "0", "--regression-episodes", "0"]) == 0
            assert "regression" not in json.loads((out / "metrics.json").read_text())
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), "--checkpoint",
                        str(tmp_path / "nothing"), "--data", str(shards), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no checkpoint" in r.stderr and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- keypoint regression

WALKER = ["neck", "hip", "knee_r", "ankle_r", "toe_r", "knee_l", "ankle_l", "toe_l"]
WALKER_SWAP = [0, 1, 5, 6, 7, 2, 3, 4]


def walker_episode(index, split, T=5, S=64, names=WALKER, flip=0.0, seed=0):
    """Synthetic episode of a walker-like body (iter_episodes' format); GT left/right labels
    exchanged in a share ``flip`` of the frames."""
    rng = np.random.default_rng([seed, index])
    J = len(names)
    joints = rng.uniform(2, S - 3, (T, J, 2))
    if flip:
        swap = M.lr_swap_permutation(names)
        f = rng.random(T) < flip
        joints[f] = joints[f][:, swap]
    return {"frames": rng.integers(0, 255, (T, S, S, 3), dtype=np.uint8),
            "masks": np.zeros((T, S, S), bool), "joints": joints.astype(np.float32),
            "visible": np.ones((T, J), bool), "adjacency": np.eye(J, dtype=bool),
            "meta": {"dataset": "walker", "index": index, "split": split, "n_joints": J,
                     "joint_names": list(names)}}


def test_most_common_body():
    from kpray.evaluation import episode_body, most_common_body

    eps_ = [walker_episode(0, "test"), walker_episode(1, "test", names=["a", "b", "c"]),
            walker_episode(2, "test")]
    assert episode_body(eps_[1]) == (3, ("a", "b", "c"))
    assert most_common_body(eps_) == (8, tuple(WALKER))
    assert most_common_body(eps_[1:2]) == (3, ("a", "b", "c"))
    with pytest.raises(EvaluationError):
        most_common_body([])


def test_regression_block_protocols():
    """Keypoints = true joints; half the test GT left/right flipped: h36m ~0, plain large."""
    from kpray.evaluation import regression_block

    tr = np.concatenate([walker_episode(i, "train", T=50)["joints"] for i in range(4)])
    te_eps = [walker_episode(10 + i, "test", T=50, flip=0.5) for i in range(2)]
    te_gt = np.concatenate([ep["joints"] for ep in te_eps])
    te_kp = np.concatenate([walker_episode(10 + i, "test", T=50)["joints"] for i in range(2)])
    b = regression_block(tr, tr, te_kp, te_gt, 64, joint_names=WALKER)
    assert b["protocol"] == "h36m" and b["swap"] == WALKER_SWAP and b["joints"] == 8
    assert b["error"] == pytest.approx(0, abs=1e-9) and b["plain_error"] > 0.1
    assert b["n_train_frames"] == 200 and b["n_test_frames"] == 100 and b["n_test_swapped"] > 10
    assert b["spread_ratio"] == pytest.approx(1.0)
    p = regression_block(tr, tr, te_kp, te_gt, 64, joint_names=WALKER, protocol="plain")
    assert p["swap"] is None and p["error"] == b["plain_error"]
    t = regression_block(tr, tr, te_kp, te_gt, 64, joint_names=WALKER, protocol="taichi")
    assert t["protocol"] == "taichi" and t["swap"] is None and t["error"] > 0.05
    n = regression_block(tr, tr, te_kp, te_gt, 64, joint_names=None)
    assert n["swap"] is None and n["error"] > 0.1                  # nothing says which is left
    with pytest.raises(EvaluationError, match="protocol"):
        regression_block(tr, tr, te_kp, te_gt, 64, protocol="h3.6m")
    with pytest.raises(EvaluationError, match="regression"):
        regression_block(tr, tr[:, :3], te_kp, te_gt, 64)


def test_evaluate_videos_extra_block(tmp_path):
    ep = make_episode(0)
    s = evaluate_videos([ep], {0: perfect_prediction(ep)}, tmp_path / "a", n_figures=0,
                        extra={"regression": {"error": 0.25}})
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["regression"] == \
        {"error": 0.25} == s["regression"]
    with pytest.raises(EvaluationError, match="datasets"):
        evaluate_videos([ep], {0: perfect_prediction(ep)}, tmp_path / "b", extra={"datasets": 1})
    assert not (tmp_path / "b").exists()


def test_autolink_regression_untrained_model():
    """autolink_regression on a freshly built (untrained) AutoLink and synthetic episodes."""
    import torch

    from kpray.models.autolink import AutoLink, AutoLinkConfig
    from kpray.train.models import get_adapter
    from kpray.train.predict import autolink_regression

    torch.manual_seed(0)
    model = AutoLink(AutoLinkConfig(image_size=64, num_keypoints=4, pretrained=False))
    model.train()
    adapter = get_adapter("autolink")
    test = [walker_episode(i, "test") for i in range(3)]
    test.append(walker_episode(3, "test", names=["hinge_1", "tip"]))    # another body: left out
    consumed = []

    def train_iter():
        for i in range(10):
            ep = walker_episode(20 + i, "train", names=WALKER if i != 1 else ["a", "b"])
            consumed.append(i)
            yield ep

    b = autolink_regression(model, adapter, train_iter(), test, max_train_episodes=3)
    assert model.training                                  # put back in its previous mode
    assert consumed == [0, 1, 2, 3]                         # lazily read: 3 walkers, 1 skipped
    assert b["protocol"] == "h36m" and b["swap"] == WALKER_SWAP and b["joints"] == 8
    assert b["joint_names"] == WALKER and b["image_size"] == 64
    assert b["n_train_episodes"] == 3 and b["n_train_frames"] == 15
    assert b["n_test_episodes"] == 3 and b["n_test_frames"] == 15
    # the same figures from the adapter's keypoints and the metrics directly
    model.eval()
    with torch.no_grad():
        kp = {i: adapter.keypoints(model, walker_episode(i, "x")["frames"]) for i in
              (0, 1, 2, 20, 22, 23)}
    tr_kp = np.concatenate([kp[i] for i in (20, 22, 23)])
    tr_gt = np.concatenate([walker_episode(i, "x")["joints"] for i in (20, 22, 23)])
    te_kp = np.concatenate([kp[i] for i in (0, 1, 2)])
    te_gt = np.concatenate([ep["joints"] for ep in test[:3]])
    assert b["error"] == pytest.approx(M.regression_error(
        tr_kp, tr_gt, te_kp, te_gt, 64, protocol="h36m", swap=WALKER_SWAP), rel=1e-4)
    assert b["plain_error"] == pytest.approx(M.regression_error(tr_kp, tr_gt, te_kp, te_gt, 64),
                                             rel=1e-4)
    assert b["spread_ratio"] == pytest.approx(M.spread_ratio(te_kp, te_gt), rel=1e-4)
    with pytest.raises(EvaluationError, match="no train episode"):
        autolink_regression(model, adapter, [walker_episode(30, "train", names=["a", "b"])],
                            test)
