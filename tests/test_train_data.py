"""Training input pipeline, configuration and job command line (no Ray: fast)."""
import itertools
import json
import os

import pytest
import torch

from kpray.train.cli import main as cli_main
from kpray.train.config import ConfigError, TrainConfig, load_config_file, merge, resolve, write_config_file
from kpray.train.data import EpisodeSamples, load_episodes, make_loader, to_device
from rendered import write_rendered_shards

TINY_SKELETON = {"num_points": 6, "pi_width": 4, "psi_width": 4, "background_width": 4,
                 "background_latent": 8}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_rendered_shards(str(tmp_path_factory.mktemp("rendered")), train_shards=[1, 2, 3],
                            test_episodes=2, frames=8, size=32)


def _urls(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith("train-"))


def test_pairs_are_two_different_frames_of_one_episode_and_the_source_next_frame(shards):
    ds = EpisodeSamples(_urls(shards), "pair", seed=0, rank=0, buffer_episodes=1, samples_per_episode=1000)
    frames = load_episodes(shards, "train", 10, 8)
    ends = 0
    for s in itertools.islice(iter(ds), 40):
        assert s["source"].shape == s["target"].shape == s["track"].shape == (3, 32, 32)
        assert s["source"].dtype == torch.uint8
        # all three frames come from the one buffered episode: find it
        src, tgt, nxt = (s[k].permute(1, 2, 0).numpy() for k in ("source", "target", "track"))
        hits = [(i, j, k) for ep in frames for i in range(8) for j in range(8) for k in range(8)
                if (ep["frames"][i] == src).all() and (ep["frames"][j] == tgt).all()
                and (ep["frames"][k] == nxt).all()]
        # the track frame is the one after the source, or the one before at the video's end
        assert any(i != j and k == (i + 1 if i < 7 else 6) for i, j, k in hits), hits
        ends += any(i == 7 for i, _, _ in hits)
    assert ends > 0                                    # the last frame was drawn as a source


def test_ranks_get_different_endless_streams_from_uneven_shards(shards):
    """3 shards of 1, 2, 3 episodes: every rank reads all shards with its own seed, so each rank
    can draw any number of batches (the loop draws exactly `steps`) and the ranks differ."""
    def batches(rank, n):
        it = make_loader(shards, "frame", 4, seed=0, rank=rank, loader_workers=0, buffer_episodes=2,
                         samples_per_episode=2)
        return [next(it)["image"] for _ in range(n)]

    r0, r1, r0_again = batches(0, 12), batches(1, 12), batches(0, 12)
    assert len(r0) == len(r1) == 12          # 12 batches x 4 = 48 frames from 6 episodes
    assert all(torch.equal(a, b) for a, b in zip(r0, r0_again))      # seeded: reproducible
    assert not all(torch.equal(a, b) for a, b in zip(r0, r1))        # ranks see other data


def test_loader_processes_and_resume_seed_change_the_stream(shards):
    a = make_loader(shards, "frame", 4, seed=0, rank=0, start_step=0, loader_workers=0)
    b = make_loader(shards, "frame", 4, seed=0, rank=0, start_step=100, loader_workers=0)
    assert not torch.equal(next(a)["image"], next(b)["image"])
    c = make_loader(shards, "pair", 2, seed=0, rank=0, loader_workers=2)
    x = next(c)
    assert x["source"].shape == (2, 3, 32, 32)


def test_to_device_scales_and_upsamples():
    batch = {"image": torch.full((2, 3, 64, 64), 255, dtype=torch.uint8)}
    out = to_device(batch, "cpu", 128)["image"]
    assert out.shape == (2, 3, 128, 128) and out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out))
    assert to_device(batch, "cpu", 64)["image"].shape == (2, 3, 64, 64)


