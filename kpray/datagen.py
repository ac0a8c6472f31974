"""Render simulated episodes into WebDataset shards with Ray actors.

Layout of an output folder ``DIR``::

    DIR/train-000000.tar ...   shard k holds episodes [k * shard_size, (k + 1) * shard_size)
    DIR/test-000000.tar ...
    DIR/.kpray-gen.json        the generation spec, written first (guards against mixing runs)
    DIR/.kpray-gen.lock        flock: shared by a run's driver and render actors, exclusive to start
    DIR/manifest.json          written last: spec, counts, per-shard episodes/bytes/sha256, versions
    DIR/preview.png            contact sheet with GT joints and skeletons

Guarantees: the episode is a pure function of (dataset, split, seed, index, frames, size,
quality), and shard bytes are reproducible (fixed tar mtime/owner), so the shards and the
manifest do not depend on the number of workers. A shard is written to a hidden temporary file
and renamed into place, so a killed run never leaves a partial shard under a final name; a rerun
renders only the missing shards. An actor that dies, or whose whole node is lost, is replaced and
its shard is redone by the actors that remain; a shard is given up only when it keeps killing
actors on healthy nodes. Render actors outlive a SIGKILLed driver by a few seconds and keep
writing, so a run starts only once every writer of the previous one has let go of the lock (then
it removes their temp files); a finished run removes the temp files of its own lost actors the
same way, once they have exited.
"""
from __future__ import annotations

import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass

from kpray.data import FRAME_CODECS, encode_episode

SPEC_FILE = ".kpray-gen.json"
LOCK_FILE = ".kpray-gen.lock"
MANIFEST = "manifest.json"
FORMAT = "kpray-episodes/1"
SPLITS = ("train", "test")
QUALITIES = ("fast", "full")


class GenError(Exception):
    """Bad input or an output folder that cannot be used; the job prints it on one line, exit 2."""


@dataclass(frozen=True)
class GenSpec:
    """Everything that determines the bytes of a dataset (and nothing that does not)."""

    dataset: str
    seed: int = 0
    episodes: int = 1000
    test_episodes: int = 60
    frames: int = 90
    size: int = 64
    quality: str = "fast"
    shard_size: int = 50
    frame_codec: str = "webp"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def count(self, split: str) -> int:
        return self.episodes if split == "train" else self.test_episodes


@dataclass(frozen=True)
class ShardTask:
    split: str
    shard: int
    first_index: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.shard:06d}.tar"


def validate_spec(spec: GenSpec) -> GenSpec:
    """Check the spec (raising GenError on one line) and canonicalise the dataset name."""
    from sim import parse_dataset

    try:
        ds = parse_dataset(spec.dataset)
    except ValueError as e:
        raise GenError(str(e)) from None
    for field in ("episodes", "test_episodes", "frames", "size", "shard_size"):
        if getattr(spec, field) < 1:
            raise GenError(f"--{field.replace('_', '-')} must be a positive integer, got {getattr(spec, field)}")
    if spec.frames < 2:
        raise GenError(f"--frames must be at least 2 (training samples pairs of frames), got {spec.frames}")
    if spec.size < 16:
        raise GenError(f"--size must be at least 16 pixels, got {spec.size}")
    if spec.quality not in QUALITIES:
        raise GenError(f"--quality must be one of {QUALITIES}, got {spec.quality!r}")
    if spec.frame_codec not in FRAME_CODECS:
        raise GenError(f"--frame-codec must be one of {FRAME_CODECS}, got {spec.frame_codec!r}")
    if spec.seed < 0:
        raise GenError(f"--seed must be >= 0, got {spec.seed}")
    return dataclasses.replace(spec, dataset=ds.name)


def plan_shards(spec: GenSpec) -> list[ShardTask]:
    """All shards of the dataset, test first (small, and evaluation needs it first)."""
    tasks = []
    for split in ("test", "train"):
        n = spec.count(split)
        for k, first in enumerate(range(0, n, spec.shard_size)):
            tasks.append(ShardTask(split, k, first, min(spec.shard_size, n - first)))
    return tasks


