"""raynas.latency: lookup tables, the measured-latency table, the drift check, the models."""

from __future__ import annotations

import json
import random

import pytest
import torch

from raynas.config import build_config
from raynas.errors import ConfigError
from raynas.evaluation import Evaluator
from raynas.evaluation.evaluator import _drift_pick
from raynas.latency.drift import DriftMonitor
from raynas.latency.lut import LatencyLUT
from raynas.latency.measure import MeasuredLatency, count_flops
from raynas.latency.models import build_latency_model
from raynas.latency.table import LatencyTable, read_table
from raynas.supernets import build_static, subnet_ops

FAST = MeasuredLatency(min_run_time_s=0.002, warmup=1)


def test_ops_add_up_to_the_subnet(digits_space):
    """The ops of an arch are the subnet: their FLOPs sum to the static model's."""
    rng = random.Random(0)
    for arch in [digits_space.largest(), digits_space.smallest(),
                 *(digits_space.sample(rng) for _ in range(6))]:
        ops = subnet_ops(digits_space, arch)
        assert len(ops) == 2 + sum(arch[f"s{i}_depth"] for i in (1, 2, 3))
        total = sum(count_flops(op.build().eval(), torch.randn(1, *op.input_shape))
                    for op in ops)
        static = build_static(digits_space, arch).eval()
        assert total == count_flops(static, torch.randn(1, 1, 8, 8))


def test_op_keys_name_one_computation(digits_space):
    seen = {}
    rng = random.Random(1)
    for _ in range(40):
        for op in subnet_ops(digits_space, digits_space.sample(rng)):
            module = op.build()
            sig = (op.input_shape, str(module))
            assert seen.setdefault(op.key, sig) == sig


@pytest.fixture(scope="module")
def tiny_lut(tiny_space):
    return LatencyLUT.build(tiny_space, FAST, calibrate=3)


def test_lut_covers_and_sums(tiny_lut, tiny_space):
    keys = {op.key for a in tiny_space.enumerate() for op in subnet_ops(tiny_space, a)}
    assert set(tiny_lut.ops) == keys and all(v > 0 for v in tiny_lut.ops.values())
    arch = tiny_space.sample(4)
    ops = subnet_ops(tiny_space, arch)
    assert tiny_lut.latency_ms(tiny_space, arch) == pytest.approx(
        tiny_lut.overhead_ms + sum(tiny_lut.ops[o.key] for o in ops))
    assert (tiny_lut.target, tiny_lut.batch_size, tiny_lut.threads) == ("local-cpu", 1, 1)


def test_lut_file_round_trip_and_errors(tiny_lut, tiny_space, digits_space, tmp_path):
    path = tiny_lut.save(tmp_path / "lut.json")
    back = LatencyLUT.load(path)
    arch = tiny_space.largest()
    assert back.latency_ms(tiny_space, arch) == tiny_lut.latency_ms(tiny_space, arch)
    with pytest.raises(ConfigError, match="no entry for op"):
        back.latency_ms(digits_space, digits_space.largest())  # ops the table never saw
    with pytest.raises(ConfigError, match="no such file"):
        LatencyLUT.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not a lookup table"):
        LatencyLUT.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"ops": {}}))
    with pytest.raises(ConfigError, match="expected format"):
        LatencyLUT.load(tmp_path / "other.json")


def test_latency_table(tmp_path, tiny_space):
    path = tmp_path / "lat.parquet"
    table = LatencyTable(path)
    a, b = tiny_space.largest(), tiny_space.smallest()
    table.add(a, 1.5, "cpu", 1, 1, flops=10, params=3)
    table.add(a, 2.5, "cpu", 8, 1)  # another batch size: another row
    table.add(b, 0.5, "edge", 1, 1)
    table.save()
    back = LatencyTable(path)
    assert len(back) == 3
    assert back.get(a, "cpu", 1, 1) == 1.5 and back.get(a, "cpu", 8, 1) == 2.5
    assert back.get(a, "cpu", 1, 2) is None and back.get(b, "cpu", 1, 1) is None
    assert [r["arch"] for r in back.records("edge")] == [b.to_dict()]
    table.add(a, 1.7, "cpu", 1, 1)  # a new measurement replaces the old one
    assert table.get(a, "cpu", 1, 1) == 1.7 and len(table) == 3
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"arch_key": ["x"], "latency_ms": [1.0]}), tmp_path / "w.parquet")
    with pytest.raises(ConfigError, match=r"lacks column\(s\) arch, latency_target"):
        read_table(tmp_path / "w.parquet")


