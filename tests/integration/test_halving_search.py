"""Multi-fidelity search (``search.evaluator.halving``) through Ray Tune and the evaluator
actor, on the shared smoke run's checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "jobs" / "smoke.yaml"
EXP = "smoke-halving"  # its own experiment: test_pipeline counts the smoke experiment's runs
# FLOPs, not measured latency, beside accuracy: a front that timing noise cannot move.
OBJECTIVES = "search.objectives=[{name: accuracy, goal: max}, {name: flops, goal: min}]"


def test_halving_stops_hopeless_subnets_and_keeps_them_off_the_front(smoke_run, run_cli):
    cwd, uri = smoke_run["cwd"], smoke_run["uri"]
    out = cwd / "halving-out"
    proc = run_cli(["search", str(SMOKE), "--checkpoint", str(smoke_run["out"] / "checkpoint"),
                    "--output-dir", str(out), "search.evaluator.halving.start=0.25",
                    "search.budget=48", OBJECTIVES,
                    f"tracking.experiment={EXP}"], cwd, uri)
    records = pq.read_table(out / "evaluations.parquet").to_pylist()
    stopped = [r for r in records if r["fidelity"] < 1]
    assert len(records) == 48 and stopped, "no subnet was stopped early"
    assert all(math.isnan(r["test_accuracy"]) for r in stopped)
    assert all(not math.isnan(r["test_accuracy"]) for r in records if r["fidelity"] == 1)
    front = pq.read_table(out / "pareto.parquet").to_pylist()
    assert front and all(r["fidelity"] == 1 for r in front)
    summary = json.loads((out / "search.json").read_text())
    assert summary["halving_stopped"] == len(stopped)
    assert summary["validation_share"] == pytest.approx(
        sum(r["fidelity"] for r in records) / len(records))
    assert f"{len(stopped)} stopped early by halving" in proc.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXP)
    (run,) = [r for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("raynas.stage") == "search"]
    assert run.data.metrics["halving_stopped"] == len(stopped)
    assert run.data.params["search.evaluator.halving.start"] == "0.25"
