"""Integration fixtures: the real ``raynas`` CLI in a subprocess, a real local Ray it starts
itself, and a real MLflow sqlite store read back through the MLflow client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def raynas(args: list[str], cwd: Path, tracking_uri: str, timeout: int = 420,
           check: bool = True, env_extra: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    """Run ``python -m raynas ARGS`` as a user would; return the finished process."""
    env = {**os.environ, **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)  # the embedded default must start its own Ray
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["RAYNAS_SPACES_DIR"] = str(ROOT / "search_spaces")
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run([sys.executable, "-m", "raynas", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"raynas {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n"
                             f"--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def run_cli():
    """The ``raynas`` helper above, for tests."""
    return raynas


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> dict:
    """A fresh working directory and MLflow sqlite store shared by the integration tests."""
    import mlflow

    work = tmp_path_factory.mktemp("raynas-int")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    # Some MLflow client calls (logged-model artifacts) read the global URI, not the client's.
    mlflow.set_tracking_uri(uri)
    return {"cwd": work, "uri": uri}


@pytest.fixture(scope="session")
def smoke_run(store) -> dict:
    """``raynas run jobs/smoke.yaml`` once for the whole session (train, search, export)."""
    out = store["cwd"] / "smoke-out"
    proc = raynas(["run", str(ROOT / "jobs" / "smoke.yaml"), "--output-dir", str(out)],
                  store["cwd"], store["uri"])
    return {**store, "out": out, "stdout": proc.stdout, "stderr": proc.stderr}


def _stage_runs(uri: str, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.data.tags.get("raynas.stage"): r for r in client.search_runs([exp.experiment_id])}


@pytest.fixture(scope="session")
def stage_runs():
    """``stage_runs(uri, experiment)``: the experiment's MLflow runs by their
    ``raynas.stage`` tag (train, search, export, fidelity), for experiments with one of each."""
    return _stage_runs