def test_drift_monitor():
    mon = DriftMonitor(bound=0.1, window=4, min_checks=2)
    ok = {"latency_ms": 1.0, "latency_measured_ms": 1.02, "latency_model": "lut"}
    bad = {"latency_ms": 1.0, "latency_measured_ms": 2.0, "latency_model": "lut"}
    assert mon.update([ok, ok, {"latency_ms": 1.0, "latency_model": "lut"}]) is None
    assert mon.checks == 2 and mon.mean_error == pytest.approx(0.02 / 1.02)
    warning = mon.update([bad, bad])
    assert warning and "drift" in warning and "latency.drift_bound" in warning
    assert mon.update([bad]) is None  # warned once while it stays drifted
    assert mon.update([ok, ok, ok, ok]) is None and not mon.drifting  # recovered
    assert mon.update([bad, bad, bad]) is not None and mon.warnings == 2
    measured = {**bad, "latency_model": "measured"}
    mon2 = DriftMonitor(min_checks=1)
    assert mon2.update([measured]) is None and mon2.checks == 0
    small = DriftMonitor(bound=0.1, window=2)  # a window below min_checks still judges
    assert small.update([bad, bad]) is not None


def test_drift_pick_share(tiny_space):
    keys = [a for a in (tiny_space.sample(i) for i in range(3000))]
    share = sum(_drift_pick(a, 0.1) for a in keys) / len(keys)
    assert 0.07 < share < 0.13
    assert not any(_drift_pick(a, 0.0) for a in keys[:100])
    assert all(_drift_pick(a, 1.0) for a in keys[:100])


def test_measured_model_uses_its_table(tmp_path, tiny_space):
    table = LatencyTable(tmp_path / "t.parquet")
    model = build_latency_model({"min_run_time_s": 0.002}, tiny_space, FAST)
    model.table = table
    arch = tiny_space.sample(2)
    first = model.latency_ms(arch)
    assert model.latency_ms(arch) == first and model.hits == 1
    assert table.get(arch, "local-cpu", 1, 1, model.inputs) == first
    assert model.inputs == "images=1x1x8x8"  # the key says what the subnet was timed on
    assert table.get(arch, "local-cpu", 1, 1, "images=1x1x16x16") is None


def test_model_settings_must_match(tiny_lut, tiny_space, tmp_path):
    path = str(tiny_lut.save(tmp_path / "lut.json"))
    model = build_latency_model({"model": "lut", "lut": path}, tiny_space)
    assert model.kind == "lut" and model.latency_ms(tiny_space.largest()) > 0
    with pytest.raises(ConfigError, match="was made for target 'local-cpu'.*latency.target"):
        build_latency_model({"model": "lut", "lut": path, "target": "edge"}, tiny_space)
    with pytest.raises(ConfigError, match="made for threads 1"):
        build_latency_model({"model": "lut", "lut": path, "threads": 2}, tiny_space)


def test_evaluator_on_a_lut_checks_drift(tiny_checkpoint, tiny_space, tiny_lut, tmp_path):
    path = str(tiny_lut.save(tmp_path / "lut.json"))
    kw = dict(evaluator={"calib_batches": 1, "calib_batch_size": 64},
              expected_space=tiny_space.to_dict())
    lat = {"model": "lut", "lut": path, "min_run_time_s": 0.002}
    every = Evaluator(str(tiny_checkpoint), {"name": "digits"}, {**lat, "drift_share": 1.0},
                      **kw)
    archs = [tiny_space.sample(i).to_dict() for i in range(3)]
    for rec in every.evaluate(archs):
        assert rec["latency_model"] == "lut"
        assert rec["latency_ms"] == pytest.approx(
            tiny_lut.latency_ms(tiny_space, tiny_space.validate(rec["arch"])))
        assert rec["latency_measured_ms"] > 0
    none = Evaluator(str(tiny_checkpoint), {"name": "digits"}, {**lat, "drift_share": 0.0},
                     **kw)
    assert not any("latency_measured_ms" in r for r in none.evaluate(archs))
    torch.set_num_threads(1)


