"""raynas.evaluation.evaluator.Evaluator, in-process (no Ray)."""

from __future__ import annotations

import pytest
import torch

from raynas.errors import ArchError, CheckpointError
from raynas.evaluation import Evaluator
from raynas.export import extract
from raynas.latency import MeasuredLatency, count_flops, count_params
from raynas.latency.memory import peak_memory_mb
from raynas.space import Arch

KEYS = {"arch_key", "arch", "accuracy", "test_accuracy", "loss", "test_loss", "latency_ms",
        "latency_target", "latency_spread",
        "latency_model", "latency_node", "flops", "params", "peak_memory_mb", "eval_device",
        "eval_s",
        "evaluated_at"}


@pytest.fixture(scope="module")
def evaluator(tiny_checkpoint, tiny_space):
    ev = Evaluator(str(tiny_checkpoint), {"name": "digits"}, {"min_run_time_s": 0.005},
                   evaluator={"calib_batches": 1, "calib_batch_size": 128},
                   expected_space=tiny_space.to_dict())
    yield ev
    torch.set_num_threads(1)


def test_retime_times_again_side_by_side(evaluator, tiny_space):
    archs = [tiny_space.largest().to_dict(), tiny_space.smallest().to_dict()]
    first = evaluator.evaluate(archs)
    again = evaluator.retime(archs)
    assert [set(r) for r in again] == [{"latency_confirm_ms", "latency_confirm_spread",
                                       "latency_node"}] * 2
    # Each timing is its own arch's, in order: the largest subnet is the slower one (a
    # loaded machine may inflate either timing, so their values are not compared).
    assert again[0]["latency_confirm_ms"] > again[1]["latency_confirm_ms"]
    assert first[0]["params"] > first[1]["params"]
    assert evaluator.retime([]) == []


def test_retime_takes_the_confirmation_s_own_time(evaluator, tiny_space):
    import time

    archs = [tiny_space.largest().to_dict(), tiny_space.smallest().to_dict()]
    assert evaluator.confirm_run_time_s == 0.1  # latency.confirm_run_time_s's default
    took = {}
    try:
        for run_time_s in (0.25, 0.01):
            evaluator.confirm_run_time_s = run_time_s
            t0 = time.perf_counter()
            evaluator.retime(archs)
            took[run_time_s] = time.perf_counter() - t0
    finally:
        evaluator.confirm_run_time_s = 0.1
    assert took[0.25] >= 0.5 > took[0.01], took  # each arch timed for that long


def test_records(evaluator, tiny_space):
    archs = [tiny_space.largest(), tiny_space.smallest(), tiny_space.sample(3)]
    records = evaluator.evaluate([a.to_dict() for a in archs])
    assert len(records) == 3
    for arch, rec in zip(archs, records):
        assert set(rec) == KEYS
        assert rec["arch_key"] == arch.key and Arch(rec["arch"]) == arch
        assert 0.0 <= rec["accuracy"] <= 1.0 and 0.0 <= rec["test_accuracy"] <= 1.0
        assert rec["latency_ms"] > 0 and rec["latency_target"] == "local-cpu"
        assert rec["eval_s"] > 0
        assert isinstance(rec["flops"], int) and isinstance(rec["params"], int)
    big, small = records[0], records[1]
    assert big["params"] > small["params"] and big["flops"] > small["flops"]
    assert big["peak_memory_mb"] > small["peak_memory_mb"]


def test_params_and_flops_match_extracted_model(evaluator, tiny_space):
    arch = tiny_space.sample(5)
    rec = evaluator.evaluate([arch])[0]
    static = extract(evaluator.supernet, tiny_space, arch)
    assert rec["params"] == count_params(static)
    assert rec["flops"] == count_flops(static, torch.zeros(1, 1, 8, 8))
    # Peak memory at the latency target's batch size (1 by default).
    assert rec["peak_memory_mb"] == peak_memory_mb(static, (torch.zeros(1, 1, 8, 8),))


def test_cache_hit(evaluator, tiny_space):
    arch = tiny_space.sample(11)
    first = evaluator.evaluate([arch])[0]
    size = evaluator.cache_size
    calls = evaluator.calls
    # the same arch, written as a differently ordered plain dict with lists
    again = evaluator.evaluate([dict(reversed(list(arch.to_dict().items())))])[0]
    assert again is first  # the cached record itself: nothing recomputed
    assert evaluator.cache_size == size
    assert evaluator.calls == calls + 1
    new = next(a for a in (tiny_space.sample(i) for i in range(100, 200))
               if a.key not in evaluator._cache)
    evaluator.evaluate([new, arch])
    assert evaluator.cache_size == size + 1


def test_duplicate_in_one_call(evaluator, tiny_space):
    arch = tiny_space.sample(21)
    size = evaluator.cache_size
    a, b = evaluator.evaluate([arch, arch])
    assert a is b and evaluator.cache_size == size + 1


