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
    job._save_state(parent_run_id="p1")
    job._save_state("search", run_id="s1", tune_name="search-s1", status="running")
    job._save_state("search", status="finished")
    state = _job(tmp_path).load_state()
    assert state["parent_run_id"] == "p1"
    assert state["search"] == {"run_id": "s1", "tune_name": "search-s1", "status": "finished"}
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_resume_refuses_a_changed_job_and_names_the_keys(tmp_path):
    _job(tmp_path)._save_state(parent_run_id="p1")
    with pytest.raises(ConfigError, match=r"search\.budget \(200 -> 64\)"):
        _job(tmp_path, "search.budget=64").load_state()


def test_state_records_the_whole_config(tmp_path):
    job = _job(tmp_path)
    job._save_state(parent_run_id="p1")
    saved = json.loads(job.state_path.read_text())["config"]
    assert saved["train"]["epochs"] == 2 and saved["space"] == "tiny_cnn"
