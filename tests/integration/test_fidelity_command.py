"""``raynas fidelity`` end to end: a real embedded Ray (Ray Train for the supernet, Ray Tune
for the standalone trainings), a real MLflow sqlite store, the tiny CNN space."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "jobs" / "smoke.yaml")
# 4 subnets of tiny_cnn from the 20% to the 80% FLOPs quantile (close enough in size that the
# 2-epoch supernet orders them imperfectly), 2 epochs each, on 2 CPUs.
SETTINGS = ["ray.num_cpus=2", "fidelity.subnets=4", "fidelity.spread=[0.2,0.8]",
            "fidelity.top_k=2", "latency.min_run_time_s=0.002"]


@pytest.fixture(scope="module")
def first(tmp_path_factory, run_cli) -> dict:
    """``raynas fidelity`` with no checkpoint: trains the supernet, then measures."""
    work = tmp_path_factory.mktemp("fidelity")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    t0 = time.perf_counter()
    proc = run_cli(["fidelity", SMOKE, "--output-dir", str(work / "out"), *SETTINGS],
                   work, uri)
    return {"work": work, "uri": uri, "proc": proc, "wall_s": time.perf_counter() - t0}


def _runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("smoke")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_report_files_runs_and_progress(first):
    out, stdout = first["work"] / "out" / "fidelity", first["proc"].stdout
    summary = json.loads((out / "fidelity.json").read_text())
    assert summary["subnets"] == 4 and summary["standalone_trained"] == 4
    assert summary["metric"] == "accuracy" and summary["goal"] == "max"
    assert -1.0 <= summary["kendall_tau"] <= 1.0 and 0 <= summary["top_k_overlap"] <= 1
    rows = pq.read_table(out / "fidelity.parquet").to_pylist()
    assert len(rows) == 4 and len({r["arch_key"] for r in rows}) == 4
    flops = [r["flops"] for r in rows]
    assert flops == sorted(flops)
    assert all(0.0 < r["standalone_accuracy"] <= 1.0 for r in rows)
    assert (out / "fidelity.png").stat().st_size > 10_000
    assert "| # | arch key | FLOPs |" in (out / "fidelity.md").read_text()
    # One progress line per standalone training as it finishes, then the table.
    assert all(f"fidelity: trained {i}/4" in stdout for i in range(1, 5)), stdout
    assert "| # | arch key | FLOPs |" in stdout

    runs = {r.info.run_name: r for r in _runs(first["uri"])}
    parent, train, fidelity = runs["smoke"], runs["train"], runs["fidelity"]
    for child in (train, fidelity):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
    m = fidelity.data.metrics
    assert m["kendall_tau"] == pytest.approx(summary["kendall_tau"])
    assert m["standalone_trained"] == 4 and m["standalone_cached"] == 0
    for key in ("spearman_rho", "top_k_overlap", "top1_regret", "mean_gap",
                "test_kendall_tau"):
        assert key in m, key
    client = MlflowClient(tracking_uri=first["uri"])
    assert len(client.get_metric_history(fidelity.info.run_id, "subnet_standalone_accuracy")) \
        == 4
    assert {a.path for a in client.list_artifacts(fidelity.info.run_id, "fidelity")} == {
        f"fidelity/{name}" for name in ("fidelity.json", "fidelity.md", "fidelity.parquet",
                                        "fidelity.png")}
    assert fidelity.data.tags["raynas.fidelity_gate"] == "off"


def test_rerun_trains_nothing_and_threshold_stops_with_status_3(first, run_cli):
    work = first["work"]
    tau = json.loads((work / "out" / "fidelity" / "fidelity.json").read_text())["kendall_tau"]
    assert tau < 1.0, "these settings should give an imperfect ranking; pick others"
    t0 = time.perf_counter()
    proc = run_cli(["fidelity", SMOKE, "--checkpoint", str(work / "out" / "checkpoint"),
                    "--output-dir", str(work / "again"), *SETTINGS,
                    "fidelity.min_kendall_tau=1.0"], work, first["uri"], check=False)
    wall = time.perf_counter() - t0
    assert proc.returncode == 3, proc.stderr[-3000:]
    # Every standalone result from the cache: no Tune trial, not even a Ray instance.
    assert "standalone training of 0 subnets" in proc.stdout and "trained 1/" not in proc.stdout
    assert not (work / "again" / "ray").exists()
    assert wall < first["wall_s"]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("raynas: stopped: ") and "Traceback" not in proc.stderr
    assert f"{tau:.3f}" in last and "fidelity.min_kendall_tau = 1.0" in last
    assert str(work / "again" / "fidelity") in last

    again = json.loads((work / "again" / "fidelity" / "fidelity.json").read_text())
    assert again["standalone_cached"] == 4 and again["kendall_tau"] == pytest.approx(tau)
    fidelity = [r for r in _runs(first["uri"]) if r.info.run_name == "fidelity"][-1]
    assert fidelity.info.status == "FINISHED"  # measured; only the threshold failed
    assert fidelity.data.metrics["standalone_trained"] == 0
    assert fidelity.data.tags["raynas.fidelity_gate"] == "failed"
