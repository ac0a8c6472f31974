"""Node loss on a real multi-node Ray cluster on this machine (issue 13; results in
docs/benchmarks.md, "Multi-node cluster (issue 13)").

The cluster is the tests' (tests/cluster.py): a head with no CPUs and three 1-CPU worker nodes,
each its own raylet; a node is lost by SIGKILLing its raylet and every process Ray started there.

- gen_data: the same dataset rendered with no failure and with a worker node killed once the
  first shard is written: wall time of each, and from the kill to the end.
- search: one trial (1 worker) per checkpoint period K; its worker's node is killed at a
  moment drawn uniformly (seeded) within its second checkpoint period. Measured: from the kill to
  the trial's next report; the step it resumed from (its latest checkpoint); the steps it had
  done since, estimated from the time since that checkpoint's report and the measured step time
  (= the steps redone); their share of the trial's steps.

    python benchmarks/bench_multinode.py [--periods 2 5 10] [--repeats 3] [--steps 30] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
try:
    import triton  # noqa: F401  (torch and Mesa in one process: triton first, see tests/conftest.py)
except ImportError:
    pass

from cluster import LocalCluster  # noqa: E402
from kpray.datagen import GenSpec, generate  # noqa: E402

GEN = GenSpec(dataset="cartpoles", seed=21, episodes=48, test_episodes=2, frames=40, size=64,
              shard_size=2)


def _in_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e
        out["ended_at"] = time.time()

    th = threading.Thread(target=run)
    th.start()
    return th, out


def bench_gen(cluster: LocalCluster, tmp: str) -> dict:
    t = time.time()
    generate(GEN, os.path.join(tmp, "gen-clean"), workers=3, show_progress=False, preview=False)
    clean_s = time.time() - t
    cluster.ensure_workers(3)

    stats = {}
    t = time.time()
    th, out = _in_thread(lambda: generate(GEN, os.path.join(tmp, "gen-kill"), workers=3,
                                          show_progress=False, preview=False, stats=stats))
    while th.is_alive() and not stats.get("shard_nodes"):
        time.sleep(0.05)
    victim = next(iter(stats["shard_nodes"].values()))
    time.sleep(0.3)
    killed_at = cluster.kill(victim)
    th.join()
    if "error" in out:
        raise out["error"]
    return {"shards": len(stats["shard_nodes"]), "clean_s": round(clean_s, 1),
            "with_kill_s": round(out["ended_at"] - t, 1),
            "kill_at_s": round(killed_at - t, 1),
            "kill_to_end_s": round(out["ended_at"] - killed_at, 1),
            "redone": sorted(set(stats["redone"]))}


def _reports(exp_dir: str) -> list[dict]:
    for d in sorted(os.listdir(exp_dir)):
        path = os.path.join(exp_dir, d, "result.json")
        if os.path.isfile(path):
            with open(path) as f:
                return [json.loads(line) for line in f if line.strip()]
    return []


def bench_search(cluster: LocalCluster, tmp: str, shards: str, period: int, steps: int,
                 rng: random.Random) -> dict:
    from kpray.train.config import TrainConfig
    from kpray.tune import SearchSpec, run_search

    cluster.ensure_workers(3)
    base = TrainConfig(data=shards, preset="cartpoles", steps=steps, batch_size=2, num_workers=1,
                       checkpoint_every=period, val_episodes=1, val_frames=4, preview_every=0,
                       diagnostics_every=0, loader_workers=0, seed=5, step_sleep_s=0.3,
                       model_config={"pi_width": 8, "psi_width": 8, "background_width": 8,
                                     "num_points": 8})
    name = f"k{period}-{rng.randrange(10 ** 6)}"
    spec = SearchSpec(model="skeleton", base=base, samples=1, name=name, storage=tmp, seed=5)
    exp = os.path.join(tmp, name)
    t0 = time.time()
    th, out = _in_thread(lambda: run_search(spec, progress=False))
    first = None
    while th.is_alive() and first is None:
        rows = _reports(exp) if os.path.isdir(exp) else []
        first = rows[0] if rows else None
        time.sleep(0.1)
    # A moment drawn uniformly within the second checkpoint period (Tune writes a report a few
    # seconds after the worker made it, too late to aim within the first period).
    u = rng.uniform(0, 1)
    target = first["reported_at"] + (1 + u) * period * first["step_time_s"]
    time.sleep(max(0.0, target - time.time()))
    node = first["node_id"]
    killed_at = cluster.kill(node)
    th.join()
    if "error" in out:
        raise out["error"]
    rows = _reports(exp)
    after = [r for r in rows if r["reported_at"] > killed_at]
    resumed = after[0]["resumed_from_step"]
    ckpt = next(r for r in rows if r["step"] == resumed and r["reported_at"] < killed_at)
    step_time = ckpt["step_time_s"]
    # steps done after that checkpoint when the node went (its report time ~ the step's end)
    reached = min(resumed + (killed_at - ckpt["reported_at"]) / step_time, resumed + period)
    redone = reached - resumed
    next_report = after[0]["reported_at"] - killed_at
    trained = (after[0]["step"] - resumed) * after[0]["step_time_s"]   # training in that time
    return {"period": period, "steps": steps, "step_time_s": round(step_time, 3),
            "kill_u": round(u, 2), "killed_at_step_est": round(reached, 1),
            "resumed_from_step": resumed, "steps_redone_est": round(redone, 1),
            "share_redone": round(redone / steps, 3),
            "kill_to_next_report_s": round(next_report, 1),
            "restart_overhead_s": round(next_report - trained, 1),
            "trial_wall_s": round(out["ended_at"] - t0, 1),
            "moved": after[0]["node_id"] != node}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--periods", type=int, nargs="+", default=[2, 5, 10], help="checkpoint periods K")
    p.add_argument("--repeats", type=int, default=3, help="node losses per period (default 3)")
    p.add_argument("--steps", type=int, default=30, help="steps per trial (default 30; at least 3 K)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    tmp = tempfile.mkdtemp(prefix="kpray-mn-")
    cluster = LocalCluster(workers=3)
    try:
        cluster.connect()
        res = {"gen_data": bench_gen(cluster, tmp)}
        print(json.dumps(res["gen_data"]), flush=True)
        shards = os.path.join(tmp, "gen-clean")
        res["search"] = []
        for k in a.periods:
            for _ in range(a.repeats):
                r = bench_search(cluster, tmp, shards, k, a.steps, rng)
                print(json.dumps(r), flush=True)
                res["search"].append(r)
    finally:
        cluster.shutdown()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
    g = res["gen_data"]
    print(f"\ngen_data ({g['shards']} shards, 3 nodes): {g['clean_s']} s without failure, "
          f"{g['with_kill_s']} s with a node killed at {g['kill_at_s']} s ({g['kill_to_end_s']} s "
          f"from the kill to the end)")
    print("\n| checkpoint every K | losses | step time (s) | steps redone per loss (est.): each, mean "
          f"| share of a {a.steps}-step trial, mean | kill -> next report (s), mean [range] | of which restart (s), mean |")
    print("|---|---|---|---|---|---|---|")
    for k in a.periods:
        rs = [r for r in res["search"] if r["period"] == k]
        mean = lambda key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
        nxt = [r["kill_to_next_report_s"] for r in rs]
        print(f"| {k} | {len(rs)} | {mean('step_time_s'):.2f} | "
              f"{', '.join(str(r['steps_redone_est']) for r in rs)}; {mean('steps_redone_est'):.1f} | "
              f"{100 * mean('share_redone'):.0f} % | {mean('kill_to_next_report_s'):.1f} "
              f"[{min(nxt)}-{max(nxt)}] | {mean('restart_overhead_s'):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
