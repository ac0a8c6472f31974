"""Searches on Ray Tune + Optuna: real Ray, real TorchTrainers, real rendered shards, tiny sizes."""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from dataclasses import replace as dataclasses_replace

from kpray.datagen import GenSpec, generate
from kpray.train.config import TrainConfig, load_config_file, merge, resolve
from kpray.tune import SKELETON_GRID, SearchSpec, run_search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNE_JOB = os.path.join(ROOT, "jobs", "tune_skeleton.py")
TINY_MODEL = ["--set", "pi_width=8", "--set", "psi_width=8", "--set", "background_width=8",
              "--set", "num_points=8"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    out = str(tmp_path_factory.mktemp("cartpoles"))
    generate(GenSpec(dataset="cartpoles", seed=3, episodes=4, test_episodes=2, frames=12,
                     shard_size=2), out, workers=2, show_progress=False, preview=False)
    return out


def _job_args(shards, name, storage, samples=3, steps=4, extra=()):
    return [sys.executable, TUNE_JOB, "--data", shards, "--preset", "cartpoles",
            "--samples", str(samples), "--workers-per-trial", "1", "--steps", str(steps),
            "--checkpoint-every", "2", "--batch-size", "2", "--val-episodes", "1",
            "--max-concurrent", "1", "--seed", "5", "--name", name, "--storage", storage,
            *TINY_MODEL, *extra]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _params(rows):
    return sorted(tuple(float(r[f"w_{k}"]) for k in sorted(SKELETON_GRID)) for r in rows)


@pytest.fixture(scope="module")
def finished_search(shards, tmp_path_factory):
    """A whole 3-sample search, uninterrupted: the yardstick for the resume test."""
    storage = str(tmp_path_factory.mktemp("runs"))
    base = TrainConfig(data=shards, preset="cartpoles", steps=4, batch_size=2, num_workers=1,
                       checkpoint_every=2, val_episodes=1, preview_every=0, seed=5,
                       model_config={"pi_width": 8, "psi_width": 8, "background_width": 8,
                                     "num_points": 8})
    spec = SearchSpec(model="skeleton", base=base, samples=3, name="full", storage=storage,
                      seed=5, max_concurrent=1)
    out = run_search(spec, progress=False)
    return spec, out


@pytest.mark.slow
def test_search_writes_results_summary_plot_and_best_preset(finished_search):
    spec, out = finished_search
    root = out["dir"]
    rows = _rows(os.path.join(root, "results.csv"))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"TERMINATED"}
    for r in rows:
        assert int(r["steps_done"]) == 4
        assert 0 <= float(r["val_bcc"]) <= 1 and r["val_joint_f1"] != ""
        for k, grid in SKELETON_GRID.items():
            assert float(r[f"w_{k}"]) in grid
    best = max(rows, key=lambda r: float(r["val_bcc"]))
    summary = open(os.path.join(root, "summary.md")).read()
    assert f"Best: trial `{best['trial_id']}`" in summary and summary.count("| TERMINATED |") == 3
    with open(os.path.join(root, "objective.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # The best preset is a --config FILE the train jobs accept, holding the best trial's weights.
    preset = load_config_file(os.path.join(root, "best_config.json"))
    cfg = resolve(merge(TrainConfig(model="skeleton", data=spec.base.data), preset))
    assert cfg.model_config["weights"] == {k: float(best[f"w_{k}"]) for k in SKELETON_GRID}


@pytest.mark.slow
def test_killed_driver_resumes_to_exactly_the_samples(ray_session, shards, finished_search, tmp_path):
    """SIGKILL the driver while a trial is mid-way; rerun: 3 trials, the interrupted one resumed
    from its checkpoint, and the sampler's sequence is the uninterrupted run's."""
    spec, out = finished_search
    # Both runs join this session's Ray, as under `ray job submit`: a second local Ray instance
    # on the machine breaks Ray Train's placement-group cleanup, and a finished trial's CPU then
    # stays reserved (measured: the next trial waited 5 minutes for it, then was killed unstarted).
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    storage = str(tmp_path / "runs")
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"step_sleep_s": 1.5}))  # time to kill it mid-trial
    # 8 steps: time to kill the second trial after its first checkpoint and before it finishes.
    args = _job_args(shards, "resumed", storage, steps=8, extra=["--config", str(slow)])
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    trials = os.path.join(storage, "resumed", "trials")
    deadline = time.time() + 400

    def checkpointed():
        """Trials whose TorchTrainer has registered a checkpoint (listed in its snapshot: a
        checkpoint folder appears a moment before the run's state knows it)."""
        out = []
        for t in os.listdir(trials) if os.path.isdir(trials) else []:
            try:
                with open(os.path.join(trials, t, "checkpoint_manager_snapshot.json")) as f:
                    if "checkpoint_0" in f.read():
                        out.append(t)
            except OSError:
                pass
        return out

    # kill once the second trial has registered its first checkpoint (step 2 of 8): mid-way
    while time.time() < deadline and proc.poll() is None and len(checkpointed()) < 2:
        time.sleep(0.5)
    assert len(checkpointed()) == 2, f"the second trial never checkpointed: {checkpointed()}"
    time.sleep(1.0)   # > TUNE_GLOBAL_CHECKPOINT_S: Tune's state has been saved since
    assert proc.poll() is None, "the search ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _rows(os.path.join(storage, "resumed", "results.csv"))
    assert len(done_before) == 1  # written after the first finished trial

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = _rows(os.path.join(storage, "resumed", "results.csv"))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"TERMINATED"}
    assert all(int(r["steps_done"]) == 8 for r in rows)
    # none lost or duplicated: every TorchTrainer folder belongs to one of the 3 final trials
    assert sorted(os.listdir(trials)) == sorted(f"trial-{r['trial_id']}" for r in rows)
    resumed = [r for r in rows if float(r.get("resumed_from_step") or 0) > 0]
    assert resumed, "no trial continued from its checkpoint"
    # same seed, same space: the same three samples as the uninterrupted search
    assert _params(rows) == _params(_rows(os.path.join(out["dir"], "results.csv")))


