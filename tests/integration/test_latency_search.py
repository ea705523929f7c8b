"""Latency models in real searches: a lookup table with the drift check, measurement on the
node carrying the target's custom resource, searchers through Ray Tune, a measured cache."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from raynas.latency.table import LatencyTable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "jobs" / "smoke.yaml"
# Its own experiment: test_pipeline counts the runs of the shared smoke run's experiment.
EXP = "smoke-latency"
OWN = f"tracking.experiment={EXP}"


def _search_runs(client):
    exp = client.get_experiment_by_name(EXP)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    return [r for r in runs if r.data.tags.get("raynas.stage") == "search"]


def test_lut_search_warns_on_drift_and_export_remeasures(smoke_run, run_cli):
    cwd, uri = smoke_run["cwd"], smoke_run["uri"]
    lut = cwd / "lut.json"
    run_cli(["latency", "profile", str(SMOKE), "--n", "20", "--lut", str(lut),
             "--out", str(cwd / "profile.parquet"), OWN], cwd, uri)
    out = cwd / "lut-out"
    # Every subnet checked, and a bound no table can meet: the run must warn and say so.
    proc = run_cli(["search", str(SMOKE), "--checkpoint", str(smoke_run["out"] / "checkpoint"),
                    "--output-dir", str(out), "latency.model=lut", f"latency.lut={lut}",
                    "latency.drift_share=1.0", "latency.drift_bound=0.0001",
                    "latency.drift_window=4", OWN], cwd, uri)
    assert "WARNING: latency model drift" in proc.stdout
    records = pq.read_table(out / "evaluations.parquet").to_pylist()
    assert records and all(r["latency_model"] == "lut" for r in records)
    assert all(r["latency_measured_ms"] > 0 for r in records)
    client = MlflowClient(uri)
    run = _search_runs(client)[0]
    assert run.data.tags.get("raynas.latency_drift") == "warning"
    assert run.data.metrics["latency_drift_checks"] == len(records)
    history = client.get_metric_history(run.info.run_id, "subnet_latency_measured_ms")
    assert len(history) == len(records)

    run_cli(["export", str(SMOKE), "--from-run", run.info.run_id, "--output-dir", str(out),
             "latency.model=lut", f"latency.lut={lut}", OWN], cwd, uri)
    export = [r for r in client.search_runs(
        [client.get_experiment_by_name(EXP).experiment_id],
        order_by=["attributes.start_time DESC"])
        if r.data.tags.get("raynas.stage") == "export"][0]
    m = export.data.metrics
    assert m["latency_ms_measured"] > 0 and m["latency_ms"] > 0  # both, side by side


def test_measured_on_the_target_node_with_a_cache(smoke_run, run_cli):
    cwd, uri = smoke_run["cwd"], smoke_run["uri"]
    out = cwd / "target-out"
    table = cwd / "measured.parquet"
    def search(out_dir, *extra):
        return run_cli(["search", str(SMOKE), "--checkpoint",
                        str(smoke_run["out"] / "checkpoint"), "--output-dir", str(out_dir),
                        "latency.resource=target:bench", "ray.resources={'target:bench': 1}",
                        f"latency.table={table}", OWN, *extra], cwd, uri)

    # The target's noise floor first, measured on its node; the search logs it.
    target = ["latency.resource=target:bench", "ray.resources={'target:bench': 1}", OWN]
    run_cli(["latency", "noise", str(SMOKE), "--n", "4", "--output-dir", str(out), *target],
            cwd, uri)
    floor = json.loads((out / "latency" / "local-cpu.noise.json").read_text())
    assert len(floor["times_ms"]) == 4 and floor["resource"] == "target:bench"
    search(out, "search.searcher=hat_evolution", "search.budget=24")
    logged = _search_runs(MlflowClient(uri))[0].data.metrics
    assert logged["latency_noise_agreement"] == floor["agreement"]
    records = pq.read_table(out / "evaluations.parquet").to_pylist()
    assert len(records) == 24
    nodes = {r["latency_node"] for r in records}
    assert len(nodes) == 1 and all(len(n) == 56 for n in nodes)  # Ray node ids, hex
    # The front was timed again on the target's node too (the confirmation pass).
    front = pq.read_table(out / "pareto.parquet").to_pylist()
    assert front and all(r["latency_confirm_ms"] > 0 and r["latency_node"] in nodes
                         for r in front)
    cached = LatencyTable(table)
    assert len(cached) == 24
    for r in records:
        key = [row for row in cached.records() if row["arch_key"] == r["arch_key"]]
        assert key and key[0]["latency_ms"] == pytest.approx(r["latency_ms"])

    # Again, with another searcher: measured latencies come from the table, not the node,
    # and without the confirmation pass none is timed again.
    out2 = cwd / "target-out-2"
    search(out2, "search.searcher=nevergrad", "search.budget=16", "latency.confirm=false")
    again = pq.read_table(out2 / "evaluations.parquet").to_pylist()
    assert not any(r.get("latency_confirm_ms") for r in again)
    known = {r["arch_key"]: r["latency_ms"] for r in records}
    reused = [r for r in again if r["arch_key"] in known]
    for r in reused:
        assert r["latency_ms"] == pytest.approx(known[r["arch_key"]])
        assert "latency_node" not in r or r["latency_node"] is None
    summary = json.loads((out2 / "search.json").read_text())
    assert summary["searcher"] == "nevergrad"


def test_missing_target_node_is_a_clear_error(smoke_run, run_cli):
    cwd, uri = smoke_run["cwd"], smoke_run["uri"]
    proc = run_cli(["search", str(SMOKE), "--checkpoint", str(smoke_run["out"] / "checkpoint"),
                    "--output-dir", str(cwd / "no-target"), "latency.resource=target:absent",
                    "latency.resource_wait_s=3", OWN], cwd, uri, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("raynas: error")]
    assert errors == [errors[0]] and "latency.resource = 'target:absent'" in errors[0]
