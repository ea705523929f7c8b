"""raynas on a real multi-node Ray cluster: ``ray job submit``, a shared MLflow server, and
failures (a Ray Train worker, the evaluator actor, the driver, an idle node).

The cluster is two ``ray start`` nodes on this machine: a head, and a node carrying the
custom resource ``target:bench`` (a latency target). The MLflow server is ``mlflow server``
on 127.0.0.1. Every raynas command runs as a user would run it (a subprocess joining the
cluster, or a submitted job) and every check reads what the MLflow server recorded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from cluster_processes import ROOT, MlflowServer, RayCluster, wait_for

pytestmark = pytest.mark.integration

SMOKE = str(ROOT / "jobs" / "smoke.yaml")
TARGET = "target:bench"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, mlflow_server):
    c = RayCluster(tmp_path_factory.mktemp("ray-cluster"),
                   env={"RAYNAS_SPACES_DIR": str(ROOT / "search_spaces")})
    try:
        c.start_head(num_cpus=3)
        c.add_node("bench", num_cpus=2, resources={TARGET: 1})
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server.uri)


def _raynas(cluster, mlflow_server, args, log: Path, **env: str):
    """``python -m raynas ARGS`` as a driver joining the cluster (RAY_ADDRESS)."""
    return cluster.popen([sys.executable, "-m", "raynas", *args], log,
                         env={"RAY_ADDRESS": cluster.gcs,
                              "MLFLOW_TRACKING_URI": mlflow_server.uri, **env})


def _finish(proc, log: Path, timeout: float = 420) -> str:
    try:
        proc.wait(timeout)
    except Exception:
        proc.kill()
        raise
    text = log.read_text()
    assert proc.returncode == 0, f"exited {proc.returncode}:\n{text[-6000:]}"
    return text


def _runs(client, experiment: str, stage: str | None = None):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return [r for r in runs if stage is None or r.data.tags.get("raynas.stage") == stage]


def _steps(client, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def _rows(path: Path) -> list[dict]:
    """The table's rows as stored, repeats included: its file, then the parts a running
    search appends (``raynas.search.results``), each read through one handle (by name,
    pyarrow can read the footer of one version of a file and the pages of the next)."""
    from raynas.search.results import parts_dir

    rows = []
    for file in [path] * path.is_file() + sorted(parts_dir(path).glob("*.parquet")):
        try:
            with open(file, "rb") as f:
                rows += pq.read_table(f).to_pylist()
        except FileNotFoundError:  # a part the finishing search folded into the file
            pass
    return rows


def _search(cluster, mlflow_server, trained, tmp_path: Path, budget: int, experiment: str,
            *overrides: str):
    """``raynas search`` of the trained checkpoint, 4 subnets per Tune trial, started."""
    out, log = tmp_path / "out", tmp_path / "search.log"
    proc = _raynas(cluster, mlflow_server,
                   ["search", SMOKE, "--checkpoint", str(trained["out"] / "checkpoint"),
                    f"search.budget={budget}", "search.subnets_per_trial=4",
                    f"tracking.experiment={experiment}", *overrides,
                    "--output-dir", str(out)], log)
    return proc, out, log


def _wait_rows(out: Path, n: int) -> None:
    wait_for(f"{n} subnets evaluated",
             lambda: len(_rows(out / "evaluations.parquet")) >= n, 300, every=0.2)


# ---- jobs submitted with `ray job submit` ----------------------------------------------------
def test_a_submitted_family_job_spreads_training_measures_on_the_target_and_tracks(
        cluster, mlflow_server, client, tmp_path):
    """A short version of jobs/vit_tiny.yaml (attention, MBConv) as `ray job submit` runs it:
    training spread across both nodes, latency timed on the node carrying the target, every
    stage tracked to the MLflow server."""
    env = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    env["env_vars"]["MLFLOW_TRACKING_URI"] = mlflow_server.uri  # this server's port
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump(env))
    proc = cluster.run(
        ["ray", "job", "submit", "--address", cluster.dashboard, "--working-dir", str(ROOT),
         "--runtime-env", str(runtime_env), "--",
         "python", "-m", "raynas", "run", "jobs/vit_tiny.yaml", "train.epochs=2",
         "data.options.copies=1", "search.budget=16", "search.subnets_per_trial=8",
         "search.population_size=8", f"latency.resource={TARGET}",
         "train.placement_strategy=SPREAD", "--output-dir", str(tmp_path / "vit-out")],
        timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-6000:]

    (parent,) = _runs(client, "vit_tiny", "vit_tiny")
    assert parent.info.status == "FINISHED"
    stages = {r.data.tags["raynas.stage"]: r for r in _runs(client, "vit_tiny")
              if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(stages) == {"train", "search", "export"}
    assert all(r.info.status == "FINISHED" for r in stages.values())

    # Training ran on both nodes; its epochs were logged once each, from the head.
    train = stages["train"]
    assert set(train.data.tags["raynas.train_nodes"].split(",")) == set(
        cluster.node_ids.values())
    assert _steps(client, train.info.run_id, "val_accuracy_largest") == [0, 1]
    names = {a.path for a in client.list_artifacts(train.info.run_id, "checkpoint")}
    assert "checkpoint/supernet.pt" in names

    # Latency was measured on the node carrying the target resource.
    search = stages["search"]
    assert search.data.metrics["evaluated"] == 16
    table = client.download_artifacts(search.info.run_id, "evaluations.parquet", str(tmp_path))
    rows = _rows(Path(table))
    assert len(rows) == 16
    assert {r["latency_node"] for r in rows} == {cluster.node_ids["bench"]}
    assert {a.path for a in client.list_artifacts(search.info.run_id)} >= {
        "pareto.parquet", "pareto.png", "search.json"}

    export = stages["export"]
    assert export.data.metrics["max_abs_diff_onnx"] < 1e-4
    exported = {a.path for a in client.list_artifacts(export.info.run_id, "subnet")}
    assert {"subnet/model.onnx", "subnet/arch.json"} <= exported


def test_the_cluster_keeps_token_auth_and_loopback_binding(cluster, mlflow_server):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{cluster.dashboard}/api/v0/nodes", timeout=10)
    assert err.value.code == 401  # no token, no access
    assert cluster.api("/api/version")  # with the token
    others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
              if not a[4][0].startswith("127.")}
    for port in (int(cluster.dashboard.rsplit(":", 1)[1]), mlflow_server.port):
        for ip in others:  # not reachable through the machine's other addresses
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((ip, port)) != 0, f"port {port} answers on {ip}"



_OWN_CLUSTER = """
import ray
from raynas.runtime import ray_session