def test_validation_episodes_are_cut_to_evenly_spaced_frames(shards):
    eps = load_episodes(shards, "test", 5, 4)
    assert len(eps) == 2
    j = eps[0]["adjacency"].shape[0]
    assert eps[0]["frames"].shape == (4, 32, 32, 3) and eps[0]["joints"].shape == (4, j, 2)
    assert load_episodes(shards, "nosuchsplit", 5, 4) == []


# ----------------------------------------------------------------------------- config

def test_precedence_preset_then_file_then_flags(tmp_path):
    base = resolve(TrainConfig(model="skeleton", data="x", preset="swimmers"))
    assert base.lr == 0.005 and base.betas == (0.9, 0.999)          # the paper's
    assert base.clip_grad_norm == 1.0 and base.clip_grad_value == 1.0
    assert base.batch_size == 8
    f = write_config_file({"model": "skeleton", "lr": 0.001,
                           "model_config": {"weights": {"uniform": 3.0}}, "num_points": 12},
                          str(tmp_path / "best.json"))
    cfg = merge(base, load_config_file(f))
    cfg = resolve(merge(cfg, {"lr": 0.002}))
    assert cfg.lr == 0.002 and cfg.model_config["num_points"] == 12
    from kpray.train.models import make_model_config

    m = make_model_config("skeleton", cfg.preset, cfg.model_config)
    w = m.loss_weights()
    assert w.uniform == 3.0 and w.sparse_links == 7000          # swimmers row, one weight changed
    al = resolve(TrainConfig(model="autolink", data="x", model_config={"pretrained": False}))
    assert (al.lr, al.betas, al.batch_size, al.clip_grad_norm) == (1e-4, (0.9, 0.99), 64, None)


