"""raynas under Ray's autoscaler: the node types of ``cluster.yaml`` (the same resources,
CPUs scaled down to this machine) started and stopped by the autoscaler's fake node provider,
each node a real raylet on this machine, as raynas's requests ask for them.

One job runs as a driver joining the cluster (``RAY_ADDRESS``): a Ray Train run of two
workers, a search with a pool of three evaluators timing latency on ``target:c6i-large``, an
export re-timed there. The head has no CPUs (as in ``cluster.yaml``), so every CPU the job
uses is a node the autoscaler started for it. A thread records the node counts per type every
second; the test prints them.

Ray's fake provider gives its nodes the machine's own address, not 127.0.0.1.
"""

from __future__ import annotations

import threading
import time

import pyarrow.parquet as pq
import pytest
import yaml
from cluster_processes import ROOT, RayCluster, fake_autoscaling_config, wait_for

pytestmark = pytest.mark.integration

TARGET = "target:c6i-large"
IDLE_MINUTES = 0.25  # cluster.yaml's is 10


def _node_types() -> tuple[dict[str, dict], dict[str, float]]:
    """cluster.yaml's worker node types, at most 2 CPUs and 2 nodes each, and its head."""
    doc = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types, head = {}, {}
    for name, t in doc["available_node_types"].items():
        resources = dict(t["resources"])
        if name == doc["head_node_type"]:
            head = resources
            continue
        resources["CPU"] = min(resources.get("CPU", 0), 2)
        types[name] = {"resources": resources, "min_workers": t.get("min_workers", 0),
                       "max_workers": min(t["max_workers"], 2)}
    return types, head


def _kind(node: dict, types: dict[str, dict]) -> str:
    if node["is_head_node"]:
        return "head"
    have = node["resources_total"]
    for name, t in types.items():
        if all(have.get(k) == v for k, v in t["resources"].items() if v):
            return name
    return "other"


class NodeLog(threading.Thread):
    """Node counts per type, every second, while the job runs."""

    def __init__(self, cluster: RayCluster, types: dict[str, dict]):
        super().__init__(daemon=True)
        self.cluster, self.types = cluster, types
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.ids: dict[str, set[str]] = {}  # type -> every node id seen alive
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.cluster.list("nodes"):
            if n["state"] == "ALIVE":
                kind = _kind(n, self.types)
                counts[kind] = counts.get(kind, 0) + 1
                self.ids.setdefault(kind, set()).add(n["node_id"])
        self.samples.append((time.monotonic() - self.t0, counts))
        return counts

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sample()
            except OSError:
                pass
            self.stop.wait(1)

    def most(self, kind: str) -> int:
        return max((c.get(kind, 0) for _, c in self.samples), default=0)

    def table(self) -> str:
        lines, last = [], None
        for t, counts in self.samples:
            if counts != last:
                lines.append(f"{t:6.1f} s  " + ", ".join(f"{k} {v}" for k, v in
                                                         sorted(counts.items())))
                last = counts
        return "\n".join(lines)


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    types, head = _node_types()
    c = RayCluster(tmp_path_factory.mktemp("autoscaling"),
                   env={"RAYNAS_SPACES_DIR": str(ROOT / "search_spaces")})
    try:
        c.start_head(num_cpus=int(head.get("CPU", 0)),
                     autoscaling=fake_autoscaling_config(types, head, IDLE_MINUTES, 6))
        yield c, types
    finally:
        c.stop()


def test_the_autoscaler_starts_the_nodes_a_job_asks_for_and_stops_them_after(
        autoscaling_cluster, tmp_path):
    import sys

    cluster, types = autoscaling_cluster
    assert "cpu" in types and "latency_x86" in types and types["latency_x86"]["resources"][
        TARGET] == 1
    log = NodeLog(cluster, types)
    assert log.sample() == {"head": 1}  # nothing but the head before the job
    log.start()
    out, job_log = tmp_path / "out", tmp_path / "job.log"
    proc = cluster.popen(
        [sys.executable, "-m", "raynas", "run", str(ROOT / "jobs" / "smoke.yaml"),
         "train.num_workers=2", "search.evaluators=3", "search.budget=48",
         "search.subnets_per_trial=8", f"latency.resource={TARGET}", "latency.target=c6i-large",
         "--output-dir", str(out)], job_log,
        env={"RAY_ADDRESS": cluster.gcs,
             "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"})
    try:
        proc.wait(600)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.monotonic() - log.t0
    try:
        # Idle nodes leave after the idle timeout: only the head is left.
        wait_for("the idle worker nodes to leave", lambda: log.samples[-1][1] == {"head": 1},
                 IDLE_MINUTES * 60 + 90)
    finally:
        log.stop.set()
        log.join()
        print(f"node counts over time (the job ended at {ended:.1f} s):\n{log.table()}")
    text = job_log.read_text()
    assert proc.returncode == 0, text[-6000:]

    # The training's two workers and then the three evaluators asked for CPUs: the CPU type
    # scaled up, to two nodes at once (2 CPUs each) for the evaluators.
    assert log.most("cpu") == 2
    assert "3 evaluators" in text
    # The latency meter asked for the target: one node of the type that carries it came up,
    # and every subnet was timed there.
    assert log.most("latency_x86") == 1
    assert log.most("gpu") == 0 and log.most("latency_c6g") == 0  # nobody asked for those
    rows = pq.read_table(out / "evaluations.parquet").to_pylist()
    assert {r["latency_node"] for r in rows} <= log.ids["latency_x86"]
    # Nodes came and went; nothing was lost or evaluated twice.
    assert len(rows) == 48 and len({r["arch_key"] for r in rows}) == 48
    assert (out / "subnet").is_dir()
    # Every worker node left after the job: none is alive at the end, and some left.
    assert log.samples[-1][1] == {"head": 1}
    left_after = [t for t, c in log.samples if t > ended and c == {"head": 1}]
    assert left_after and left_after[0] - ended <= IDLE_MINUTES * 60 + 90
