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
