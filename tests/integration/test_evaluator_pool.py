"""The evaluator pool on a real local Ray: how many evaluators ``auto`` starts, and a pool's
records against one in-process evaluator's, latency timed by the job's one meter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raynas.checkpoint import save_checkpoint
from raynas.config import load_config
from raynas.evaluation.actor import (
    create_evaluator_pool,
    evaluator_args,
    pool_size,
    stop_evaluator_actor,
)
from raynas.evaluation.evaluator import Evaluator
from raynas.latency.measure import timing_node
from raynas.latency.remote import meter_actor, meter_name, stop_meter
from raynas.runtime import ray_session
from raynas.space.registry import load_space
from raynas.supernets import create_supernet

pytestmark = pytest.mark.integration

SMOKE = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"
TARGET = "target:pool-test"


@pytest.fixture(scope="module")
def ray_with_target():
    with ray_session(num_cpus=3, resources={TARGET: 1}):
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    space = load_space("tiny_cnn")
    torch.manual_seed(0)
    return space, save_checkpoint(tmp_path_factory.mktemp("ckpt"), space,
                                  create_supernet(space).state_dict(), 0)


def test_auto_counts_the_free_cpus_of_nodes_that_are_no_latency_target(ray_with_target):
    def auto(*overrides: str) -> int:
        return pool_size(load_config(SMOKE, ["search.subnets_per_trial=8", *overrides]))

    assert auto("search.budget=1000") == 3  # 3 free CPUs, one evaluator CPU each
    assert auto("search.budget=1000", "search.evaluator.num_cpus=2") == 1
    # At least 8 batches each (64 subnets here): a small search keeps one evaluator.
    assert [auto(f"search.budget={b}") for b in (16, 127, 128, 191, 192)] == [1, 1, 2, 2, 3]
    # This node carries the latency target: evaluators there would disturb its timings.
    assert auto("search.budget=1000", f"latency.resource={TARGET}") == 1
    assert pool_size(load_config(SMOKE, ["search.evaluators=5"])) == 5  # as set


def test_a_pool_scores_as_one_evaluator_and_times_in_the_shared_meter(ray_with_target,
                                                                      checkpoint):
    import ray

    space, ckpt = checkpoint
    cfg = load_config(SMOKE)
    archs = [space.sample(i).to_dict() for i in range(8)]
    alone = Evaluator(**evaluator_args(cfg, ckpt, space)).evaluate(archs)
    meter = meter_actor(space, cfg.latency)
    pool, _ = create_evaluator_pool(cfg, ckpt, space, 2)
    try:
        got = ray.get([pool[0].evaluate.remote(archs[:4]), pool[1].evaluate.remote(archs[4:])])
        timed = ray.get(meter.__ray_call__.remote(lambda self: self.timed))
    finally:
        for handle in pool:
            stop_evaluator_actor(handle)
        stop_meter(space, cfg.latency)
    records = got[0] + got[1]
    assert [r["evaluator"] for r in records] == [0] * 4 + [1] * 4
    for mine, theirs in zip(records, alone):  # the same weights, data and calibration
        assert mine["arch_key"] == theirs["arch_key"]
        assert mine["accuracy"] == theirs["accuracy"]
        assert mine["params"] == theirs["params"] and mine["flops"] == theirs["flops"]
    assert timed == 8  # every subnet timed once, by the meter, none by the evaluators
    assert {r["latency_node"] for r in records} == {timing_node()}
    with pytest.raises(ValueError):  # stopped: its name is free for the next search
        ray.get_actor(meter_name(space, cfg.latency))
