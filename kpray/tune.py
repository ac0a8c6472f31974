"""Hyperparameter searches on Ray Tune + Optuna, resumable, one TorchTrainer per trial.

::

    spec = SearchSpec(model="skeleton", base=TrainConfig(data="shards/cartpoles", preset="cartpoles",
                      steps=2000, num_workers=2), samples=50, name="sk-cartpoles", storage="runs")
    run_search(spec)          # rerun the same spec to resume

The searches the papers describe:

- skeleton model: random search over a grid of each of the seven loss weights (the grid covers
  the paper's selected values for every dataset), objective validation Bcc (maximise);
- AutoLink: edge thickness on a log scale (default 1e-5 to 1e-1), objective validation
  regression error (minimise).

Ray 2.60 is Train V2: a trial is a function that builds and fits a TorchTrainer named after the
trial id, under ``STORAGE/NAME/trials``; ``TuneReportCallback`` forwards its reports to Tune.
Resume: ``Tuner.restore`` keeps finished trials, reruns unfinished and errored ones (their
TorchTrainer finds its own latest checkpoint, so their step count does not restart) and
restores the searcher (Optuna's study, sampler RNG included), so the experiment ends with exactly
``samples`` trials.

Written to ``STORAGE/NAME/`` after every finished trial and at the end: ``results.csv``,
``summary.md``, ``objective.png`` and ``best_config.json`` (a ``--config FILE`` for train jobs).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field

from kpray.train.config import ConfigError, TrainConfig, merge, resolve

SPACE_FILE = "kpray-search.json"
HEAD_RESOURCE = "node:__internal_head__"   # Ray's resource of the head node (1 unit)

# Grids that cover the paper's selected weights (supplementary VIII) for every dataset; the joint
# weight also goes to 0.3 and 1, where our loss prefers the true skeleton given points on it
# (benchmarks/structure_optimum.py; the paper's own choices there are unknown).
SKELETON_GRID = {
    "recon": [1.0, 10.0, 100.0],
    "contiguity": [0.0, 0.0001, 0.001, 0.01],
    "near": [1.0, 10.0, 100.0],
    "sparse_joints": [0.0002, 0.001, 0.005, 0.01, 0.05, 0.1, 0.3, 1.0],
    "sparse_links": [1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 7000.0],
    "uniform": [1.0, 5.0, 10.0, 16.0, 20.0],
    "length": [10.0, 100.0, 1000.0],
}
THICKNESS_RANGE = (1e-5, 1e-1)

OBJECTIVES = {"skeleton": ("val_bcc", "max"), "autolink": ("val_regression_error", "min")}
# Metrics shown beside the objective in the summary.
ALSO_REPORTED = {"skeleton": ["val_joint_f1", "val_struct_f1", "val_dist", "val_num_joints"],
                 "autolink": ["val_bcc", "val_joint_f1", "val_alpha"]}


@dataclass
class SearchSpec:
    """One search: the base training config, the space, the search algorithm, its resources."""

    model: str                       # "skeleton" | "autolink"
    base: TrainConfig                # data, preset, steps, workers per trial, ...
    samples: int = 20
    name: str = "search"
    storage: str = "runs"            # local folder or URI of shared storage
    sampler: str = "random"          # "random" | "tpe"
    asha: bool = False               # ASHA early stopping on the objective
    seed: int = 0                    # the sampler's seed
    gpus_per_trial: float = 0.0      # GPUs per trial (split over its workers); 0: CPU + gloo
    cpus_per_worker: float = 1.0     # CPUs reserved per training worker
    max_concurrent: int | None = None  # None: as many as the cluster's resources allow
    thickness_range: tuple = THICKNESS_RANGE
    grid: dict = field(default_factory=lambda: dict(SKELETON_GRID))

    def space_json(self) -> dict:
        """What defines the search (a rerun with another one under the same name is refused)."""
        if self.model == "skeleton":
            space = {f"w_{k}": {"choice": list(v)} for k, v in self.grid.items()}
        else:
            space = {"thickness": {"loguniform": list(self.thickness_range)}}
        return {"model": self.model, "space": space, "sampler": self.sampler, "seed": self.seed,
                "asha": self.asha, "samples": self.samples, "objective": OBJECTIVES[self.model]}


def param_space(spec: SearchSpec) -> dict:
    from ray import tune

    if spec.model == "skeleton":
        return {f"w_{k}": tune.choice(list(v)) for k, v in spec.grid.items()}
    lo, hi = spec.thickness_range
    return {"thickness": tune.loguniform(lo, hi)}


def trial_overrides(model: str, params: dict) -> dict:
    """Tune's sampled params -> TrainConfig overrides (what ``--config FILE`` holds)."""
    if model == "skeleton":
        return {"model_config": {"weights": {k[2:]: float(v) for k, v in params.items()
                                             if k.startswith("w_")}}}
    return {"model_config": {"thickness": float(params["thickness"])}}