def _refused(shards, tmp_path, extra, message):
    args = _job_args(shards, "bad", str(tmp_path / "runs"), extra=extra)
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (extra, r.stderr[-1500:])
    lines = r.stderr.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("tune_skeleton.py: error:"), (extra, lines[-3:])
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.parametrize("extra, message", [
    (["--preset", "octopus"], "preset"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["--data", "/nonexistent/shards"], "no such file or folder"),
])
def test_bad_input_is_refused_before_anything_starts(shards, tmp_path, extra, message):
    _refused(shards, tmp_path, extra, message)


@pytest.mark.slow
def test_impossible_resources_are_refused(shards, tmp_path):
    _refused(shards, tmp_path, ["--workers-per-trial", "16", "--batch-size", "16"], "the cluster has")


def test_check_resources():
    from kpray.train.config import ConfigError
    from kpray.tune import check_resources

    base = TrainConfig(num_workers=2)
    cpu = SearchSpec(model="skeleton", base=base)
    assert check_resources(cpu, base, {"CPU": 8}) == 4  # trials that fit at once
    assert check_resources(dataclasses_replace(cpu, cpus_per_worker=0.5), base, {"CPU": 2}) == 2
    gpu = dataclasses_replace(cpu, gpus_per_trial=1)
    assert check_resources(gpu, base, {"CPU": 64, "GPU": 3}) == 3
    with pytest.raises(ConfigError, match="needs 4 CPUs"):
        check_resources(dataclasses_replace(cpu, cpus_per_worker=2), base, {"CPU": 2})
    with pytest.raises(ConfigError, match="GPUs but the cluster has 0"):
        check_resources(gpu, base, {"CPU": 64})


