"""Trackers: MLflow (nested runs, metrics, artifacts, logged models) and a null tracker.

A tracker is bound to one run at a time. The pipeline starts a parent run per job
invocation and a child run per stage; Ray workers re-attach to a run by id
(``MlflowTracker.attach``) to log live from where the work happens.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def absolute_uri(uri: str) -> str:
    """``sqlite:///mlruns.db`` -> ``sqlite:////abs/path/mlruns.db``: Ray workers may run in
    another directory than the driver, and must write to the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


class Tracker:
    """Interface every tracker implements; the null tracker is its reference behaviour."""

    run_id: str | None = None

    def start_run(self, name: str, parent_id: str | None = None,
                  tags: Mapping[str, str] | None = None) -> str | None:
        return None

    def find_run(self, parent_id: str | None, tags: Mapping[str, str]) -> str | None:
        """The run under ``parent_id`` carrying all ``tags``, if one exists."""
        return None

    def resume_run(self, run_id: str) -> str | None:
        """Log into an existing run again (a resumed job); ``end_run`` ends it."""
        return None

    def end_run(self, status: str = "FINISHED") -> None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_metric_rows(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Log several steps at once: ``(step, {name: value})`` per row."""
        for step, metrics in rows:
            self.log_metrics(metrics, step=step)

    def metric_steps(self, key: str) -> set[int]:
        """The steps at which the current run has logged metric ``key`` (read back to make
        good what a lost driver had not logged yet)."""
        return set()

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None: ...

    def log_model(self, model: Any, name: str, input_example: Any = None) -> str | None:
        return None

    def register_model(self, model_uri: str, name: str, alias: str | None = None,
                       tags: Mapping[str, Any] | None = None) -> str | None:
        """Add a logged model to the model registry under ``name``; return its version."""
        return None

    def show_columns(self, metrics: Sequence[str], params: Sequence[str]) -> None:
        """Show these metrics and parameters in the store's runs table (see ``ui``)."""

    def download_artifacts(self, run_id: str, path: str, dst: str | Path) -> Path:
        raise NotImplementedError("this tracker stores no artifacts")

    def run_info(self, run_id: str) -> dict[str, Any]:
        raise NotImplementedError("this tracker stores no runs")


class NullTracker(Tracker):
    """Logs nothing (for library use and unit tests)."""


class MlflowTracker(Tracker):
    """Tracks into an MLflow store: sqlite file, ``mlflow server``, or any tracking URI."""

    def __init__(self, uri: str, experiment: str | None = None):
        # No usage telemetry leaves the machine unless the user opts in.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri = absolute_uri(uri)
        self.client = MlflowClient(tracking_uri=uri)
        mlflow.set_tracking_uri(uri)
        self._mlflow = mlflow
        self.experiment_id = self._experiment(experiment) if experiment else None
        self.run_id: str | None = None
        self._stack: list[str] = []

    @classmethod
    def attach(cls, uri: str, run_id: str) -> MlflowTracker:
        """A tracker logging into an existing run (e.g. from a Ray Train worker)."""
        tracker = cls(uri)
        tracker.run_id = run_id
        return tracker

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # Artifacts beside the sqlite file, so the store is one self-contained folder.
            db = Path(self.uri[len("sqlite:///"):]).resolve()
            location = (db.parent / "mlartifacts").as_uri()
        # The tag says what the experiment is; MLflow 3.17's UI opens it on the runs table
        # only through the link ``ui.runs_url`` makes (the UI's mode is the browser's).
        return self.client.create_experiment(
            name, artifact_location=location,
            tags={EXPERIMENT_KIND_TAG: "custom_model_development"},
        )

    def start_run(self, name, parent_id=None, tags=None):
        all_tags = dict(tags or {})
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        if self.run_id:
            self._stack.append(self.run_id)
        self.run_id = run.info.run_id
        return self.run_id

    def find_run(self, parent_id, tags):
        """The id of this experiment's run under ``parent_id`` carrying all ``tags``, or
        None."""
        if not parent_id:
            return None
        where = " and ".join([f"tags.mlflow.parentRunId = '{parent_id}'",
                              *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
        runs = self.client.search_runs([self.experiment_id], where, max_results=1)
        return runs[0].info.run_id if runs else None

    def resume_run(self, run_id):
        self.client.update_run(run_id, status="RUNNING")
        if self.run_id:
            self._stack.append(self.run_id)
        self.run_id = run_id
        return run_id

    def end_run(self, status="FINISHED"):
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)
        self.run_id = self._stack.pop() if self._stack else None

    def log_params(self, params):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics, step=None):
        self.log_metric_rows([(step or 0, metrics)])

    def log_metric_rows(self, rows):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for step, metrics in rows
                 for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        # One request per 1,000 values (MLflow's batch limit): a batch of records lands
        # whole or not at all, in the common case.
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def metric_steps(self, key):
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def set_tags(self, tags):
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path, artifact_path=None):
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory, artifact_path=None):
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_model(self, model, name, input_example=None):
        """Log a torch module as an MLflow model linked to the current run; return its URI."""
        import mlflow.pytorch
        import torch

        # Naming the requirement skips MLflow's slow inference of the environment.
        requirements = [f"torch=={torch.__version__.split('+')[0]}"]
        import logging
        import warnings

        # raynas logs TorchScript archives (torch.jit.save, no pickled Python classes), so
        # MLflow's pickle warnings do not apply. Its "pt2" format would pin the batch size.
        quiet = logging.getLogger("mlflow.pytorch")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), \
                    self._mlflow.start_run(run_id=self.run_id, nested=True):
                warnings.simplefilter("ignore")
                info = mlflow.pytorch.log_model(model, name=name, input_example=input_example,
                                                pip_requirements=requirements,
                                                serialization_format="pickle")
        finally:
            quiet.setLevel(level)
        return info.model_uri

    def register_model(self, model_uri, name, alias=None, tags=None):
        """A new version of registered model ``name`` (created if new), with ``alias``
        pointing at it and ``tags`` on it."""
        import mlflow

        version = mlflow.register_model(model_uri, name).version
        for key, value in (tags or {}).items():
            self.client.set_model_version_tag(name, version, key, str(value))
        if alias:
            self.client.set_registered_model_alias(name, alias, version)
        return str(version)

    def show_columns(self, metrics, params):
        from raynas.tracking.ui import VIEW_TAG, view_tag_value

        current = self.client.get_experiment(self.experiment_id).tags.get(VIEW_TAG)
        value = view_tag_value(current, metrics, params)
        if value is not None:
            self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, value)

    def runs_url(self, base: str = "http://127.0.0.1:5000") -> str:
        """The link that opens ``mlflow ui`` on this experiment's runs table."""
        from raynas.tracking.ui import runs_url

        return runs_url(self.experiment_id, base)

    def download_artifacts(self, run_id, path, dst):
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def run_info(self, run_id):
        run = self.client.get_run(run_id)
        return {"params": run.data.params, "tags": run.data.tags,
                "metrics": run.data.metrics, "experiment_id": run.info.experiment_id}
