"""Shared fixtures: one local Ray instance for the whole test session (ray.init costs seconds),
and a multi-node cluster on this machine for the ``multinode`` tests."""
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

# One pytest process imports both the renderer (dm_control -> Mesa EGL, which carries its own
# LLVM) and torch. If Mesa is loaded first, torch's lazy `import triton` (its optimisers pull it
# in) segfaults; loaded in the other order both work. Production never mixes them in a process
# (render actors import no torch, training imports no sim), so this is a test-process concern.
try:
    import triton  # noqa: F401
except ImportError:
    pass


def start_local_ray():
    """The session's one-node Ray: 4 CPUs, dashboard on, headless GL in the workers."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False,
                 runtime_env={"env_vars": {"MUJOCO_GL": os.environ["MUJOCO_GL"],
                                           "PYOPENGL_PLATFORM": os.environ["PYOPENGL_PLATFORM"]}})
    return ray


@pytest.fixture(scope="session")
def ray_session():
    yield start_local_ray()
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    """A multi-node cluster on this machine (tests/cluster.py: a head with no CPUs and three
    1-CPU worker nodes), this process its driver, for one test module. One Ray at a time: the
    session's local Ray is shut down first and started again afterwards if it was running (two
    Ray instances on one machine confuse Ray Train's placement-group cleanup)."""
    import ray

    from cluster import LocalCluster

    had_local = ray.is_initialized()
    ray.shutdown()
    c = LocalCluster(workers=3)
    try:
        c.connect()
        yield c
    finally:
        c.shutdown()
        if had_local:
            start_local_ray()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny skeleton model in the training checkpoint format, and 3 real rendered test
    episodes of cartpoles with 1, 2 and 3 poles."""
    import torch
    import webdataset as wds

    from kpray.data import encode_episode
    from kpray.train.config import TrainConfig, resolve
    from kpray.train.loop import save_state
    from kpray.train.models import get_adapter
    from sim import render_episode

    root = tmp_path_factory.mktemp("skeleton-tools")
    shards = root / "shards"
    shards.mkdir()
    with wds.TarWriter(str(shards / "test-000000.tar"), mtime=0.0) as sink:
        for i, k in enumerate((1, 2, 3)):
            ep = render_episode(f"cartpole:{k}", "test", seed=0, index=i, frames=5, size=64)
            sink.write(encode_episode(ep, f"test-{i:06d}"))
    cfg = resolve(TrainConfig(model="skeleton", data=str(shards), preset="cartpoles", steps=1,
                              model_config={"pi_width": 8, "psi_width": 8, "background_width": 8,
                                            "num_points": 6}))
    torch.manual_seed(1)
    model = get_adapter("skeleton").build(cfg)
    ckpt = root / "run" / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    save_state(str(ckpt), model, torch.optim.Adam(model.parameters()), 1, [], cfg)
    return root, shards, cfg


def load_script(relpath: str):
    """A script of the repository (``jobs/...`` or ``benchmarks/...``) imported as a module."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