@ray.remote(num_cpus=0)
def state_api_nodes():  # what Ray Train's placement-group cleaner asks, from a worker
    import os
    from ray.util.state import list_nodes
    return [n.node_id for n in list_nodes()], os.environ.get(
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")

with ray_session(num_cpus=1):
    nodes, watcher = ray.get(state_api_nodes.remote())
    assert nodes == [ray.get_runtime_context().get_node_id()], nodes
    assert watcher == "0"  # one machine: no node is drained, no watcher actor per run
print("own cluster")
"""


def test_the_embedded_rays_workers_find_it_beside_another_ray(cluster, tmp_path):
    """With this module's cluster running too, a worker of an embedded Ray asking Ray's
    state API (as Ray Train does to clean up a stopped run's placement group) reaches its
    own Ray: without that, two Rays on one machine leave a stopped trial's CPUs reserved."""
    proc = cluster.run([sys.executable, "-c", _OWN_CLUSTER], timeout=180, cwd=tmp_path)
    assert proc.returncode == 0 and "own cluster" in proc.stdout, proc.stderr[-3000:]

# ---- resources the cluster does not have (yet) ---------------------------------------------
def test_a_worker_group_the_cluster_cannot_place_is_reported_then_times_out(
        cluster, mlflow_server, client, tmp_path):
    # 16 workers x 1 CPU on a 5-CPU cluster: a node could still join, so raynas waits, says
    # so every few seconds, and gives up at ray.placement_timeout_s.
    log = tmp_path / "train.log"
    proc = _raynas(cluster, mlflow_server,
                   ["run", SMOKE, "train.num_workers=16", "ray.placement_timeout_s=12",
                    "tracking.experiment=placement-timeout", "--output-dir",
                    str(tmp_path / "out")], log)
    try:
        proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 2, text[-6000:]
    waits = [ln for ln in text.splitlines()
             if "waiting" in ln and "for Ray to place 16 x {1 CPU}" in ln]
    assert waits and "the cluster has 5 CPU" in waits[0], text[-6000:]
    (error,) = [ln for ln in text.splitlines() if ln.startswith("raynas: error")]
    assert "could not place 16 x {1 CPU}" in error
    assert "ray.placement_timeout_s = 12 s" in error and "the cluster has 5 CPU" in error
    # A timeout is a failure, not a Ctrl-C: the job's run and its train run say so.
    runs = _runs(client, "placement-timeout")
    assert sorted(r.data.tags["raynas.stage"] for r in runs) == ["smoke", "train"]
    assert {r.info.status for r in runs} == {"FAILED"}
    # The driver's job is over: nothing of it keeps waiting on the cluster.
    wait_for("the pending worker group to go", lambda: not [
        g for g in cluster.list("placement_groups") if g["state"] == "PENDING"], 60)


# ---- failures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_training(cluster, mlflow_server, client, tmp_path_factory):
    """A training that loses a Ray Train worker process (SIGKILL) after two epochs."""
    work = tmp_path_factory.mktemp("train-failure")
    log = work / "train.log"
    proc = _raynas(cluster, mlflow_server,
                   ["train", SMOKE, "train.epochs=6", "train.batch_size=8",
                    "tracking.experiment=train-failure", "--output-dir", str(work / "out")], log)
    try:
        run = wait_for("the train run", lambda: _runs(client, "train-failure", "train"), 120)[0]
        wait_for("two epochs logged", lambda: len(
            _steps(client, run.info.run_id, "val_accuracy_largest")) >= 2, 240)
        logged = _steps(client, run.info.run_id, "val_accuracy_largest")
        victim = cluster.actors("RayTrainWorker")[0]
        os.kill(victim["pid"], signal.SIGKILL)
        text = _finish(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"run_id": run.info.run_id, "logged_before_kill": logged, "stdout": text,
            "out": work / "out"}


def test_killed_train_worker_resumes_from_the_latest_checkpoint(killed_training, client):
    run_id = killed_training["run_id"]
    before = killed_training["logged_before_kill"]
    assert "restarted, resuming at epoch" in killed_training["stdout"]
    (resumed,) = client.get_metric_history(run_id, "resumed_at_epoch")
    # Every epoch logged before the kill had its checkpoint saved: the restart begins after
    # them, so at most the epoch the worker was in (and not yet logged) is redone.
    assert resumed.value in (before[-1] + 1, before[-1] + 2), (resumed.value, before)
    # Each epoch's metrics are logged exactly once, and the run's final metrics once.
    assert _steps(client, run_id, "val_accuracy_largest") == list(range(6))
    assert len(client.get_metric_history(run_id, "train_wall_s")) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    assert (killed_training["out"] / "checkpoint" / "supernet.pt").is_file()


def test_killed_evaluator_of_a_pool_restarts_and_every_subnet_is_evaluated_once(
        cluster, mlflow_server, client, killed_training, tmp_path):
    """A pool of two evaluators; one is killed mid-search. Ray restarts it (reloading the
    checkpoint) and retries the batch it was serving; the other keeps scoring; every subnet
    is in the results once, latency timed by the one shared meter throughout."""
    proc, out, log = _search(cluster, mlflow_server, killed_training, tmp_path, 64,
                             "evaluator-failure", "search.evaluators=2")
    try:
        _wait_rows(out, 8)
        pool = cluster.actors("EvaluatorActor")
        assert len(pool) == 2
        victim = pool[0]
        os.kill(victim["pid"], signal.SIGKILL)
        _finish(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = _rows(out / "evaluations.parquet")
    assert len(rows) == 64 and len({r["arch_key"] for r in rows}) == 64
    assert {r["evaluator"] for r in rows} == {0, 1}  # both evaluators scored subnets
    assert len({r["latency_node"] for r in rows}) == 1  # one meter timed every subnet
    (after,) = [a for a in cluster.list("actors") if a["actor_id"] == victim["actor_id"]]
    assert int(after["num_restarts"]) >= 1  # the same actor, restarted after the kill
    assert "2 evaluators" in log.read_text()
    (run,) = _runs(client, "evaluator-failure", "search")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["evaluated"] == 64 and run.data.metrics["unique_subnets"] == 64
    assert run.data.metrics["evaluators"] == 2
    assert _steps(client, run.info.run_id, "subnet_accuracy") == list(range(64))


def test_every_subnet_is_timed_on_two_target_nodes_with_a_front_and_models_per_device(
        cluster, mlflow_server, client, killed_training, tmp_path):
    """latency.targets: a second device on its own node. Each subnet's latency on each
    device comes from the node carrying that device's resource, and each device's front is
    the front under its own latency. ``export --budgets --targets`` then delivers the best
    subnet of each device's front under each budget, re-timed on that device's node and
    registered under one model name."""
    from raynas.search.pareto import pareto_mask

    edge = "target:edge"
    cluster.add_node("edge", num_cpus=0, resources={edge: 1})
    out, log = tmp_path / "out", tmp_path / "search.log"
    proc = _raynas(cluster, mlflow_server,
                   ["search", SMOKE, "--checkpoint", str(killed_training["out"] / "checkpoint"),
                    "search.budget=16", "search.subnets_per_trial=8", "latency.target=bench",
                    f"latency.resource={TARGET}", "tracking.experiment=devices",
                    f"latency.targets=[{{name: edge, resource: '{edge}'}}]",
                    "--output-dir", str(out)], log)
    try:
        _finish(proc, log)
        (run,) = _runs(client, "devices", "search")
        # Deploy many, 3 parameter budgets x 2 devices, each re-timed on its device's node.
        # The lowest limit is met on both fronts; the highest by every subnet.
        low = max(min(r["params"] for r in _rows(out / f"pareto_{d}.parquet"))
                  for d in ("bench", "edge"))
        high = max(r["params"] for r in _rows(out / "evaluations.parquet"))
        limits = sorted({low, (low + high) // 2, high})
        deploy_log = tmp_path / "deploy.log"
        _finish(_raynas(cluster, mlflow_server, [
            "export", SMOKE, "--from-run", run.info.run_id, "--targets", "bench,edge",
            "--budgets", "params<=" + ",".join(map(str, limits)), "--register", "devices",
            "latency.target=bench", f"latency.resource={TARGET}", "tracking.experiment=devices",
            f"latency.targets=[{{name: edge, resource: '{edge}'}}]", "--output-dir",
            str(tmp_path / "deploy")], deploy_log), deploy_log)
    finally:
        if proc.poll() is None:
            proc.kill()
        nodes = dict(cluster.node_ids)
        cluster.remove_node("edge")
    deployed = _rows(tmp_path / "deploy" / "deploy" / "deploy.parquet")
    assert [(r["target"], r["budget"]) for r in deployed] == [
        (t, f"params<={n}") for t in ("bench", "edge") for n in limits]
    versions = {int(v.version): v for v in client.search_model_versions("name='devices'")}
    aliases = client.get_registered_model("devices").aliases
    for row in deployed:
        device, limit = row["target"], float(row["budget"].split("<=")[1])
        front = _rows(out / f"pareto_{device}.parquet")
        best = max((r for r in front if r["params"] <= limit),
                   key=lambda r: (r["accuracy"], -r["latency_ms" if device == "bench"
                                                    else "latency_ms/edge"]))
        assert row["arch_key"] == best["arch_key"]
        assert (row["latency_target"], row["latency_node"]) == (device, nodes[device])
        version = versions[int(row["model_version"])]
        assert version.tags["raynas.target"] == device
        assert int(aliases[row["folder"].replace("/", "_")]) == int(row["model_version"])
    rows = _rows(out / "evaluations.parquet")
    assert len(rows) == 16
    assert {r["latency_node"] for r in rows} == {nodes["bench"]}
    assert {r["latency_node/edge"] for r in rows} == {nodes["edge"]}
    for device, column in (("bench", "latency_ms"), ("edge", "latency_ms/edge")):
        front = _rows(out / f"pareto_{device}.parquet")
        losses = [[-r["accuracy"], r[column]] for r in rows]
        assert {r["arch_key"] for r in front} == {
            r["arch_key"] for r, keep in zip(rows, pareto_mask(losses)) if keep}
    devices = json.loads((out / "search.json").read_text())["devices"]
    assert list(devices) == ["bench", "edge"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "devices")} == {
        "devices/pareto_bench.parquet", "devices/pareto_edge.parquet"}
    assert "pareto_devices.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_driver_lost_between_parquet_and_mlflow_resumes_in_the_same_runs(
        cluster, mlflow_server, client, tmp_path):
    """The driver dies (SIGKILL) at the worst moment: right after a batch of records reached
    evaluations.parquet and before it reached MLflow. Its job's actors go with it; ``--resume``
    logs that batch into the same runs, evaluates nothing twice, and every record is one
    step, once."""
    out = tmp_path / "out"
    args = ["run", SMOKE, "search.budget=32", "search.subnets_per_trial=4",
            "tracking.experiment=driver-failure", "--output-dir", str(out)]
    first = _raynas(cluster, mlflow_server, args, tmp_path / "first.log",
                    RAYNAS_TEST_KILL_AT="search.records_written:2")
    try:
        first.wait(420)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-4000:]
    before = {r["arch_key"]: r["evaluated_at"] for r in _rows(out / "evaluations.parquet")}
    (search,) = _runs(client, "driver-failure", "search")
    logged = _steps(client, search.info.run_id, "subnet_accuracy")
    assert len(logged) < len(before)  # the window: on disk, not in MLflow
    # The killed driver's job ends; Ray reclaims its actors (evaluator, trials).
    wait_for("the killed job's evaluator to go", lambda: not cluster.actors("EvaluatorActor"),
             60)

    second = _raynas(cluster, mlflow_server, [*args, "--resume"], tmp_path / "second.log")
    text = _finish(second, tmp_path / "second.log")
    assert "resuming job" in text and "train: finished before" in text

    rows = _rows(out / "evaluations.parquet")
    assert len(rows) == 32 and len({r["arch_key"] for r in rows}) == 32
    after = {r["arch_key"]: r["evaluated_at"] for r in rows}
    # Nothing evaluated before the kill was evaluated again.
    assert all(after[k] == t for k, t in before.items())
    # Each record says where its latency was timed: the evaluator actor's Ray node.
    assert {r["latency_node"] for r in rows} <= set(cluster.node_ids.values())
    # One job, one run per stage, all finished: the resumed job logged into the same runs.
    runs = _runs(client, "driver-failure")
    stages = sorted(r.data.tags["raynas.stage"] for r in runs)
    assert stages == ["export", "search", "smoke", "train"]
    assert all(r.info.status == "FINISHED" for r in runs)
    (search,) = [r for r in runs if r.data.tags["raynas.stage"] == "search"]
    for metric in ("subnet_accuracy", "subnet_latency_ms"):
        assert _steps(client, search.info.run_id, metric) == list(range(32)), metric
    assert search.data.metrics["evaluated"] == 32


def test_an_idle_node_leaving_and_joining_does_not_break_a_search(
        cluster, mlflow_server, killed_training, tmp_path):
    proc, out, log = _search(cluster, mlflow_server, killed_training, tmp_path, 120,
                             "node-churn")
    try:
        _wait_rows(out, 4)
        # A node nothing is scheduled on (no CPUs): it joins, leaves, and joins again.
        cluster.add_node("spare", num_cpus=0, resources={"spare": 1})
        cluster.remove_node("spare")
        assert proc.poll() is None, "the search ended before the node left"
        cluster.add_node("spare", num_cpus=0, resources={"spare": 1})
        _finish(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        if "spare" in cluster.nodes:
            cluster.remove_node("spare")
    rows = _rows(out / "evaluations.parquet")
    assert len(rows) == 120 and len({r["arch_key"] for r in rows}) == 120


# ---- a study on the cluster ----------------------------------------------------------------
def test_tune_trials_train_side_by_side_each_spread_over_the_nodes(
        cluster, mlflow_server, client, tmp_path):
    """`raynas tune` joining the cluster: two trials at once (2 workers each, SPREAD: 4 of the
    cluster's 5 CPUs), each trial's Ray Train run on both nodes, each tracked as a child run
    of the study on the MLflow server."""
    out, log = tmp_path / "out", tmp_path / "tune.log"
    proc = _raynas(cluster, mlflow_server,
                   ["tune", str(ROOT / "jobs" / "tune_quickstart.yaml"), "name=tune_cluster",
                    "train.epochs=3", "train.num_workers=2", "train.placement_strategy=SPREAD",
                    "hpo.trials=2", "hpo.max_concurrent_trials=2", "hpo.scheduler=fifo",
                    "--output-dir", str(out)], log)
    # Side by side: both trials' worker groups (2 bundles of 1 CPU, on the two nodes) placed
    # at the same time.
    most, deadline = 0, time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        groups = [g for g in cluster.list("placement_groups") if g["state"] == "CREATED"
                  and len(g["bundles"]) == 2 and len({b["node_id"] for b in g["bundles"]}) == 2
                  and all(b["unit_resources"].get("CPU") == 1 for b in g["bundles"])]
        most = max(most, len(groups))
        time.sleep(0.5)
    _finish(proc, log, timeout=30)
    assert most == 2, "the two trials never trained at the same time"
    trials = json.loads((out / "tune.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["completed", "completed"], trials
    (parent,) = _runs(client, "tune_cluster", "tune")
    children = _runs(client, "tune_cluster", "tune-trial")
    assert len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    for run in children:  # where each trial's Train workers ran: one on each node
        assert set(run.data.tags["raynas.train_nodes"].split(",")) == set(
            cluster.node_ids.values()), run.data.tags
        assert _steps(client, run.info.run_id, "val_accuracy_probes") == [1, 2, 3]