def check_spec(spec: SearchSpec) -> TrainConfig:
    """Validate everything before Ray starts (one-line ConfigError); returns the base config."""
    if spec.model not in OBJECTIVES:
        raise ConfigError(f"unknown model {spec.model!r}")
    if not isinstance(spec.samples, int) or spec.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {spec.samples}")
    if spec.sampler not in ("random", "tpe"):
        raise ConfigError(f"--sampler must be random or tpe, got {spec.sampler!r}")
    if spec.gpus_per_trial < 0 or spec.cpus_per_worker <= 0:
        raise ConfigError("--gpus-per-trial must be >= 0 and CPUs per worker > 0")
    lo, hi = spec.thickness_range
    if not (0 < lo < hi):
        raise ConfigError(f"thickness range must satisfy 0 < low < high, got {spec.thickness_range}")
    if not spec.name or "/" in spec.name:
        raise ConfigError(f"--name must be a plain folder name, got {spec.name!r}")
    base = spec.base.replace(model=spec.model, use_gpu=spec.gpus_per_trial > 0)
    # Every sampled point must give a valid config: check the corners of the space.
    corners = []
    if spec.model == "skeleton":
        corners = [{f"w_{k}": min(v) for k, v in spec.grid.items()},
                   {f"w_{k}": max(v) for k, v in spec.grid.items()}]
    else:
        corners = [{"thickness": lo}, {"thickness": hi}]
    for c in corners:
        resolve(merge(base, trial_overrides(spec.model, c), source="search space"))
    return resolve(base)


