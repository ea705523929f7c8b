"""A raynas job: train -> search -> export, each stage an MLflow run.

``Job.run()`` nests the three stage runs under one parent run. Each stage also runs alone
(``raynas train|search|export``), taking the previous stage's checkpoint or run id.

Modules: ``job`` (config, tracker, runs, the ``--resume`` state, orchestration), one per
stage (``train``, ``search``, ``export``), ``latency`` (profiling and fitting latency
models) and ``progress`` (the ``[raynas]`` lines).
"""

from __future__ import annotations

from raynas.pipeline.export import checkpoint_from_run, choose, front_from_run
from raynas.pipeline.job import STATE_FILE, Job
from raynas.pipeline.latency import fit_latency
from raynas.pipeline.progress import say
from raynas.pipeline.search import SearchSummary
from raynas.tracking import MlflowTracker

__all__ = ["STATE_FILE", "Job", "MlflowTracker", "SearchSummary", "checkpoint_from_run",
           "choose", "fit_latency", "front_from_run", "say"]
