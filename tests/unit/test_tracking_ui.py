"""The saved runs-table view raynas keeps in each MLflow experiment, and the link to it
(the browser test in tests/integration/test_mlflow_ui.py opens it in MLflow's own UI)."""

from __future__ import annotations

import json

from raynas.tracking.tracker import MlflowTracker
from raynas.tracking.ui import VIEW_TAG, runs_url, view_tag_value


def columns(value: str) -> list[str]:
    return json.loads(json.loads(value)["state"])["selectedColumns"]


def test_view_adds_columns_and_keeps_what_it_showed():
    first = view_tag_value(None, ["test_accuracy", "latency_ms"], ["space"], now_ms=1)
    assert columns(first) == ["metrics.`test_accuracy`", "metrics.`latency_ms`",
                              "params.`space`"]
    state = json.loads(json.loads(first)["state"])
    assert state["columnOrder"] == state["selectedColumns"]  # shown in this order
    second = view_tag_value(first, ["test_bleu", "latency_ms"], ["space"], now_ms=2)
    assert columns(second) == [*columns(first), "metrics.`test_bleu`"]
    envelope = json.loads(second)
    assert (envelope["name"], envelope["createdAt"], envelope["updatedAt"]) == ("raynas", 1, 2)
    assert view_tag_value(second, ["test_bleu"], ["space"]) is None  # nothing new: no write


def test_view_edited_into_another_shape_starts_afresh():
    value = view_tag_value("{not json", ["test_accuracy"], [], now_ms=5)
    assert columns(value) == ["metrics.`test_accuracy`"]


def test_runs_url_opens_the_runs_table_in_training_mode_with_the_view():
    url = runs_url("7", "http://127.0.0.1:5123/")
    assert url == ("http://127.0.0.1:5123/#/experiments/7/runs"
                   "?workflowType=machine_learning&viewStateShareKey=raynas")


def test_tracker_merges_the_view_of_each_job_into_the_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    MlflowTracker(uri, "exp").show_columns(["test_accuracy"], ["space"])
    tracker = MlflowTracker(uri, "exp")  # another job in the same experiment
    tracker.show_columns(["test_bleu"], ["space"])
    tag = tracker.client.get_experiment(tracker.experiment_id).tags[VIEW_TAG]
    assert columns(tag) == ["metrics.`test_accuracy`", "params.`space`",
                            "metrics.`test_bleu`"]