def check_resources(spec: SearchSpec, base: TrainConfig, resources: dict) -> int:
    """Trials that fit at once in ``resources`` (``ray.cluster_resources()``); ConfigError if none."""
    cpus = base.num_workers * spec.cpus_per_worker
    have_cpu = resources.get("CPU", 0)
    if cpus > have_cpu:
        raise ConfigError(f"a trial needs {cpus:g} CPUs ({base.num_workers} workers x "
                          f"{spec.cpus_per_worker:g}) but the cluster has {have_cpu:g}")
    fit = int(have_cpu // cpus)
    if spec.gpus_per_trial:
        have_gpu = resources.get("GPU", 0)
        if spec.gpus_per_trial > have_gpu:
            raise ConfigError(f"a trial needs {spec.gpus_per_trial:g} GPUs but the cluster has "
                              f"{have_gpu:g}")
        fit = min(fit, int(have_gpu // spec.gpus_per_trial))
    return max(1, fit)


def experiment_dir(spec: SearchSpec) -> str:
    return _join(_storage(spec.storage), spec.name)


def _storage(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _join(a: str, *b: str) -> str:
    return "/".join([a.rstrip("/"), *b]) if "://" in a else os.path.join(a, *b)


# ----------------------------------------------------------------------------- files on storage

def _fs(path: str):
    """(pyarrow filesystem, path within it); local paths use the local filesystem."""
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def write_bytes(path: str, data: bytes) -> None:
    """Write a small file atomically on local disk; plainly on URIs (object stores are atomic)."""
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    fs, p = _fs(path)
    fs.create_dir(os.path.dirname(p), recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def read_text(path: str) -> str | None:
    import pyarrow.fs as pafs

    fs, p = _fs(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def check_same_space(spec: SearchSpec) -> None:
    """An existing experiment under this name must have been started with the same space."""
    old = read_text(_join(experiment_dir(spec), SPACE_FILE))
    if old is None:
        return
    old, new = json.loads(old), json.loads(json.dumps(spec.space_json()))
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"experiment {experiment_dir(spec)} was started with another search "
                          f"({', '.join(diff)} differ); use another --name")


# ----------------------------------------------------------------------------- the trial

def make_trial_fn(spec: SearchSpec, base: TrainConfig):
    """The Tune trainable: builds and fits one TorchTrainer for the sampled params."""
    trials_storage = _join(experiment_dir(spec), "trials")
    base_dict = base.to_dict()
    model, cpus_per_worker = spec.model, spec.cpus_per_worker
    objective = OBJECTIVES[spec.model][0]

    def trial(params: dict) -> None:
        import ray.tune
        from ray.tune.integration.ray_train import TuneReportCallback

        from kpray.train.trainer import build_trainer, fit

        class ReportWithObjective(TuneReportCallback):
            """A diverged run's last report has its error but no objective, and Tune's searcher
            indexes the objective: report it as NaN (a failed value) so the trial errors alone."""

            def after_report(self, run_context, metrics, checkpoint):
                metrics = [{objective: float("nan"), **m} for m in metrics]
                super().after_report(run_context, metrics, checkpoint)

        trial_id = ray.tune.get_context().get_trial_id()
        cfg = resolve(merge(TrainConfig.from_dict(base_dict), trial_overrides(model, params),
                            source="trial"))
        # Named after the trial: a rerun of this trial resumes from its own latest checkpoint.
        cfg = cfg.replace(name=f"trial-{trial_id}", storage=trials_storage, log_dir=None)
        fit(build_trainer(cfg, callbacks=[ReportWithObjective()], cpus_per_worker=cpus_per_worker))

    return trial


# ----------------------------------------------------------------------------- results

def trial_rows(spec: SearchSpec, trials) -> list[dict]:
    """One row per trial: id, status, every hyperparameter, every reported metric, steps done."""
    rows = []
    for t in sorted(trials, key=lambda t: t.trial_id):
        last = dict(t.last_result or {})
        row = {"trial_id": t.trial_id, "status": t.status}
        row.update({k: v for k, v in sorted((t.config or {}).items())})
        row["steps_done"] = last.get("step", 0)
        err = last.get("error") or (_error_message(t) if t.status == "ERROR" else "")
        row["error"] = err or ""
        for k, v in sorted(last.items()):
            if k in row or k in _TUNE_BOOKKEEPING or k.startswith("config") or isinstance(v, (dict, list)):
                continue
            row[k] = v
        rows.append(row)
    return rows


# Tune's own per-result fields: not metrics of ours.
_TUNE_BOOKKEEPING = {"timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip",
                     "time_since_restore", "iterations_since_restore", "training_iteration", "date",
                     "done", "trial_id", "experiment_tag", "checkpoint_path", "checkpoint_dir_name",
                     "should_checkpoint"}


def _error_message(trial) -> str:
    """The last non-empty line of an errored trial's message (Tune keeps it, or its file)."""
    path = getattr(trial, "error_file", None) or ""
    msg = getattr(trial, "error_message", None)
    if not msg and path and os.path.exists(path):
        with open(path) as f:
            msg = f.read()
    msg = (msg or "errored").strip().splitlines()
    return next((m for m in reversed(msg) if m.strip()), "errored")[:300]


def best_row(spec: SearchSpec, rows: list[dict]) -> dict | None:
    metric, mode = OBJECTIVES[spec.model]
    ok = [r for r in rows if _finite(r.get(metric))]
    if not ok:
        return None
    return (max if mode == "max" else min)(ok, key=lambda r: r[metric])


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def rows_to_csv(rows: list[dict]) -> str:
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def summary_markdown(spec: SearchSpec, rows: list[dict]) -> str:
    metric, mode = OBJECTIVES[spec.model]
    params = [k for k in (rows[0] if rows else {}) if k.startswith("w_") or k == "thickness"]
    shown = [metric] + [m for m in ALSO_REPORTED[spec.model] if any(m in r for r in rows)]
    status = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    lines = [f"# Search `{spec.name}` ({spec.model})", "",
             f"Objective: `{metric}` ({'maximise' if mode == 'max' else 'minimise'}); sampler "
             f"{spec.sampler} (seed {spec.seed}){', ASHA' if spec.asha else ''}; "
             f"{len(rows)} of {spec.samples} trials: "
             + ", ".join(f"{n} {s.lower()}" for s, n in sorted(status.items())) + ".", ""]
    best = best_row(spec, rows)
    if best:
        lines += [f"Best: trial `{best['trial_id']}`, {metric} = {best[metric]:.4g}; preset written "
                  f"to `best_config.json` (use `--config best_config.json`).", ""]
    order = sorted(rows, key=lambda r: (not _finite(r.get(metric)),
                                        -(r.get(metric) or 0) if mode == "max" else (r.get(metric) or 0)))
    head = ["trial", "status", "steps"] + params + shown
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in order:
        cells = [r["trial_id"], r["status"], str(r.get("steps_done", ""))]
        cells += [_fmt(r.get(p)) for p in params + shown]
        lines.append("| " + " | ".join(cells) + " |")
    errs = [r for r in rows if r.get("error")]
    if errs:
        lines += ["", "Errors:", ""] + [f"- `{r['trial_id']}`: {r['error']}" for r in errs]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def objective_plot(spec: SearchSpec, rows: list[dict]) -> bytes:
    """PNG: the objective against each hyperparameter (log x where the grid spans decades)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, _ = OBJECTIVES[spec.model]
    params = [k for k in (rows[0] if rows else {}) if k.startswith("w_") or k == "thickness"] or ["-"]
    n = len(params)
    cols = min(4, n)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(3.2 * cols, 2.8 * -(-n // cols)),
                             squeeze=False)
    best = best_row(spec, rows)
    for ax, p in zip(axes.flat, params):
        pts = [(r[p], r[metric]) for r in rows if _finite(r.get(metric)) and _finite(r.get(p))]
        bad = [r[p] for r in rows if not _finite(r.get(metric)) and _finite(r.get(p))]
        if pts:
            ax.scatter(*zip(*pts), s=22, c="tab:blue", label="trial")
        if best and _finite(best.get(p)):
            ax.scatter([best[p]], [best[metric]], s=80, marker="*", c="tab:red", label="best")
        if bad:
            lo = min(v for _, v in pts) if pts else 0
            ax.scatter(bad, [lo] * len(bad), marker="x", c="grey", label="no score")
        vals = [r[p] for r in rows if _finite(r.get(p))]
        pos = [v for v in vals if v > 0]
        if pos and max(pos) / min(pos) >= 100:
            ax.set_xscale("symlog" if len(pos) < len(vals) else "log",
                          **({"linthresh": min(pos)} if len(pos) < len(vals) else {}))
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{spec.name}: {metric} per trial")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_results(spec: SearchSpec, base: TrainConfig, trials) -> dict:
    """results.csv, summary.md, objective.png, best_config.json under the experiment folder."""
    rows = trial_rows(spec, trials)
    root = experiment_dir(spec)
    write_bytes(_join(root, "results.csv"), rows_to_csv(rows).encode())
    write_bytes(_join(root, "summary.md"), summary_markdown(spec, rows).encode())
    if rows:
        write_bytes(_join(root, "objective.png"), objective_plot(spec, rows))
    best = best_row(spec, rows)
    if best:
        params = {k: best[k] for k in best if k.startswith("w_") or k == "thickness"}
        preset = {"model": spec.model, "preset": base.preset,
                  **trial_overrides(spec.model, params)}
        write_bytes(_join(root, "best_config.json"), (json.dumps(preset, indent=2, sort_keys=True) + "\n").encode())
    return {"rows": rows, "best": best}


def _results_callback(spec: SearchSpec, base: TrainConfig):
    from ray.tune import Callback

    class WriteResults(Callback):
        """Rewrites the result files whenever a trial finishes or errors (driver side)."""

        def __init__(self, spec_d: dict):
            self.spec_d = spec_d  # plain data: the callback is saved with the experiment

        def _write(self, trials):
            s = spec_from_dict(self.spec_d)
            write_results(s, s.base, trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._write(trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._write(trials)

    return WriteResults(spec_to_dict(dataclasses.replace(spec, base=base)))


# ----------------------------------------------------------------------------- the search

def run_search(spec: SearchSpec, progress: bool = True) -> dict:
    """Run (or resume) the search; returns ``{"rows", "best", "dir", "resumed"}``."""
    base = check_spec(spec)
    check_same_space(spec)
    # A diverging run's last report carries its error and no objective; Tune's strict check
    # would end the whole search on it instead of marking that trial errored.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune saves the experiment's state (trials, searcher) at most every 10 s by default; a driver
    # killed in that window loses the trials started since, and on restore the searcher samples
    # them again as new trials whose TorchTrainers start from step 0. The state is a few KB and
    # its upload runs in the background: save it every second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

    from kpray.train.trainer import init_ray

    ray = init_ray()
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    fits = check_resources(spec, base, ray.cluster_resources())
    concurrent = min(fits, spec.max_concurrent or fits, spec.samples)
    metric, mode = OBJECTIVES[spec.model]
    root = experiment_dir(spec)
    write_bytes(_join(root, SPACE_FILE), (json.dumps(spec.space_json(), indent=2) + "\n").encode())

    # The trial function only drives its TorchTrainer, whose workers hold the real resources.
    # It runs on the head node (Ray gives the head the resource "node:__internal_head__"), and
    # Ray Train puts the run's controller beside it: then a lost worker node takes only training
    # workers, which Ray Train restarts on the nodes that remain from the run's latest checkpoint
    # (TrainConfig.max_failures times). A driver on a worker node would die with it and error
    # the trial (Tune's own retry, FailureConfig(max_failures), stays 0: it would also rerun
    # trials that diverged). The head's own CPUs (0 on large clusters) do not matter.
    trainable = tune.with_resources(make_trial_fn(spec, base), {HEAD_RESOURCE: 0.001})
    callbacks = [_results_callback(spec, base)]
    resumed = tune.Tuner.can_restore(root)
    if resumed:
        # Finished trials are kept; unfinished ones rerun (and resume from their checkpoint);
        # errored ones are retried; the searcher's state comes back with the experiment.
        tuner = tune.Tuner.restore(root, trainable=trainable, resume_unfinished=True,
                                   restart_errored=True)
    else:
        import optuna

        sampler = (optuna.samplers.RandomSampler(seed=spec.seed) if spec.sampler == "random"
                   else optuna.samplers.TPESampler(seed=spec.seed))
        search = OptunaSearch(metric=metric, mode=mode, sampler=sampler, seed=spec.seed)
        scheduler = None
        if spec.asha:
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="step", metric=metric, mode=mode,
                                      max_t=base.steps, grace_period=max(1, base.checkpoint_every),
                                      reduction_factor=2)
        tuner = tune.Tuner(
            trainable, param_space=param_space(spec),
            tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler,
                                        num_samples=spec.samples,
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=spec.name, storage_path=_storage(spec.storage),
                                      callbacks=callbacks, verbose=1 if progress else 0,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    if resumed and hasattr(tuner, "_local_tuner"):
        # Tuner.restore brings back the saved RunConfig and takes no callbacks; Ray 2.60 has no
        # public way to pass them, so this run's result writer is set on the private copy.
        tuner._local_tuner._run_config.callbacks = callbacks  # noqa: SLF001
    tuner.fit()
    all_trials = _load_trials(root)
    out = write_results(spec, base, all_trials)
    out.update(dir=root, resumed=resumed)
    return out


def _load_trials(root: str):
    """The experiment's trials, read back from its saved state (every trial, any status)."""
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(root).trials


def spec_from_dict(d: dict) -> SearchSpec:
    d = dict(d)
    d["base"] = TrainConfig.from_dict(d["base"])
    return SearchSpec(**d)


def spec_to_dict(spec: SearchSpec) -> dict:
    d = dataclasses.asdict(spec)
    d["base"] = spec.base.to_dict()
    return d
