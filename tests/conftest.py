"""Shared fixtures: one local Ray instance for the whole test session (ray.init costs seconds)."""
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False,
                 runtime_env={"env_vars": {"MUJOCO_GL": os.environ["MUJOCO_GL"],
                                           "PYOPENGL_PLATFORM": os.environ["PYOPENGL_PLATFORM"]}})
    yield ray
    ray.shutdown()
