"""jobs/gen_data.py and kpray.datagen end to end: real renders, real Ray actors, real tar files."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from kpray.data import iter_episodes
from kpray.datagen import LOCK_FILE, GenError, GenSpec, generate, wait_for_writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "jobs", "gen_data.py")
TINY = dict(dataset="cartpoles", seed=7, episodes=6, test_episodes=2, frames=12, size=48, shard_size=2)


def _shard_digests(manifest):
    return {r["name"]: r["sha256"] for s in ("train", "test") for r in manifest["splits"][s]["shards"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_session):
    """One uninterrupted run with a single worker: the yardstick for the others."""
    out = str(tmp_path_factory.mktemp("ref"))
    manifest = generate(GenSpec(**TINY), out, workers=1, show_progress=False)
    return out, manifest


def test_layout_manifest_and_contract(reference):
    out, m = reference
    names = sorted(f for f in os.listdir(out) if f.endswith(".tar"))
    assert names == ["test-000000.tar"] + [f"train-{k:06d}.tar" for k in range(3)]
    assert os.path.getsize(os.path.join(out, "preview.png")) > 1000
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f) == m
    assert m["splits"]["train"]["episodes"] == 6 and m["splits"]["test"]["episodes"] == 2
    assert all(r["episodes"] == 2 for r in m["splits"]["train"]["shards"])
    assert m["versions"]["mujoco"] and m["versions"]["dm-control"]

    train = list(iter_episodes(out, "train"))
    test = list(iter_episodes(out, "test"))
    assert [e["meta"]["index"] for e in train] == list(range(6))
    # train and test never share an episode
    assert not any(np.array_equal(a["frames"], b["frames"]) for a in train for b in test)
    for ep in train + test:
        t, h, w, c = ep["frames"].shape
        assert (t, h, w, c) == (12, 48, 48, 3) and ep["frames"].dtype == np.uint8
        assert ep["masks"].shape == (12, 48, 48) and ep["masks"].dtype == bool
        j = ep["adjacency"].shape[0]
        assert ep["joints"].shape == (12, j, 2) and ep["joints"].dtype == np.float32
        assert ep["visible"].shape == (12, j)
        assert ep["masks"].any(axis=(1, 2)).all()  # the body is in every frame


def test_same_seed_same_bytes_whatever_the_workers(reference, tmp_path):
    _, ref = reference
    m2 = generate(GenSpec(**TINY), str(tmp_path), workers=2, show_progress=False)
    assert _shard_digests(m2) == _shard_digests(ref)
    assert m2 == ref
    other = generate(GenSpec(**{**TINY, "seed": 8, "episodes": 2}), str(tmp_path / "s8"),
                     workers=2, show_progress=False, preview=False)
    assert _shard_digests(other)["train-000000.tar"] != _shard_digests(ref)["train-000000.tar"]


def test_rerun_renders_only_missing_shards(reference, tmp_path):
    _, ref = reference
    out = str(tmp_path)
    generate(GenSpec(**TINY), out, workers=2, show_progress=False, preview=False)
    os.unlink(os.path.join(out, "train-000001.tar"))
    with open(os.path.join(out, ".train-000002.tar.abc.tmp"), "wb") as f:
        f.write(b"partial")  # what a killed actor leaves behind
    stats = {}
    m = generate(GenSpec(**TINY), out, workers=2, show_progress=False, stats=stats)
    assert stats["rendered"] == ["train-000001.tar"]
    assert m == ref
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@pytest.mark.slow
def test_killed_actor_has_its_shard_redone(reference, tmp_path, ray_session):
    from ray.util.state import list_actors

    _, ref = reference
    spec = GenSpec(**{**TINY, "frames": 40})
    ref40 = None
    stats, result = {}, {}

    def run():
        try:
            result["m"] = generate(spec, str(tmp_path), workers=2, show_progress=False, stats=stats)
        except BaseException as e:  # surfaced below
            result["e"] = e

    th = threading.Thread(target=run)
    th.start()
    pid, deadline = None, time.time() + 120
    while pid is None and time.time() < deadline:
        # this session's cluster by address: other Ray instances may run on the machine
        alive = [a for a in list_actors(address=ray_session.get_runtime_context().gcs_address,
                                        filters=[("class_name", "=", "ShardRenderer"),
                                                 ("state", "=", "ALIVE")]) if a.pid]
        if alive:
            pid = alive[0].pid
        time.sleep(0.2)
    assert pid, "render actors never started"
    time.sleep(1.0)  # mid-shard
    os.kill(pid, signal.SIGKILL)
    th.join(300)
    assert "e" not in result, result.get("e")
    assert stats["redone"], "the killed actor's shard was not redone"
    ref40 = generate(spec, str(tmp_path / "clean"), workers=1, show_progress=False, preview=False)
    assert _shard_digests(result["m"]) == _shard_digests(ref40)


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_manifest(reference, tmp_path):
    _, ref = reference
    out = str(tmp_path / "out")
    args = [sys.executable, JOB, "--dataset", TINY["dataset"], "--seed", str(TINY["seed"]),
            "--episodes", str(TINY["episodes"]), "--test-episodes", str(TINY["test_episodes"]),
            "--frames", str(TINY["frames"]), "--size", str(TINY["size"]),
            "--shard-size", str(TINY["shard_size"]), "--workers", "2", "--out", out, "--no-progress"]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(out) and any(f.endswith(".tar") for f in os.listdir(out)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [f for f in os.listdir(out) if f.endswith(".tar")]
    assert 0 < len(finished) < 4, finished
    assert not os.path.exists(os.path.join(out, "manifest.json"))

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f) == ref
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold_lock(out, seconds):
    """A separate process (like a render actor of another run) holding the writers' lock."""
    os.makedirs(out, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, os.path.join(out, LOCK_FILE), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_start_waits_for_the_writers_of_an_earlier_run(tmp_path):
    out = str(tmp_path / "out")
    holder = _hold_lock(out, 1.5)
    t0 = time.monotonic()
    fd = wait_for_writers(out, timeout_s=30)
    waited = time.monotonic() - t0
    os.close(fd)
    holder.wait()
    assert 1.0 < waited < 20, waited


def test_a_folder_still_being_written_is_refused(tmp_path):
    out = str(tmp_path / "out")
    holder = _hold_lock(out, 30)
    try:
        spec = GenSpec(dataset="cartpoles", episodes=2, test_episodes=1, frames=2, size=32, shard_size=2)
        with pytest.raises(GenError, match="still writing"):
            generate(spec, out, workers=1, show_progress=False, preview=False, lock_timeout_s=0.5)
        assert not [f for f in os.listdir(out) if f.endswith(".tar")]
    finally:
        holder.kill()
        holder.wait()


def _job(*args):
    return subprocess.run([sys.executable, JOB, "--no-progress", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "octopus"], "unknown dataset"),
    (["--dataset", "cartpoles", "--episodes", "0"], "--episodes must be a positive integer"),
    (["--dataset", "cartpoles", "--test-episodes", "-3"], "--test-episodes must be a positive integer"),
    (["--dataset", "cartpoles", "--workers", "0"], "--workers must be a positive integer"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, message):
    out = tmp_path / "out"
    r = _job(*args, "--out", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not out.exists()


def test_unwritable_folder_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = _job("--dataset", "cartpoles", "--out", str(blocker / "sub"))
    assert r.returncode == 2 and "cannot write" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_folder_with_another_dataset_or_seed_is_refused(reference):
    out, _ = reference
    before = sorted(os.listdir(out))
    for change in (["--seed", "8"], ["--dataset", "swimmers"]):
        args = {"--dataset": TINY["dataset"], "--seed": str(TINY["seed"]), "--episodes": "6",
                "--test-episodes": "2", "--frames": "12", "--size": "48", "--shard-size": "2"}
        args.update(dict(zip(change[::2], change[1::2])))
        r = _job(*[x for kv in args.items() for x in kv], "--out", out)
        assert r.returncode == 2 and "holds a different dataset" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(out)) == before


def test_generate_raises_before_writing(tmp_path):
    with pytest.raises(GenError, match="unknown dataset"):
        generate(GenSpec(dataset="nope"), str(tmp_path / "x"), show_progress=False)
    assert not (tmp_path / "x").exists()
