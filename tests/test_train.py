"""Training on Ray Train with real DDP: two gloo CPU workers, tiny models, real rendered shards.

Uses the session's one local Ray (``ray_session`` in conftest.py). Each ``fit`` starts a worker
group (10-20 s on this 2-core machine, most of each test); the models are shrunk through
``model_config``. Every test here takes over 20 s: the module is marked slow.
"""
import glob
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from kpray.train import NonFiniteLossError, TrainConfig, build_trainer, fit, resolve
from kpray.train.loop import load_state
from rendered import write_rendered_shards

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "skeleton": {"num_points": 6, "pi_width": 4, "psi_width": 4, "background_width": 4,
                 "background_latent": 8},
    "autolink": {"num_keypoints": 4, "detector_width": 4, "decoder_width": 4, "decoder_depth": 2,
                 "loss": "lpips", "perceptual_net": "alex", "pretrained": False,
                 "thickness": 1e-3},
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 train shards for 2 workers (uneven: 1, 2 and 3 episodes) and a test shard."""
    return write_rendered_shards(str(tmp_path_factory.mktemp("shards")), train_shards=[1, 2, 3],
                            test_episodes=2, frames=8, size=64)


def _cfg(shards, storage, name, model="skeleton", **kw):
    base = dict(model=model, data=shards, model_config=dict(TINY[model]), steps=6, batch_size=4,
                num_workers=2, name=name, storage=str(storage), checkpoint_every=3,
                preview_every=3, log_every=1, val_episodes=2, val_frames=4, val_train_episodes=2,
                loader_workers=0, buffer_episodes=2, max_failures=0)
    base.update(kw)
    return resolve(TrainConfig(**base))


def _checkpoints(run_dir):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "checkpoint_0*")))


def test_two_workers_train_in_sync_on_uneven_shards(ray_session, shards, tmp_path):
    # the track term joins at step 3: its next frames come through the loader on both ranks,
    # and a term that joins mid-run is logged from then on
    mc = {**TINY["skeleton"], "track_weight": 0.5, "track_start_step": 3}
    cfg = _cfg(shards, tmp_path, "ddp", model_config=mc)
    t = time.time()
    result = fit(build_trainer(cfg))
    m = result.metrics
    assert m["step"] == 6 and m["done"]
    assert len(m["param_sha1_per_rank"]) == 2 and m["ranks_in_sync"], m["param_sha1_per_rank"]
    # cross-rank BatchNorm (sync_batchnorm, default on): the same running statistics on both
    # ranks after the last step (each rank's own batch would leave them different)
    assert len(m["buffer_sha1_per_rank"]) == 2 and m["buffers_in_sync"], m["buffer_sha1_per_rank"]
    # rank 0's checkpoint is what both ranks hold
    state = load_state(result.checkpoint.path)
    assert state["step"] == 6 and len(state["rng"]) == 2 and "optimizer" in state
    assert state["config"]["model_config"] == mc
    # validation metrics for Tune, logging and previews
    for k in ("val_bcc", "val_joint_f1", "val_struct_f1", "loss_recon", "loss_track",
              "images_per_s", "data_wait_frac"):
        assert k in m and m[k] == m[k], k          # present and not NaN
    logs = os.path.join(tmp_path, "ddp", "logs")
    assert sorted(os.listdir(os.path.join(logs, "previews"))) == ["step_0000003.png", "step_0000006.png"]
    assert glob.glob(os.path.join(logs, "tensorboard", "events.out.tfevents.*"))
    print(f"2-worker skeleton run: {time.time() - t:.1f} s")


def test_autolink_two_workers_uneven_shards_do_not_hang(ray_session, shards, tmp_path):
    # restart_below huge: the start is replaced at step 2 on both ranks alike (restart_step)
    cfg = _cfg(shards, tmp_path, "al", model="autolink", steps=4, checkpoint_every=2,
               preview_every=2, lr_warmup_steps=3, lr_decay_steps=2, channels_last=True,
               model_config={**TINY["autolink"], "restart_step": 2, "restart_below": 1e9,
                             "restart_max": 1})
    result = fit(build_trainer(cfg))
    m = result.metrics
    assert m["step"] == 4 and m["ranks_in_sync"]
    state = load_state(result.checkpoint.path)
    # channels_last: every convolution weight was trained (and saved) in NHWC, the restart's
    # fresh start included (it is copied into the converted parameters)
    convs = [v for v in state["model"].values() if v.dim() == 4 and v.shape[-1] > 1]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last)
                         and not v.is_contiguous() for v in convs)
    assert int(state["model"]["restarts"]) == 1 and int(state["model"]["start_step"]) == 2
    # Adam's moments were cleared at the restart: 2 updates since (steps 2 and 3), not 4
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {2}
    # computed (finite); its size means nothing here: a 4-step model's keypoints barely move
    # between images, so the linear fit on them is ill-conditioned
    for k in ("val_regression_error", "val_regression_error_plain", "val_spread_ratio"):
        assert k in m and math.isfinite(m[k]) and m[k] >= 0, k
    assert m["alpha"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(os.path.join(tmp_path, "al", "logs", "tensorboard"),
                          size_guidance={"images": 0}).Reload()
    tags = ev.Tags()
    for tag in ("loss/total", "loss/perceptual", "model/alpha", "train/lr", "train/images_per_s"):
        assert tag in tags["scalars"], tag
    assert "model/edge_weights" in tags["images"] and "preview" in tags["images"]
    # the learning rate of each update, warmed up over 3 steps, decayed over the last 2
    # (log_every=1): the third update is both (half the cosine, times 3/3)
    lrs = [(e.step, e.value) for e in ev.Scalars("train/lr")]
    assert [s for s, _ in lrs] == [1, 2, 3, 4]
    assert [v for _, v in lrs] == pytest.approx([cfg.lr / 3, cfg.lr * 2 / 3, cfg.lr / 2, 0],
                                                rel=1e-6, abs=1e-12)   # float32 in TensorBoard
    # validation of the untrained model (step 0), then at every checkpoint
    assert [e.step for e in ev.Scalars("val/regression_error")] == [0, 2, 4]


def test_killed_worker_is_restarted_from_latest_checkpoint(ray_session, shards, tmp_path):
    from ray.util.state import list_actors

    steps = 16
    cfg = _cfg(shards, tmp_path, "kill", steps=steps, checkpoint_every=4, preview_every=0,
               max_failures=2, step_sleep_s=0.4, val_every=0)
    out = {}
    th = threading.Thread(target=lambda: out.update(result=fit(build_trainer(cfg))), daemon=True)
    th.start()
    run_dir = os.path.join(tmp_path, "kill")
    snapshot = os.path.join(run_dir, "checkpoint_manager_snapshot.json")

    def registered():   # the controller lists a checkpoint once it is registered, not just written
        try:
            with open(snapshot) as f:
                return "checkpoint_00000004" in f.read()
        except OSError:
            return False

    deadline = time.time() + 180
    while not registered() and time.time() < deadline:
        time.sleep(0.2)
    assert registered(), "no checkpoint was registered"
    # this session's Ray (other Ray instances may run on the machine)
    address = ray_session.get_runtime_context().gcs_address
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"),
                                                    ("state", "=", "ALIVE")])
    assert len(workers) == 2
    os.kill(workers[-1].pid, signal.SIGKILL)
    th.join(timeout=240)
    assert not th.is_alive(), "run did not finish after the worker was killed"
    m = out["result"].metrics
    assert m["step"] == steps and m["ranks_in_sync"]
    assert 4 <= m["resumed_from_step"] < steps          # restarted from a checkpoint, not step 0
    assert _checkpoints(run_dir)[-1] == f"checkpoint_{steps:08d}"


def test_non_finite_loss_stops_with_clear_error_and_no_bad_checkpoint(ray_session, shards, tmp_path):
    # NaN on one rank only (the last): the all-reduced verdict stops both ranks, no hang.
    cfg = _cfg(shards, tmp_path, "nan", steps=12, checkpoint_every=3, inject_nonfinite_at=4,
               max_failures=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 4: term 'recon' = nan"):
        fit(build_trainer(cfg))
    run_dir = os.path.join(tmp_path, "nan")
    # the last periodic checkpoint, and the (finite) state just before the failing update
    assert _checkpoints(run_dir) == ["checkpoint_00000003", "checkpoint_00000004_nonfinite"]
    for name in _checkpoints(run_dir):
        state = load_state(os.path.join(run_dir, name))
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["step"] == 4


def test_job_trains_then_rerun_resumes_from_its_checkpoint(ray_session, shards, tmp_path):
    """The real job in a subprocess. RAY_ADDRESS points at this session's Ray, as under
    `ray job submit`, so the job joins it (and ignores --num-cpus). Rerunning the same command
    with more steps prints 'resuming from step N' and continues from there."""
    cmd = [sys.executable, os.path.join(REPO, "jobs", "train_skeleton.py"), "--data", shards,
           "--preset", "cartpoles", "--workers", "2", "--batch-size", "4", "--name", "job",
           "--storage", str(tmp_path), "--checkpoint-every", "2", "--preview-every", "2",
           "--num-cpus", "2", "--loader-workers", "0", "--max-failures", "0",
           "--val-episodes", "1"]
    for k, v in TINY["skeleton"].items():
        cmd += ["--set", f"{k}={v}"]
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    p1 = subprocess.run(cmd + ["--steps", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert p1.returncode == 0, p1.stderr[-3000:]
    assert "done: step=2" in p1.stdout and "resuming" not in p1.stdout + p1.stderr
    p2 = subprocess.run(cmd + ["--steps", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "resuming from step 2" in p2.stdout + p2.stderr
    assert "done: step=4" in p2.stdout
    assert _checkpoints(os.path.join(tmp_path, "job")) == [f"checkpoint_{s:08d}" for s in (2, 4)]
