"""``raynas export --targets`` without ``--budgets``: one export per device, each picked from
that device's own front (a latency budget bounding that device's latency), re-timed there.
In-process, a real MLflow sqlite store, no Ray (the devices here need no node of their own;
tests/integration/test_cluster.py covers devices on their own nodes)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from raynas.cli import main
from raynas.export.serialize import load_subnet
from raynas.latency.memory import peak_memory_mb
from raynas.search.results import write_records


def test_targets_export_each_devices_pick_from_its_own_front(
        tmp_path, monkeypatch, capsys, quickstart_job, digits_checkpoint, digits_space):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    archs = [digits_space.sample(i).to_dict() for i in range(3)]
    # The same three subnets, more accurate as they get slower; on the batch-16 device
    # each takes far longer. Under latency_ms<=8 the batch-1 device can afford the most
    # accurate one (3 ms) and the batch-16 device only the first (5 ms).
    write_records(tmp_path / "pareto.parquet",
                  [{"arch": a, "accuracy": 0.5 + i / 10, "latency_ms": 1.0 + i,
                    "latency_ms/b16": [5.0, 10.0, 30.0][i]} for i, a in enumerate(archs)],
                  digits_space)
    write_records(tmp_path / "pareto_b16.parquet",
                  [{"arch": a, "accuracy": 0.5 + i / 10, "latency_ms": 1.0 + i,
                    "latency_ms/b16": [5.0, 10.0, 30.0][i]} for i, a in enumerate(archs)],
                  digits_space)
    out = tmp_path / "out"
    rc = main(["export", str(quickstart_job), "--checkpoint", str(digits_checkpoint),
               "--pareto", str(tmp_path / "pareto.parquet"), "--targets", "local-cpu,b16",
               "--budget", "latency_ms<=8", "--output-dir", str(out),
               "latency.targets=[{name: b16, batch_size: 16}]", "export.formats=[torchscript]",
               "latency.min_run_time_s=0.005"])
    assert rc == 0, capsys.readouterr().err
    rows = {r["target"]: r for r in pq.read_table(out / "deploy" / "deploy.parquet").to_pylist()}
    assert set(rows) == {"local-cpu", "b16"}
    keys = [digits_space.validate(a).key for a in archs]
    for device, index in (("local-cpu", 2), ("b16", 0)):
        row = rows[device]
        assert row["arch_key"] == keys[index], device
        assert row["folder"] == device and row["budget"] == "latency_ms<=8"
        assert row["latency_target"] == device  # re-timed on that device's settings
        meta = json.loads((out / "deploy" / device / "arch.json").read_text())
        assert meta["arch_key"] == keys[index]
    # Peak memory too is the device's: one inference of its batch size.
    for device, batch in (("local-cpu", 1), ("b16", 16)):
        model = load_subnet(out / "deploy" / device)
        assert rows[device]["peak_memory_mb"] == pytest.approx(
            peak_memory_mb(model, (torch.zeros(batch, 1, 8, 8),)), rel=1e-9)
