"""A real multi-node Ray cluster on this machine: a head and worker nodes, each its own raylet
(``ray.cluster_utils.Cluster``, as Ray's own test suite does), for tests and benchmarks.

::

    c = LocalCluster(workers=3)      # head with 0 CPUs; w0, w1, w2 with 1 CPU and resource kpray_wK
    c.connect()                      # ray.init(address=...) for this process (the driver, on the head)
    c.kill(node_id)                  # the node's raylet and processes are SIGKILLed: a lost node
    c.ensure_workers(3)              # add nodes until 3 worker nodes are alive again
    c.shutdown()

Every node listens on this machine's own address (Ray's default node address) and shares its
file system, which stands in for a cluster's shared storage.
"""
from __future__ import annotations

import os
import time


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict:
    """Environment of every Ray worker: headless GL for the render actors."""
    gl = os.environ.get("MUJOCO_GL", "egl")
    return {"MUJOCO_GL": gl, "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", gl)}


class LocalCluster:
    """Head (``head_cpus`` CPUs, dashboard on) plus ``workers`` nodes of ``cpus_per_worker`` CPUs;
    worker node k carries the custom resource ``kpray_w<k>`` (1 unit) so placement can be
    checked and forced. ``names``: node id (hex) -> ``"head"`` or ``"w<k>"``."""

    def __init__(self, workers: int = 3, cpus_per_worker: int = 1, head_cpus: int = 0):
        from ray.cluster_utils import Cluster

        self.cpus_per_worker = cpus_per_worker
        # The dashboard on a free port: other Ray instances on the machine may hold 8265.
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "include_dashboard": True, "dashboard_port": _free_port()})
        self.names = {self.cluster.head_node.node_id: "head"}
        self.nodes = {}                       # node id -> ray._private.node.Node (worker nodes)
        self._next = 0
        for _ in range(workers):
            self.add_worker(wait=False)
        self.cluster.wait_for_nodes(timeout=120)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self, wait: bool = True) -> str:
        """Start one more worker node; returns its node id."""
        k = self._next
        self._next += 1
        node = self.cluster.add_node(num_cpus=self.cpus_per_worker, resources={f"kpray_w{k}": 1},
                                     wait=wait)
        self.nodes[node.node_id] = node
        self.names[node.node_id] = f"w{k}"
        return node.node_id

    def alive_workers(self) -> list[str]:
        return list(self.nodes)

    def ensure_workers(self, n: int) -> None:
        """Add worker nodes until ``n`` are alive (after a test killed some)."""
        while len(self.nodes) < n:
            self.add_worker(wait=False)
        self.cluster.wait_for_nodes(timeout=120)

    def kill(self, node_id: str) -> float:
        """SIGKILL the node's raylet and every process Ray started there (no graceful drain),
        as when a machine is lost. Returns the time of the kill (``time.time()``, as it began);
        ``kill_done_at`` is when every process there is dead (a report made between the two
        can still come from the node)."""
        node = self.nodes.pop(node_id)
        t = time.time()
        self.cluster.remove_node(node, allow_graceful=False)
        self.kill_done_at = time.time()
        return t

    def connect(self, **kw):
        """Make this process the cluster's driver (on the head node)."""
        import ray

        ray.init(address=self.address, log_to_driver=False,
                 runtime_env={"env_vars": worker_env()}, **kw)
        return ray

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()