@pytest.mark.parametrize("latency,needle", [
    ({"model": "lut"}, "latency.lut is required"),
    ({"model": "predictor"}, "latency.predictor is required"),
    ({"model": "flops"}, "latency.predictor is required"),
    ({"model": "guess"}, "latency.model"),
    ({"drift_share": 1.5}, "latency.drift_share"),
])
def test_latency_config_errors(latency, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config({"name": "j", "space": "tiny_cnn", "latency": latency})


def test_objectives_in_the_job():
    with pytest.raises(ConfigError, match=r"search.objectives.0.goal = 'up'"):
        build_config({"name": "j", "space": "tiny_cnn",
                      "search": {"objectives": [{"name": "accuracy", "goal": "up"}]}})
    cfg = build_config({"name": "j", "space": "tiny_cnn", "search": {
        "objectives": [{"name": "accuracy", "goal": "max"}], "latency_budget_ms": 1.0}})
    assert [o.name for o in cfg.search.objectives] == ["accuracy"]


def test_a_local_measurement_records_where_it_ran(tmp_path, tiny_space, tiny_checkpoint):
    """Timed here without Ray: the node is this host; answered from the table: no node (it
    was not measured now); the evaluator's record carries it (``latency_node``)."""
    import socket

    model = build_latency_model({"min_run_time_s": 0.002}, tiny_space, FAST)
    model.table = LatencyTable(tmp_path / "t.parquet")
    arch = tiny_space.sample(3)
    model.latency_ms(arch)
    assert model.node == socket.gethostname()
    model.latency_ms(arch)
    assert model.hits == 1 and model.node is None
    evaluator = Evaluator(str(tiny_checkpoint), {"name": "digits"}, {"min_run_time_s": 0.002},
                          evaluator={"calib_batches": 1, "calib_batch_size": 64},
                          expected_space=tiny_space.to_dict())
    (record,) = evaluator.evaluate([arch.to_dict()])
    assert record["latency_model"] == "measured"
    assert record["latency_node"] == socket.gethostname()
    torch.set_num_threads(1)


def test_device_fronts_swap_in_each_devices_latency():
    """latency.targets: a device's front is the front under its own latency column, with the
    latency budget applied to it; the job's target comes first."""
    from raynas.config import LatencyConfig
    from raynas.latency.targets import device_fronts, device_objectives, summary
    from raynas.search.searchers import Constraint, Objective

    lat = LatencyConfig(target="cpu", targets=[{"name": "edge", "resource": "target:edge"}])
    # (accuracy, latency on cpu, latency on edge): on the edge device "b" is slow and "c"
    # fast, the other way round from the cpu.
    records = [{"arch_key": k, "accuracy": a, "latency_ms": t, "latency_ms/edge": e}
               for k, a, t, e in [("a", 0.5, 1.0, 1.0), ("b", 0.7, 1.5, 4.0),
                                  ("c", 0.8, 3.0, 2.0), ("d", 0.6, 2.0, 5.0)]]
    objectives = [Objective("accuracy", "max"), Objective("latency_ms", "min")]
    fronts = device_fronts(records, objectives, (), lat)
    assert list(fronts) == ["cpu", "edge"]
    assert [r["arch_key"] for r in fronts["cpu"]] == ["a", "b", "c"]
    assert [r["arch_key"] for r in fronts["edge"]] == ["a", "c"]
    assert summary(fronts)["edge"] == {"front_size": 2, "front": ["a", "c"],
                                       "on_first_front": 2}
    budget = device_fronts(records, objectives, [Constraint("latency_ms", 1.8)], lat)
    assert [r["arch_key"] for r in budget["edge"]] == ["a"]  # c's 2.0 ms on edge is over
    assert device_objectives([Objective("accuracy", "max")], "edge")[-1] == Objective(
        "latency_ms/edge", "min")


def test_latency_targets_settings():
    from raynas.config import LatencyConfig
    from raynas.latency.targets import target_configs

    lat = LatencyConfig(target="cpu", threads=1, batch_size=1, model="flops",
                        targets=[{"name": "t4", "threads": 4}, {"name": "b8", "batch_size": 8,
                                                               "resource": "target:b8"}])
    t4, b8 = target_configs(lat)
    assert (t4.target, t4.threads, t4.batch_size, t4.model, t4.resource) == (
        "t4", 4, 1, "measured", None)
    assert (b8.threads, b8.batch_size, b8.resource) == (1, 8, "target:b8")
    with pytest.raises(Exception, match="'cpu' is named twice"):
        LatencyConfig(target="cpu", targets=[{"name": "cpu"}])
    with pytest.raises(Exception, match="pattern"):
        LatencyConfig(targets=[{"name": "a b"}])


def test_evaluator_times_every_subnet_on_each_target(tiny_checkpoint, tiny_space):
    """A local extra target (its own batch size) adds its latency column to every record;
    timed on batch 256 against the job's batch 1 (6-12x the time here), it is the larger for
    every subnet."""
    ev = Evaluator(str(tiny_checkpoint), {"name": "digits"}, {
        "min_run_time_s": 0.01, "targets": [{"name": "batch256", "batch_size": 256}]})
    records = ev.evaluate([tiny_space.sample(i) for i in range(3)])
    for r in records:
        assert r["latency_ms/batch256"] > r["latency_ms"]
        assert r["latency_node/batch256"] == r["latency_node"]
