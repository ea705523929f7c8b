"""raynas.runtime: requests the embedded Ray could never place are refused up front, with one
line saying what was asked and what exists; the driver's main thread stays free for Ctrl-C.

No Ray here: the embedded Ray's resources are given as ``ray.cluster_resources()`` reports
them, and the requests are built from real job configs.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time

import pytest

from raynas.config import build_config
from raynas.pipeline import Job
from raynas.runtime import (
    ResourceError,
    check_placeable,
    describe_resources,
    run_in_thread,
    threads_left_in_ray,
)
from raynas.tracking import NullTracker

# What ray.cluster_resources() says on a 2-CPU machine.
TWO_CPUS = {"CPU": 2.0, "memory": 1.7e10, "object_store_memory": 7.5e9,
            "node:192.0.2.2": 1.0, "node:__internal_head__": 1.0}


def _job(tmp_path, *overrides) -> Job:
    cfg = build_config({"name": "res", "space": "tiny_cnn"},
                       overrides=[f"output_dir={tmp_path}", *overrides])
    return Job(cfg, tracker=NullTracker())


def _check(job: Job, *stages: str, have=TWO_CPUS) -> None:
    check_placeable(job.resource_requests(stages), job.cfg.ray.address, have)


def test_the_default_job_fits_two_cpus(tmp_path):
    _check(_job(tmp_path), "train", "search", "export")


def test_too_many_train_workers_name_the_ask_and_what_exists(tmp_path):
    with pytest.raises(ResourceError) as err:
        _check(_job(tmp_path, "train.num_workers=64"), "train", "search")
    line = str(err.value)
    assert "\n" not in line
    assert "train.num_workers = 64 x train.cpus_per_worker = 1" in line
    assert "asks for 64 CPU" in line and "the embedded Ray has 2 CPU" in line
    assert "memory" not in line and "node:" not in line  # only what a user can ask for


def test_cpus_per_worker_and_gpus_count_too(tmp_path):
    with pytest.raises(ResourceError, match=r"asks for 3 CPU"):
        _check(_job(tmp_path, "train.cpus_per_worker=1.5"), "train")
    with pytest.raises(ResourceError, match=r"asks for 2 CPU, 2 GPU.*has 2 CPU"):
        _check(_job(tmp_path, "train.use_gpu=true"), "train")
    _check(_job(tmp_path, "train.use_gpu=true"), "train", have={**TWO_CPUS, "GPU": 2.0})


def test_strict_spread_needs_nodes_the_embedded_ray_does_not_have(tmp_path):
    with pytest.raises(ResourceError, match=r"2 different nodes \(STRICT_SPREAD\).*one node"):
        _check(_job(tmp_path, "train.placement_strategy=STRICT_SPREAD"), "train")
    _check(_job(tmp_path, "train.placement_strategy=STRICT_SPREAD", "train.num_workers=1"),
           "train")


def test_evaluators_asking_for_more_cpus_than_ray_has(tmp_path):
    # A Tune trial only waits on an evaluator (memory, no CPU): the evaluators may take
    # every CPU, and no more.
    _check(_job(tmp_path, "search.evaluator.num_cpus=2"), "search")
    with pytest.raises(ResourceError, match=r"search.evaluator.num_cpus = 3 .*asks for "
                                            r"3 CPU"):
        _check(_job(tmp_path, "search.evaluator.num_cpus=3"), "search")
    with pytest.raises(ResourceError, match=r"num_cpus = 1.5 for each of search.evaluators"
                                            r" = 2 evaluator actors.*asks for 3 CPU"):
        _check(_job(tmp_path, "search.evaluator.num_cpus=1.5", "search.evaluators=2"),
               "search")


def test_a_latency_target_the_embedded_ray_does_not_declare(tmp_path):
    job = _job(tmp_path, "latency.resource=target:edge")
    for stage in ("search", "export", "profile"):
        with pytest.raises(ResourceError, match=r"latency.resource = 'target:edge'.*"
                                                r"ray.resources"):
            _check(job, stage)
    _check(job, "train")  # training does not measure latency
    _check(job, "search", have={**TWO_CPUS, "target:edge": 1.0})


def test_a_cluster_is_never_refused_up_front(tmp_path):
    # Nodes may join a cluster (autoscaler, `ray start`): its waits are reported instead.
    _check(_job(tmp_path, "train.num_workers=64", "ray.address=auto"), "train")


def test_describe_resources_shows_what_a_user_asks_for():
    assert describe_resources(TWO_CPUS) == "2 CPU"
    assert describe_resources({"GPU": 1.0, "CPU": 0.5, "target:x": 1.0}) == \
        "0.5 CPU, 1 GPU, 1 target:x"
    assert describe_resources({}) == "nothing"


def test_placement_timeout_is_positive_or_unset(tmp_path):
    assert _job(tmp_path).cfg.ray.placement_timeout_s is None
    assert _job(tmp_path, "ray.placement_timeout_s=30").cfg.ray.placement_timeout_s == 30
    with pytest.raises(Exception, match="ray.placement_timeout_s"):
        _job(tmp_path, "ray.placement_timeout_s=0")


def test_run_in_thread_returns_raises_and_leaves_the_main_thread_to_ctrl_c():
    # Python's own Ctrl-C handler, as placement_watch installs it around every Ray stage (a
    # test run started in the background inherits SIGINT ignored, and interrupt_main would
    # then do nothing).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _run_in_thread_checks()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run_in_thread_checks():
    assert run_in_thread(lambda: 42, "answer") == 42
    with pytest.raises(ZeroDivisionError):
        run_in_thread(lambda: 1 / 0, "fails")
    # A call blocked for good (as Ray Train's fit() waiting for workers): Ctrl-C still
    # reaches the caller within a second.
    stuck = threading.Event()
    threading.Timer(0.3, _thread.interrupt_main).start()
    t0 = time.monotonic()
    assert not threads_left_in_ray()  # those above all returned
    with pytest.raises(KeyboardInterrupt):
        run_in_thread(stuck.wait, "stuck")
    assert time.monotonic() - t0 < 2.0
    # The blocked thread is remembered: the command then ends with os._exit, not by
    # finalising Ray under it.
    assert threads_left_in_ray()
    stuck.set()
    deadline = time.monotonic() + 5
    while threads_left_in_ray() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not threads_left_in_ray()  # once it returns, a normal exit again