def test_same_name_with_another_space_is_refused(shards, finished_search):
    spec, out = finished_search
    args = _job_args(shards, "full", spec.storage, samples=5)
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "another search" in r.stderr, r.stderr[-1500:]


def _free_port():
    return _free_ports(1)[0]


def _free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket is held until all are bound (one at a time, the OS
    may hand the same port out twice, and `ray start` refuses two components on one port)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_for_dashboard(port: int, head, timeout_s: float) -> None:
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert head.poll() is None, "ray start --head exited: see head.log in the test's tmp_path"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise AssertionError(f"the head's dashboard did not come up in {timeout_s} s")


@pytest.mark.slow
def test_ray_job_submit_to_a_head(shards, tmp_path):
    """`ray start --head` on local ports with its own temp folder, `ray job submit` a tiny search,
    then stop that head only (a machine-wide `ray stop` would end this session's Ray too)."""
    names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
             "object-manager-port")
    port, dash, *others = _free_ports(2 + len(names))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a private loopback head
    env.pop("RAY_ADDRESS", None)
    # Short: Ray's unix sockets live under it, and socket paths are limited to 107 bytes.
    temp = tempfile.mkdtemp(prefix="kr-", dir="/tmp")
    log = open(tmp_path / "head.log", "w")
    # Every port of its own: the defaults (e.g. the dashboard agent's 52365) are held by this
    # session's Ray, and a clash leaves the head without a job agent.
    ports = [f"--{name}={p}" for name, p in zip(names, others)]
    head = subprocess.Popen(["ray", "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
                             *ports, f"--temp-dir={temp}", "--num-cpus=2", "--block"], env=env,
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        storage = str(tmp_path / "runs")
        submit = ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ROOT,
                  "--", "python", "jobs/tune_skeleton.py", *_job_args(shards, "job", storage, samples=1,
                                                                      steps=2)[2:]]
        _wait_for_dashboard(dash, head, timeout_s=240)
        deadline = time.time() + 180
        while True:  # the job agent comes up a little after the dashboard
            r = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
            if "try again later" not in r.stdout + r.stderr or time.time() > deadline:
                break
            time.sleep(3)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert "succeeded" in r.stdout + r.stderr
        rows = _rows(os.path.join(storage, "job", "results.csv"))
        assert len(rows) == 1 and rows[0]["status"] == "TERMINATED"
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
        except ProcessLookupError:                       # the head had already exited
            pass
        time.sleep(3)
        try:
            os.killpg(head.pid, signal.SIGKILL)  # gcs/raylet can outlive the TERM
        except ProcessLookupError:
            pass
        head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
    import ray

    assert ray.is_initialized() and ray.cluster_resources().get("CPU")  # the session's Ray lives on


@pytest.mark.slow
def test_diverging_trials_are_errored_with_their_message(shards, tmp_path):
    """Every trial's loss turns NaN at step 2: each is marked errored with the non-finite-loss
    message, the search still runs all its samples and writes its results. (In this process, on
    the session's Ray: with two local Ray instances on one machine, Ray Train's placement-group
    cleaner cannot find its cluster and an errored trial's resources are never freed.)"""
    base = TrainConfig(data=shards, preset="cartpoles", steps=4, batch_size=2, num_workers=1,
                       checkpoint_every=2, val_episodes=1, preview_every=0, seed=5,
                       inject_nonfinite_at=2,
                       model_config={"pi_width": 8, "psi_width": 8, "background_width": 8,
                                     "num_points": 8})
    spec = SearchSpec(model="skeleton", base=base, samples=2, name="nan", storage=str(tmp_path),
                      seed=5, max_concurrent=1)
    out = run_search(spec, progress=False)
    rows = _rows(os.path.join(out["dir"], "results.csv"))
    assert len(rows) == 2 and {row["status"] for row in rows} == {"ERROR"}
    assert all("non-finite loss at step 2" in row["error"] for row in rows), [row["error"] for row in rows]
    assert out["best"] is None and not os.path.exists(os.path.join(out["dir"], "best_config.json"))
