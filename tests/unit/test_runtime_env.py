"""The runtime environments shipped for `ray job submit` are valid for Ray and match
raynas's own packaging."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.runtime_env import RuntimeEnv

REPO = Path(__file__).resolve().parents[2]
FILES = sorted((REPO / "jobs").glob("runtime_env*.yaml"))


def test_both_files_are_shipped():
    assert [p.name for p in FILES] == ["runtime_env.pip.yaml", "runtime_env.yaml"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ray_accepts_it_and_it_tracks_to_the_head(path):
    doc = yaml.safe_load(path.read_text())
    RuntimeEnv(**doc)  # Ray's own validation of the fields
    assert doc["env_vars"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert {".venv", ".git", "outputs", "mlruns.db"} <= set(doc["excludes"])
    assert "working_dir" not in doc  # given on the command line: --working-dir .


def test_pip_list_is_pyproject_dependencies_without_ray():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = [d.replace(" ", "") for d in deps if not d.startswith("ray")]
    doc = yaml.safe_load((REPO / "jobs" / "runtime_env.pip.yaml").read_text())
    assert doc["pip"]["packages"] == expected
