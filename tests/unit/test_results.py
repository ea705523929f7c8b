"""raynas.search.results: evaluation records as Parquet tables."""

from __future__ import annotations

import json
import random
import threading
import time

import pyarrow.parquet as pq
import pytest

from raynas.errors import ConfigError
from raynas.search.results import (
    append_records,
    parts_dir,
    read_records,
    records_to_table,
    write_records,
)
from raynas.space import Arch


def _records(space, n=25, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        arch = space.sample(rng)
        out.append({"arch": arch.to_dict(), "accuracy": rng.random(),
                    "test_accuracy": rng.random(), "latency_ms": rng.uniform(0.05, 2.0),
                    "latency_target": "local-cpu", "flops": rng.randint(10**4, 10**6),
                    "params": rng.randint(1000, 90000), "eval_s": 0.01 * i})
    return out


def test_round_trip(tmp_path, digits_space):
    records = _records(digits_space)
    path = write_records(tmp_path / "sub" / "evals.parquet", records, digits_space)
    assert path.is_file()
    back = read_records(path)
    assert len(back) == len(records)
    for orig, got in zip(records, back):
        arch = Arch(orig["arch"])
        assert got["arch"] == orig["arch"]
        assert got["arch_key"] == arch.key
        for k, v in orig.items():
            if k != "arch":
                expected = pytest.approx(v) if isinstance(v, float) else v
                assert got[k] == expected, k
        # no per-dimension columns leak into the record
        assert not set(got) & set(digits_space.names)
        assert digits_space.validate(got["arch"]) == arch


def test_one_column_per_dimension(tmp_path, digits_space):
    records = _records(digits_space, n=5)
    path = write_records(tmp_path / "p.parquet", records, digits_space)
    table = pq.read_table(path)
    cols = table.column_names
    assert cols[:2] == ["arch_key", "arch"]
    assert cols[2:2 + len(digits_space.names)] == list(digits_space.names)
    assert {"accuracy", "latency_ms", "flops", "params"} <= set(cols)
    rows = table.to_pylist()
    for rec, row in zip(records, rows):
        assert row["s1_depth"] == rec["arch"]["s1_depth"]
        assert row["s2_width"] == rec["arch"]["s2_width"]
        assert json.loads(row["s3_kernel"]) == rec["arch"]["s3_kernel"]
        assert json.loads(row["arch"]) == rec["arch"]
    assert str(table.schema.field("s1_depth").type) == "int64"


def test_arch_key_recomputed(digits_space):
    rec = _records(digits_space, n=1)[0]
    table = records_to_table([{**rec, "arch_key": "stale"}], digits_space)
    assert table.column("arch_key").to_pylist() == [Arch(rec["arch"]).key]


def test_empty(tmp_path, tiny_space):
    path = write_records(tmp_path / "empty.parquet", [], tiny_space)
    assert read_records(path) == []


def test_columns_are_the_union_of_record_keys(tmp_path, tiny_space):
    from raynas.search.results import read_records, write_records

    a, b = tiny_space.largest(), tiny_space.smallest()
    records = [{"arch": a.to_dict(), "accuracy": 0.5, "latency_ms": 1.0},
               {"arch": b.to_dict(), "accuracy": 0.4, "latency_ms": 0.5,
                "latency_measured_ms": 0.6}]
    back = read_records(write_records(tmp_path / "r.parquet", records, tiny_space))
    assert back[0]["latency_measured_ms"] is None and back[1]["latency_measured_ms"] == 0.6


def test_a_table_being_replaced_reads_whole(tmp_path, digits_space):
    # A running search replaces evaluations.parquet as records arrive; a reader (a resumed
    # job, `raynas replay`, a watcher) must get one version whole, never a footer of one
    # and pages of the next ("Page was smaller than expected").
    path = tmp_path / "evals.parquet"
    records = _records(digits_space, n=200)
    write_records(path, records[:1], digits_space)
    stop = threading.Event()

    def writer():
        n = 1
        while not stop.is_set():
            write_records(path, records[:n % 200 + 1], digits_space)
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            back = read_records(path)
            assert 1 <= len(back) <= 200
            reads += 1
    finally:
        stop.set()
        thread.join()
    assert reads > 10


def test_export_choose_within_budgets():
    """``--budget``: the best point among those meeting every budget, not the best overall."""
    from raynas.pipeline.export import choose
    from raynas.search.searchers import Constraint, Objective

    front = [{"accuracy": 0.80, "latency_ms": 0.2, "params": 1e3},
             {"accuracy": 0.90, "latency_ms": 0.5, "params": 5e3},
             {"accuracy": 0.95, "latency_ms": 0.9, "params": 2e4}]
    acc = (Objective("accuracy", "max"), Objective("latency_ms", "min"))
    assert choose(front, "best", acc)["params"] == 2e4
    assert choose(front, "best", acc, [Constraint("params", 1e4)])["params"] == 5e3
    both = [Constraint("params", 1e4), Constraint("latency_ms", 0.3)]
    assert choose(front, "best", acc, both)["params"] == 1e3
    assert choose(front, 1, acc, [Constraint("params", 1e4)])["params"] == 5e3
    with pytest.raises(ConfigError, match=r"export.pick = 2: the Pareto front has 2 points"):
        choose(front, 2, acc, [Constraint("params", 1e4)])


def test_deploy_budgets_parse_and_label():
    from raynas.pipeline.deploy import budget_label, parse_budgets
    from raynas.search.searchers import Constraint

    known = {"accuracy": "max", "latency_ms": "min", "params": "min"}
    assert parse_budgets("params<=1e4, 2e4", known) == [Constraint("params", 1e4),
                                                        Constraint("params", 2e4)]
    sweep = parse_budgets("0.3,0.5", known)
    assert sweep == [Constraint("latency_ms", 0.3), Constraint("latency_ms", 0.5)]
    assert [budget_label(b) for b in sweep] == ["latency_ms_le_0_3", "latency_ms_le_0_5"]
    assert budget_label(Constraint("params", 2e4)) == "params_le_20000"
    for bad in ("params<=", "params<=1,,2", "size<=3", "1,1"):
        with pytest.raises(ConfigError, match="--budgets"):
            parse_budgets(bad, known)


def test_a_growing_table_appends_parts_and_reads_as_one(tmp_path, digits_space):
    path = tmp_path / "evaluations.parquet"
    records = list({Arch(r["arch"]).key: r for r in _records(digits_space, n=60)}.values())
    first, rest = records[:10], records[10:]
    write_records(path, first, digits_space)  # a resumed search starts from a file
    for start in range(10, len(records), 8):  # then appends a part per batch
        append_records(path, records[start:start + 8], digits_space, start)
    parts = sorted(parts_dir(path).glob("*.parquet"))
    assert [p.name for p in parts][:2] == ["000000010.parquet", "000000018.parquet"]
    # Each batch writes only its own rows: the file still holds the first 10.
    assert pq.read_table(path).num_rows == 10
    assert sum(pq.read_table(p).num_rows for p in parts) == len(rest)
    back = read_records(path)
    assert [r["arch"] for r in back] == [r["arch"] for r in records]  # in row order
    assert [r["accuracy"] for r in back] == [r["accuracy"] for r in records]
    # Written whole at the end: one file, the parts gone, the same rows.
    write_records(path, back, digits_space)
    assert not parts_dir(path).exists()
    assert [r["arch"] for r in read_records(path)] == [r["arch"] for r in records]


def test_parts_alone_read_and_a_row_in_file_and_part_counts_once(tmp_path, digits_space):
    path = tmp_path / "evaluations.parquet"
    records = _records(digits_space, n=6)
    append_records(path, records[:3], digits_space, 0)  # no file yet: a search's first batch
    assert [r["arch"] for r in read_records(path)] == [r["arch"] for r in records[:3]]
    # A search finishing: the whole table written as one file, its parts not yet removed.
    pq.write_table(records_to_table(records[:3], digits_space), path)
    assert [r["arch"] for r in read_records(path)] == [r["arch"] for r in records[:3]]