@pytest.mark.parametrize("kw, msg", [
    ({"model": "nope"}, "unknown model"),
    ({"steps": 0}, "--steps"),
    ({"num_workers": 3, "batch_size": 8}, "divisible"),
    ({"preset": "nope"}, "unknown preset"),
    ({"model_config": {"bogus": 1}}, "bogus"),
    ({"model_config": {"weights": {"bogus": 1}}}, "bogus"),
    ({"model_config": {"weights": "{sparse_joints:1}"}}, "JSON object"),   # shell ate the quotes
    ({"lr": -1.0}, "--lr"),
    ({"lr_warmup_steps": -1}, "--lr-warmup-steps"),
    ({"lr_decay_steps": -1}, "--lr-decay-steps"),
    ({"steps": 10, "lr_decay_steps": 11}, "--lr-decay-steps"),
    ({"name": "a/b"}, "--name"),
    ({"model_config": {"restart_step": 100, "restart_window": 200}}, "restart_window"),
    ({"model_config": {"transport_patch": 4}}, "transport_patch"),
])
def test_bad_configs_are_refused(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve(TrainConfig(**{"model": "skeleton", "data": "x", **kw}))


# ----------------------------------------------------------------------------- command line

@pytest.mark.parametrize("model, extra, msg", [
    ("skeleton", ["--data", "{missing}"], "no such file"),
    ("skeleton", ["--data", "{shards}", "--preset", "nope"], "unknown preset"),
    ("skeleton", ["--data", "{shards}", "--workers", "3", "--batch-size", "8"], "divisible"),
    ("skeleton", ["--data", "{shards}", "--set", "bogus=1"], "bogus"),
    ("skeleton", ["--data", "{shards}", "--config", "{missing}"], "config file not found"),
    ("skeleton", ["--data", "{empty}"], "no train-"),
    ("autolink", ["--data", "{shards}", "--thickness", "-1", "--random-backbone"], "--thickness"),
    ("autolink", ["--data", "{shards}", "--keypoints", "1", "--random-backbone"], "--keypoints"),
    ("autolink", ["--data", "{shards}", "--perceptual-weights", "{missing}"], "missing"),
    ("autolink", ["--data", "{shards}", "--set", "heatmap_size=12", "--loss", "pixel_grad"],
     "heatmap_size"),
])
def test_job_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, shards, model, extra, msg):
    (tmp_path / "empty").mkdir()
    fill = {"missing": str(tmp_path / "missing"), "shards": shards, "empty": str(tmp_path / "empty")}
    argv = [a.format(**fill) for a in extra] + ["--storage", str(tmp_path / "runs"), "--name", "r"]
    assert cli_main(model, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err and err.startswith(f"train_{model}.py: error:")
    assert not (tmp_path / "runs").exists()


def test_job_refuses_to_resume_a_run_with_other_model_settings(tmp_path, capsys, shards):
    import torch as T

    run = tmp_path / "runs" / "r" / "checkpoint_00000005"
    run.mkdir(parents=True)
    old = TrainConfig(model="skeleton", data=shards, model_config=dict(TINY_SKELETON))
    T.save({"config": old.to_dict()}, run / "state.pt")
    argv = ["--data", shards, "--storage", str(tmp_path / "runs"), "--name", "r", "--points", "9"]
    for k, v in TINY_SKELETON.items():
        if k != "num_points":
            argv += ["--set", f"{k}={json.dumps(v)}"]
    assert cli_main("skeleton", argv) == 2
    assert "num_points" in capsys.readouterr().err


def test_job_help_mentions_every_documented_flag(capsys):
    with pytest.raises(SystemExit):
        cli_main("autolink", ["--help"])
    out = capsys.readouterr().out
    for flag in ("--data", "--preset", "--workers", "--gpu", "--steps", "--batch-size", "--name",
                 "--storage", "--checkpoint-every", "--preview-every", "--config", "--keypoints",
                 "--thickness", "resumes"):
        assert flag in out


def test_flat_tune_names_reach_the_model_config():
    """Optuna/Tune flatten nested spaces as "weights/uniform": merge unflattens them."""
    from kpray.train.models import make_model_config

    cfg = resolve(merge(TrainConfig(model="skeleton", data="x", preset="cartpoles"),
                        {"weights/uniform": 3, "weights/length": 7.5,
                         "model_config/num_points": 9, "lr": 0.01}))
    m = make_model_config("skeleton", cfg.preset, cfg.model_config)
    assert (m.num_points, cfg.lr) == (9, 0.01)
    w = m.loss_weights()
    assert (w.uniform, w.length, w.sparse_links) == (3.0, 7.5, 500)   # cartpoles row otherwise


def test_cli_flags_reach_the_config(shards, tmp_path):
    from kpray.train.cli import build_parser, config_from_args

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")                   # checked to exist here, read when the loss is built
    p = build_parser("autolink")
    cfg = config_from_args(p.parse_args(["--data", shards, "--no-sync-batchnorm",
                                         "--perceptual-weights", str(weights)]), "autolink")
    assert cfg.sync_batchnorm is False and cfg.model_config["perceptual_weights"] == str(weights)
    cfg = config_from_args(p.parse_args(["--data", shards, "--loss", "laplacian",
                                         "--lr-warmup-steps", "250", "--lr-decay-steps", "100",
                                         "--channels-last"]),
                           "autolink")
    assert cfg.sync_batchnorm is True and cfg.model_config["loss"] == "laplacian"
    assert cfg.channels_last is True
    assert cfg.lr_warmup_steps == 250 and cfg.lr_decay_steps == 100


def test_scheduled_lr_by_hand():
    from kpray.train.loop import scheduled_lr

    assert [scheduled_lr(1e-3, 4, s) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert scheduled_lr(1e-3, 0, 0) == 1e-3 and scheduled_lr(1e-3, 1, 0) == 1e-3
    # a half cosine over the last 4 of 10 steps: cos(pi t) for t = 1/4 .. 1
    assert [scheduled_lr(1.0, 0, s, 4, 10) for s in range(10)] == pytest.approx(
        [1, 1, 1, 1, 1, 1, (1 + 2 ** -0.5) / 2, 0.5, (1 - 2 ** -0.5) / 2, 0])
