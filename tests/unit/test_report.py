"""The search report: progress, importances, the HTML file."""

from __future__ import annotations

import pytest

from raynas.search.pareto import default_reference, hypervolume
from raynas.search.report import importances, progress, write_report
from raynas.search.searchers import Objective

OBJECTIVES = (Objective("accuracy", "max"), Objective("latency_ms", "min"))


def _records(space):
    """Every subnet of the tiny space; accuracy follows s1_width alone, latency s2_depth
    alone (plus a small deterministic wobble)."""
    out = []
    for i, arch in enumerate(space.enumerate()):
        out.append({"arch_key": arch.key, "arch": arch.to_dict(),
                    "accuracy": 0.5 + (0.2 if arch["s1_width"] == 16 else 0) + (i % 7) * 1e-3,
                    "latency_ms": 1.0 + arch["s2_depth"] + (i % 5) * 1e-3})
    return out


def test_importance_finds_the_dimension_each_objective_follows(tiny_space):
    weights = importances(_records(tiny_space), tiny_space, OBJECTIVES)
    assert max(weights["accuracy"], key=weights["accuracy"].get) == "s1_width"
    assert weights["accuracy"]["s1_width"] > 0.8
    assert max(weights["latency_ms"], key=weights["latency_ms"].get) == "s2_depth"
    assert sum(weights["latency_ms"].values()) == pytest.approx(1.0)
    assert importances(_records(tiny_space)[:3], tiny_space, OBJECTIVES) == {}


def test_progress_is_the_hypervolume_of_each_prefix(tiny_space):
    records = _records(tiny_space)
    ref = default_reference(OBJECTIVES, records)
    steps = progress(records, OBJECTIVES, ref, points=10)
    assert [n for n, _ in steps] == [round(len(records) * i / 10) for i in range(1, 11)]
    assert all(a <= b for (_, a), (_, b) in zip(steps, steps[1:]))
    assert steps[3][1] == hypervolume(records[:steps[3][0]], OBJECTIVES, ref)
    assert steps[-1][1] == hypervolume(records, OBJECTIVES, ref)


def test_report_is_one_self_contained_file(tiny_space, tmp_path):
    records = _records(tiny_space)
    front = records[:2]
    data = write_report(tmp_path / "report.html", title="t <1>", space=tiny_space,
                        records=records, front=front, objectives=OBJECTIVES,
                        reference=default_reference(OBJECTIVES, records), constraints=(),
                        metrics={"evaluated": len(records)})
    text = (tmp_path / "report.html").read_text()
    assert "<h1>t &lt;1&gt;</h1>" in text
    assert text.count("data:image/png;base64,") == 2  # progress, importance
    assert all(r["arch_key"] in text for r in front) and "src=\"http" not in text
    assert set(data) == {"progress", "importance"}
