"""The job state file behind `raynas run --resume`: written as stages progress, refused for a
different job, and read back as written."""

from __future__ import annotations

import json

import pytest

from raynas.config import build_config
from raynas.errors import ConfigError
from raynas.pipeline import Job
from raynas.tracking import NullTracker

DOC = {"name": "state", "space": "tiny_cnn", "train": {"epochs": 2}}


def _job(tmp_path, *overrides):
    cfg = build_config(DOC, overrides=[f"output_dir={tmp_path}", *overrides])
    return Job(cfg, tracker=NullTracker())


def test_resume_without_a_state_file_names_the_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"--resume: .*job-state.json does not exist"):
        _job(tmp_path).load_state()


def test_state_round_trips_and_merges_stage_values(tmp_path):
    job = _job(tmp_path)
    job.save_state(parent_run_id="p1")
    job.save_state("search", run_id="s1", tune_name="search-s1", status="running")
    job.save_state("search", status="finished")
    state = _job(tmp_path).load_state()
    assert state["parent_run_id"] == "p1"
    assert state["search"] == {"run_id": "s1", "tune_name": "search-s1", "status": "finished"}
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_resume_refuses_a_changed_job_and_names_the_keys(tmp_path):
    _job(tmp_path).save_state(parent_run_id="p1")
    with pytest.raises(ConfigError, match=r"search\.budget \(200 -> 64\)"):
        _job(tmp_path, "search.budget=64").load_state()


def test_state_records_the_whole_config(tmp_path):
    job = _job(tmp_path)
    job.save_state(parent_run_id="p1")
    saved = json.loads(job.state_path.read_text())["config"]
    assert saved["train"]["epochs"] == 2 and saved["space"] == "tiny_cnn"


def test_ctrl_c_marks_the_running_stage_and_the_job_interrupted(tmp_path):
    job = _job(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with job.stage_run("state", None):  # the parent run: named after the job
            job.save_state(parent_run_id="p1")
            with job.stage_run("train", "p1"):
                job.save_state("train", run_id="t1", ray_name="train-t1", status="running")
                raise KeyboardInterrupt
    state = _job(tmp_path).load_state()  # what `--resume` reads
    assert state["train"] == {"run_id": "t1", "ray_name": "train-t1", "status": "interrupted"}
    assert state["status"] == "interrupted"


def test_a_finished_stage_stays_finished_when_a_later_one_is_interrupted(tmp_path):
    job = _job(tmp_path)
    job.save_state(parent_run_id="p1")
    job.save_state("train", status="finished", checkpoint="ck")
    with pytest.raises(KeyboardInterrupt):
        with job.stage_run("train", "p1"):
            raise KeyboardInterrupt
    assert job.load_state()["train"]["status"] == "finished"


def test_log_missing_fills_the_steps_a_lost_driver_did_not_log(tmp_path):
    """The search run lacks steps 9-11 of records evaluations.parquet holds (the driver died
    between the two writes): they are logged once, and a second pass logs nothing."""
    from raynas.pipeline.search import log_missing
    from raynas.tracking import MlflowTracker

    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlruns.db'}", "reconcile")
    tracker.start_run("search")
    rows = [(i, {"subnet_accuracy": 0.5 + i / 100, "subnet_latency_ms": 1.0 + i})
            for i in range(12)]
    tracker.log_metric_rows(rows[:9])
    tracker.log_metrics({"subnet_accuracy": 0.6}, step=9)  # a row cut in half
    assert log_missing(tracker, rows) == 1 + 2 * 2
    assert log_missing(tracker, rows) == 0
    for key in ("subnet_accuracy", "subnet_latency_ms"):
        steps = [m.step for m in tracker.client.get_metric_history(tracker.run_id, key)]
        assert sorted(steps) == list(range(12)), key  # each step once
    tracker.end_run()