def test_arch_outside_space(evaluator, tiny_space):
    size = evaluator.cache_size
    bad = {**tiny_space.largest().to_dict(), "s1_width": 12}
    with pytest.raises(ArchError, match=r"'s1_width' = 12"):
        evaluator.evaluate([bad])
    with pytest.raises(ArchError, match="s3_depth"):
        evaluator.evaluate([{**tiny_space.largest().to_dict(), "s3_depth": 1}])
    assert evaluator.cache_size == size


def test_prepare_matches_supernet(evaluator, tiny_space):
    """After prepare, supernet (eval, recalibrated) and static subnet agree."""
    arch = tiny_space.sample(31)
    static = evaluator.prepare(arch)
    x = evaluator.val_batches[0]["images"][:32]
    with torch.no_grad():
        assert (evaluator.supernet(x) - static(x)).abs().max().item() <= 1e-5
    assert not evaluator.supernet.training


def test_wrong_space(tiny_checkpoint, digits_space):
    with pytest.raises(CheckpointError, match="'tiny_cnn'.*'digits_cnn'"):
        Evaluator(str(tiny_checkpoint), {"name": "digits"}, {},
                  expected_space=digits_space.to_dict())


def test_measured_latency():
    lat = MeasuredLatency("cpu-x", batch_size=2, min_run_time_s=0.005)
    x = lat.example((1, 8, 8))
    assert x.shape == (2, 1, 8, 8) and lat.example((1, 8, 8)) is x
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    before = torch.get_num_threads()
    assert lat.measure_ms(model, (1, 8, 8)) > 0
    assert torch.get_num_threads() == before  # restored


def test_calibration_draws_a_random_sample_not_the_first_rows(tmp_path, tiny_checkpoint):
    """A file sorted by label must not calibrate BatchNorm on its first classes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 60)  # sorted: 60 of class 0, then 60 of class 1...
    cols = {"label": pa.array(labels)}
    cols.update({f"p{i}": pa.array(rng.random(len(labels)).astype(np.float32))
                 for i in range(64)})
    pq.write_table(pa.table(cols), tmp_path / "sorted.parquet")
    ev = Evaluator(str(tiny_checkpoint), {"name": "parquet", "path": str(tmp_path /
                                                                         "sorted.parquet")},
                   {"min_run_time_s": 0.002}, {"calib_batches": 1, "calib_batch_size": 64})
    assert ev.data.train.tensors["labels"][:64].unique().numel() <= 2  # the file's order
    seen = ev._calib[0]["labels"].unique().numel()
    assert seen >= 8  # 64 random draws over 10 equal classes
    again = Evaluator(str(tiny_checkpoint), {"name": "parquet", "path": str(tmp_path /
                                                                            "sorted.parquet")},
                      {"min_run_time_s": 0.002}, {"calib_batches": 1, "calib_batch_size": 64})
    assert torch.equal(again._calib[0]["images"], ev._calib[0]["images"])  # seeded


def test_data_batch_size_sets_the_evaluation_batches(tiny_checkpoint, tiny_space):
    """``data.batch_size`` bounds memory per forward; the metrics do not depend on it."""
    small = Evaluator(str(tiny_checkpoint), {"name": "digits", "batch_size": 7},
                      {"min_run_time_s": 0.002})
    big = Evaluator(str(tiny_checkpoint), {"name": "digits"}, {"min_run_time_s": 0.002})
    assert {len(b["labels"]) for b in small.val_batches[:-1]} == {7}
    assert len(big.val_batches[0]["labels"]) == min(256, len(big.data.val))
    arch = tiny_space.sample(4)
    a, b = small.evaluate([arch.to_dict()])[0], big.evaluate([arch.to_dict()])[0]
    assert a["accuracy"] == pytest.approx(b["accuracy"])
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_inherit_gives_the_scored_subnets_weights(evaluator, tiny_space):
    """The state ``inherit`` hands a fine-tuning trial is the subnet the record scored: a
    static model built from it computes what the supernet computes for that arch (its
    weights and recalibrated BN statistics), and its validation accuracy is the record's."""
    from raynas.supernets import build_static

    arch = tiny_space.sample(17)
    record, state = evaluator.inherit(arch.to_dict())
    assert record == evaluator.evaluate([arch])[0]
    assert all(v.device.type == "cpu" for v in state.values())
    model = build_static(tiny_space, arch)
    model.load_state_dict(state)
    model.eval()
    val = evaluator.task.evaluate(model, evaluator.val_batches, evaluator.device)
    assert val["accuracy"] == record["accuracy"]
    x = evaluator.example_batch(64)["images"]
    with torch.no_grad():
        ours = model(x)
        assert torch.allclose(ours, evaluator.supernet(x), atol=1e-5)  # set to arch
        fresh = build_static(tiny_space, arch).eval()  # weights of its own
        assert (ours - fresh(x)).abs().max() > 1e-2
