"""Shared fixtures: one local Ray instance for the whole test session (ray.init costs seconds)."""
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


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False,
                 runtime_env={"env_vars": {"MUJOCO_GL": os.environ["MUJOCO_GL"],
                                           "PYOPENGL_PLATFORM": os.environ["PYOPENGL_PLATFORM"]}})
    yield ray
    ray.shutdown()
