# Two commands on a fresh machine (see README):  make demo   |   make test
PY      ?= python3
PIP     ?= $(PY) -m pip
GL_DEBS := libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)

.PHONY: setup gl deps demo test test-fast bench clean

setup: gl deps

# Headless rendering needs system GL (EGL through Mesa on a CPU machine, the driver on NVIDIA).
gl:
	@dpkg -s $(GL_DEBS) >/dev/null 2>&1 || { \
	  echo "installing $(GL_DEBS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(GL_DEBS) >/dev/null; }

deps:
	$(PIP) install -q --disable-pip-version-check -e ".[dev]"

# A small Cartpoles set with its preview, on this machine's local Ray.
demo: setup
	$(PY) jobs/gen_data.py --dataset cartpoles --episodes 40 --test-episodes 10 --shard-size 10 \
	    --workers 2 --out shards/demo-cartpoles

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_render.py
	$(PY) benchmarks/bench_gen.py

clean:
	rm -rf shards/demo-* .pytest_cache