def check_out_dir(spec: GenSpec, out: str) -> None:
    """Refuse folders we cannot write or that hold another dataset. Writes nothing."""
    existing = out
    while not os.path.exists(existing):
        parent = os.path.dirname(os.path.abspath(existing))
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise GenError(f"cannot write to {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GenError(f"cannot write to {out}: {existing} is not writable")
    try:  # os.access says yes to root even on a read-only mount: probe, then clean up
        fd, probe = tempfile.mkstemp(prefix=".kpray-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise GenError(f"cannot write to {out}: {e.strerror}") from None
    if existing != out:
        return
    spec_path = os.path.join(out, SPEC_FILE)
    if os.path.exists(spec_path):
        with open(spec_path) as f:
            old = json.load(f)
        diff = [k for k, v in spec.to_json().items() if old.get(k) != v]
        if diff:
            what = ", ".join(f"{k} {old.get(k)!r} (asked {getattr(spec, k)!r})" for k in diff)
            raise GenError(f"{out} holds a different dataset: {what}; choose another --out")
    elif glob.glob(os.path.join(out, "*.tar")):
        raise GenError(f"{out} holds shards that kpray did not write; choose another --out")


def _write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def render_shard(spec: GenSpec, task: ShardTask, out: str, on_episode=None) -> dict:
    """Render one shard's episodes and move the finished tar into place. Returns its record."""
    import webdataset as wds

    from sim import render_episode

    final = os.path.join(out, task.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{task.name}.", suffix=".tmp", dir=out)
    try:
        with os.fdopen(fd, "wb") as f:
            # Fixed mtime and owner: shard bytes depend on the episodes alone.
            sink = wds.TarWriter(f, user="kpray", group="kpray", mtime=0.0)
            for i in range(task.first_index, task.first_index + task.count):
                ep = render_episode(spec.dataset, split=task.split, seed=spec.seed, index=i,
                                    frames=spec.frames, size=spec.size, quality=spec.quality)
                sink.write(encode_episode(ep, f"{task.split}-{i:06d}", spec.frame_codec))
                if on_episode is not None:
                    on_episode(spec.frames)
            sink.close()
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; shards are meant to be shared
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"name": task.name, "split": task.split, "episodes": task.count,
            "first_index": task.first_index, "bytes": os.path.getsize(final),
            "sha256": sha256_file(final)}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("kpray", "mujoco", "dm-control", "webdataset", "numpy", "pillow", "ray"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def build_manifest(spec: GenSpec, records: list[dict]) -> dict:
    from sim import parse_dataset

    records = sorted(records, key=lambda r: (r["split"], r["name"]))
    splits = {}
    for split in SPLITS:
        rs = [r for r in records if r["split"] == split]
        splits[split] = {"episodes": sum(r["episodes"] for r in rs),
                         "frames": sum(r["episodes"] for r in rs) * spec.frames,
                         "bytes": sum(r["bytes"] for r in rs),
                         "shards": [{k: r[k] for k in ("name", "episodes", "first_index", "bytes", "sha256")}
                                    for r in rs]}
    total_frames = splits["train"]["frames"] + splits["test"]["frames"]
    total_bytes = splits["train"]["bytes"] + splits["test"]["bytes"]
    return {"format": FORMAT, "spec": spec.to_json(), "dataset": parse_dataset(spec.dataset).to_json(),
            "splits": splits, "bytes_per_frame": round(total_bytes / max(total_frames, 1), 1),
            "versions": _versions()}


def _init_ray(num_cpus: int | None = None):
    """Join the cluster under ``ray job submit`` (RAY_ADDRESS set); else start a local one."""
    import ray

    if ray.is_initialized():
        return ray
    env = {"env_vars": render_env()}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=env, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, runtime_env=env, log_to_driver=True)
    return ray


def render_env() -> dict:
    """Environment for render workers: headless GL, one rasteriser thread per actor."""
    gl = os.environ.get("MUJOCO_GL", "egl")
    return {"MUJOCO_GL": gl, "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", gl),
            # Mesa's software rasteriser otherwise spawns a thread per core; with one actor per
            # core that oversubscribes the CPU (0 = rasterise in the calling thread, measured
            # 1.3-3x faster at 64x64 with several processes).
            "LP_NUM_THREADS": os.environ.get("LP_NUM_THREADS", "0")}


def _open_lock(out: str) -> int:
    return os.open(os.path.join(out, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)


def hold_writer_lock(out: str) -> int:
    """Take a shared lock on ``out``'s lock file for this process's life; returns its fd.

    The kernel drops it when the process dies, however it dies. (flock is per machine: on a
    multi-node cluster it guards only the writers on the driver's node unless the shared file
    system passes flock through, as NFSv4 and Lustre do.)
    """
    fd = _open_lock(out)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def wait_for_writers(out: str, timeout_s: float) -> int:
    """Wait until no process holds ``out``'s lock; return the fd, locked exclusively.

    Raises GenError after ``timeout_s``: another run (or its still-exiting workers) is writing.
    """
    fd = _open_lock(out)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise GenError(f"another gen_data run is still writing to {out} (waited "
                               f"{timeout_s:g} s for {LOCK_FILE}); wait for it or choose another --out") from None
            time.sleep(0.1)


class ShardRenderer:
    """Ray actor (one CPU): holds a worker process with its imports and GL warm; renders shards."""

    def __init__(self, spec_json: dict, out: str, progress):
        self.spec = GenSpec(**spec_json)
        self.out = out
        self.progress = progress
        self._lock_fd = hold_writer_lock(out)

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        """The id of the Ray node this actor runs on (hex); answering it means it has started."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def render(self, task: ShardTask) -> dict:
        return render_shard(self.spec, task, self.out,
                            on_episode=lambda frames: self.progress.add.remote(1, frames))


class Progress:
    """Ray actor counting rendered episodes and frames across all render actors."""

    def __init__(self):
        self.episodes = 0
        self.frames = 0

    def add(self, episodes: int, frames: int):
        self.episodes += episodes
        self.frames += frames

    def get(self):
        return self.episodes, self.frames


def generate(spec: GenSpec, out: str, workers: int = 2, show_progress: bool = True,
             preview: bool = True, max_shard_retries: int = 3, stats: dict | None = None,
             lock_timeout_s: float = 60.0) -> dict:
    """Render every missing shard of ``spec`` into ``out`` with ``workers`` Ray actors.

    Returns the manifest (also written to ``out/manifest.json``). Raises GenError on bad input
    before writing anything. ``stats``, when given, receives ``rendered`` (shard names rendered
    by this call), ``redone`` (shards whose actor was lost and that were rendered again),
    ``shard_nodes`` (shard name -> Ray node id of the actor that wrote it) and ``failures``
    (see :func:`_render_with_ray`). Waits up to ``lock_timeout_s`` for the writers of an
    earlier run in ``out`` to exit.
    """
    stats = {} if stats is None else stats
    spec = validate_spec(spec)
    if workers < 1:
        raise GenError(f"--workers must be a positive integer, got {workers}")
    check_out_dir(spec, out)

    os.makedirs(out, exist_ok=True)
    lock_fd = wait_for_writers(out, lock_timeout_s)
    try:
        _write_json_atomic(os.path.join(out, SPEC_FILE), spec.to_json())
        for stale in glob.glob(os.path.join(out, ".*.tmp")):  # left by a killed run
            os.unlink(stale)
        # Shared from here on: our actors join in, and a concurrent run waits for us all.
        fcntl.flock(lock_fd, fcntl.LOCK_SH)
        manifest = _generate_locked(spec, out, workers, show_progress, preview, max_shard_retries,
                                    stats)
        _remove_temp_files_of_exited_writers(out, lock_fd, timeout_s=lock_timeout_s)
        return manifest
    finally:
        os.close(lock_fd)


def _remove_temp_files_of_exited_writers(out: str, lock_fd: int, timeout_s: float) -> None:
    """A lost actor leaves its half-written ``.NAME.tmp``; once every writer has exited (our
    shared lock upgraded to exclusive), remove them. If some writer is still alive after
    ``timeout_s`` (or lives on another machine without shared flock), leave them to the next
    run, which removes them before it starts."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)
    for stale in glob.glob(os.path.join(out, ".*.tmp")):
        os.unlink(stale)


def _generate_locked(spec, out, workers, show_progress, preview, max_shard_retries, stats) -> dict:
    # A finished manifest means nothing is missing unless shards were deleted since.
    tasks = plan_shards(spec)
    done = {t.name for t in tasks if os.path.exists(os.path.join(out, t.name))}
    todo = [t for t in tasks if t.name not in done]
    records = _known_records(out, spec, tasks, done)

    stats.update(rendered=[t.name for t in todo], redone=[])
    if todo:
        records += _render_with_ray(spec, todo, out, workers, show_progress, max_shard_retries,
                                    stats)
    manifest = build_manifest(spec, records)
    _write_json_atomic(os.path.join(out, MANIFEST), manifest)
    if preview:
        from kpray.preview import write_preview

        write_preview(out, os.path.join(out, "preview.png"))
    return manifest


def _known_records(out: str, spec: GenSpec, tasks: list[ShardTask], done: set[str]) -> list[dict]:
    """Records of shards already on disk, from the old manifest when it still matches the file."""
    old = {}
    path = os.path.join(out, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            m = json.load(f)
        for split in SPLITS:
            for r in m["splits"][split]["shards"]:
                old[r["name"]] = r
    records = []
    for t in tasks:
        if t.name not in done:
            continue
        size = os.path.getsize(os.path.join(out, t.name))
        r = old.get(t.name)
        digest = r["sha256"] if r and r["bytes"] == size else sha256_file(os.path.join(out, t.name))
        records.append({"name": t.name, "split": t.split, "episodes": t.count,
                        "first_index": t.first_index, "bytes": size, "sha256": digest})
    return records


def _render_with_ray(spec, todo, out, workers, show_progress, max_shard_retries, stats,
                     actor_start_timeout_s: float = 600.0) -> list[dict]:
    """Render ``todo`` on a pool of render actors spread by Ray over the cluster's nodes.

    An actor that is lost is dropped and replaced (the replacement starts wherever a CPU frees
    up), and its shard goes back to the queue for the actors that remain. Whether a loss counts
    against the shard's ``max_shard_retries`` depends on where it happened: an actor that cannot
    be reached (``ActorUnavailableError``: what the driver sees first when a whole node goes) or
    whose node the cluster has marked dead is a node failure and does not count; an actor that
    died on a node that is still alive (a crash, an OOM kill) does. ``stats`` receives ``redone``
    (shard names, once per loss), ``shard_nodes`` (shard name -> id of the node that wrote it)
    and ``failures`` (one dict per lost actor: shard, node, node_lost, seconds since start).
    """
    ray = _init_ray()
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cpus = int(ray.cluster_resources().get("CPU", 1))
    n_actors = max(1, min(workers, len(todo), cpus))
    if n_actors < workers and show_progress:
        print(f"using {n_actors} render actors (asked {workers}; {len(todo)} shards to render, "
              f"{cpus} CPUs in the cluster)", file=sys.stderr)
    # The counter lives on the driver's node, which the run cannot outlive anyway (with no
    # placement it could land on a worker node, and losing that node would end the run).
    here = ray.get_runtime_context().get_node_id()
    progress = ray.remote(num_cpus=0)(Progress).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
    # No restarts by Ray: a lost actor is replaced by a new one below, and its shard goes to
    # whichever actor is free first instead of waiting for the restart.
    Renderer = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(ShardRenderer)
    env = {"env_vars": render_env()}
    args = (spec.to_json(), os.path.abspath(out), progress)

    pending = deque(todo)
    starting, idle, inflight = {}, [], {}  # ready ref -> actor; [(actor, node)]; ref -> (actor, node, task)
    everyone, records, counted = [], [], {}
    stats.setdefault("shard_nodes", {})
    stats.setdefault("failures", [])

    def spawn():
        actor = Renderer.options(runtime_env=env).remote(*args)
        everyone.append(actor)
        starting[actor.node.remote()] = actor

    def node_alive(node) -> bool:
        return any(n["NodeID"] == node and n["Alive"] for n in ray.nodes())

    for _ in range(n_actors):
        spawn()
    total_eps = sum(t.count for t in todo)
    bar = _progress_bar(total_eps, spec.frames, show_progress)
    t0 = time.perf_counter()
    stalled_since = None
    try:
        while pending or inflight:
            while idle and pending:
                actor, node = idle.pop()
                task = pending.popleft()
                inflight[actor.render.remote(task)] = (actor, node, task)
            ready, _ = ray.wait(list(inflight) + list(starting), num_returns=1, timeout=0.5)
            for ref in ready:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        idle.append((actor, ray.get(ref)))
                    except RayActorError as e:
                        if e.actor_init_failed:     # its constructor raised: so would the next
                            first = str(e).strip().splitlines()[-1]
                            raise GenError(f"a render actor failed to start: {first}") from None
                        ray.kill(actor, no_restart=True)   # lost before it started (its node went)
                        spawn()
                    continue
                actor, node, task = inflight.pop(ref)
                try:
                    records.append(ray.get(ref))
                except RayActorError as e:
                    # The rename is atomic: redoing the shard leaves nothing partial or doubled.
                    node_lost = isinstance(e, ActorUnavailableError) or not node_alive(node)
                    stats["failures"].append({"shard": task.name, "node": node, "node_lost": node_lost,
                                              "at_s": round(time.perf_counter() - t0, 2)})
                    if not node_lost:
                        counted[task.name] = counted.get(task.name, 0) + 1
                        if counted[task.name] > max_shard_retries:
                            raise GenError(f"shard {task.name} failed {counted[task.name]} times on "
                                           f"healthy nodes; giving up") from None
                    pending.appendleft(task)
                    stats["redone"].append(task.name)
                    ray.kill(actor, no_restart=True)
                    spawn()
                    if show_progress:
                        why = "its node was lost" if node_lost else "it died"
                        print(f"\nrender actor lost ({why}); redoing {task.name}", file=sys.stderr)
                    continue
                stats["shard_nodes"][task.name] = node
                idle.append((actor, node))
            if inflight or idle:
                stalled_since = None
            elif stalled_since is None:
                stalled_since = time.perf_counter()
            elif time.perf_counter() - stalled_since > actor_start_timeout_s:
                raise GenError(f"no render actor could start for {actor_start_timeout_s:g} s "
                               f"({len(pending)} shards left; the cluster has "
                               f"{ray.cluster_resources().get('CPU', 0):g} CPUs)")
            eps, frames = ray.get(progress.get.remote())
            bar.update(min(eps, total_eps), frames, time.perf_counter() - t0)
    finally:
        bar.close()
        for a in everyone:
            ray.kill(a, no_restart=True)
        ray.kill(progress)
    return records


class _progress_bar:
    """tqdm bar over episodes, with frames/s in the postfix."""

    def __init__(self, total_episodes: int, frames_per_episode: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total_episodes, unit="ep", desc="rendering", disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr)
        self.last = 0

    def update(self, episodes: int, frames: int, elapsed_s: float):
        if episodes > self.last:
            self.bar.update(episodes - self.last)
            self.last = episodes
        self.bar.set_postfix_str(f"{frames / max(elapsed_s, 1e-9):.0f} frames/s", refresh=False)

    def close(self):
        self.bar.close()
