"""raynas.search.pareto: fronts and hypervolume on hand-made points."""

from __future__ import annotations

import numpy as np
import pytest

from raynas.search.pareto import (
    default_reference,
    feasible,
    hypervolume,
    pareto_front,
    pareto_mask,
)
from raynas.search.searchers import DEFAULT_OBJECTIVES, Constraint, Objective


def _r(key, acc, lat, params=100):
    return {"arch_key": key, "accuracy": acc, "latency_ms": lat, "params": params}


RECORDS = [
    _r("a", 0.90, 5.0),
    _r("b", 0.80, 2.0),
    _r("c", 0.50, 1.0),
    _r("d", 0.70, 3.0),              # dominated by b
    _r("e", 0.80, 2.0),              # tie with b, another arch: both stay
    _r("b", 0.80, 2.0),              # b evaluated twice: one point
    _r("g", 0.95, 9.0),              # only feasible without a latency budget
    _r("h", 0.50, 1.5),              # dominated by c (same accuracy, slower)
    _r("i", 0.40, 0.5),              # fastest
    _r("p", 0.99, 0.3, params=5000),  # dominates everything, but too big under a params cap
]


def _keys(front):
    return [r["arch_key"] for r in front]


class TestFront:
    def test_unconstrained(self):
        assert _keys(pareto_front(RECORDS, DEFAULT_OBJECTIVES)) == ["p"]

    def test_constraint_removes_before_dominance(self):
        cap = (Constraint("params", 1000),)
        front = pareto_front(RECORDS, DEFAULT_OBJECTIVES, cap)
        assert _keys(front) == ["i", "c", "b", "e", "a", "g"]
        lat = [r["latency_ms"] for r in front]
        assert lat == sorted(lat)

    def test_latency_budget(self):
        cons = (Constraint("params", 1000), Constraint("latency_ms", 6.0))
        front = pareto_front(RECORDS, DEFAULT_OBJECTIVES, cons)
        assert _keys(front) == ["i", "c", "b", "e", "a"]
        assert all(r["latency_ms"] <= 6.0 for r in front)
        # budget exactly at a point's latency keeps it (<=)
        cons = (Constraint("params", 1000), Constraint("latency_ms", 5.0))
        assert _keys(pareto_front(RECORDS, DEFAULT_OBJECTIVES, cons))[-1] == "a"

    def test_everything_infeasible(self):
        assert pareto_front(RECORDS, DEFAULT_OBJECTIVES, (Constraint("latency_ms", 0.1),)) == []
        assert pareto_front([], DEFAULT_OBJECTIVES) == []

    def test_same_latency_orders_by_accuracy(self):
        recs = [_r("x", 0.6, 1.0), _r("y", 0.9, 2.0), _r("z", 0.7, 1.0)]
        # x is dominated by z (same latency, less accurate)
        assert _keys(pareto_front(recs, DEFAULT_OBJECTIVES)) == ["z", "y"]

    def test_without_arch_keys(self):
        recs = [{"accuracy": 0.5, "latency_ms": 1.0}, {"accuracy": 0.5, "latency_ms": 1.0},
                {"accuracy": 0.4, "latency_ms": 2.0}]
        assert len(pareto_front(recs, DEFAULT_OBJECTIVES)) == 2  # duplicates stay

    def test_other_objectives(self):
        objs = (Objective("latency_ms", "min"), Objective("params", "min"))
        recs = [_r("a", 0, 1.0, 300), _r("b", 0, 2.0, 100), _r("c", 0, 3.0, 200)]
        # ordered by the last objective (params), c is dominated by b
        assert _keys(pareto_front(recs, objs)) == ["b", "a"]

    def test_mask(self):
        losses = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [0.5, 3.0], [1.0, 3.0]])
        assert pareto_mask(losses).tolist() == [True, True, False, True, False]
        assert pareto_mask(np.zeros((0, 2))).tolist() == []

    def test_feasible(self):
        recs = [_r("a", 0.5, 1.0), _r("b", 0.5, 2.0)]
        assert _keys(feasible(recs, (Constraint("latency_ms", 1.5),))) == ["a"]
        assert feasible(recs) == recs


class TestHypervolume:
    POINTS = [_r("b", 0.8, 2.0), _r("c", 0.5, 1.0), _r("a", 0.9, 5.0)]
    REF = [0.0, 10.0]
    # Staircase under the points, reference (accuracy 0, latency 10), by hand:
    # (10-1)*0.5 + (10-2)*(0.8-0.5) + (10-5)*(0.9-0.8) = 4.5 + 2.4 + 0.5
    EXPECTED = 7.4

    def test_hand_computed(self):
        assert hypervolume(self.POINTS, DEFAULT_OBJECTIVES, self.REF) == \
            pytest.approx(self.EXPECTED)

    def test_single_point_is_a_rectangle(self):
        assert hypervolume([_r("x", 0.6, 4.0)], DEFAULT_OBJECTIVES, self.REF) == \
            pytest.approx(0.6 * 6.0)

    def test_dominated_and_duplicate_points_add_nothing(self):
        extra = [_r("d", 0.7, 3.0), _r("b", 0.8, 2.0), _r("h", 0.4, 9.0)]
        assert hypervolume(self.POINTS + extra, DEFAULT_OBJECTIVES, self.REF) == \
            pytest.approx(self.EXPECTED)

    def test_points_outside_reference_add_nothing(self):
        outside = [_r("slow", 0.99, 12.0), _r("at_ref", 0.95, 10.0), _r("zero", 0.0, 0.5),
                   _r("neg", -0.1, 0.1)]
        assert hypervolume(self.POINTS + outside, DEFAULT_OBJECTIVES, self.REF) == \
            pytest.approx(self.EXPECTED)
        assert hypervolume(outside, DEFAULT_OBJECTIVES, self.REF) == 0.0

    def test_constraint(self):
        hv = hypervolume(self.POINTS, DEFAULT_OBJECTIVES, self.REF,
                         (Constraint("latency_ms", 3.0),))
        assert hv == pytest.approx(4.5 + 2.4)
        assert hypervolume(self.POINTS, DEFAULT_OBJECTIVES, self.REF,
                           (Constraint("latency_ms", 0.1),)) == 0.0
        assert hypervolume([], DEFAULT_OBJECTIVES, self.REF) == 0.0

    def test_three_objectives(self):
        objs = DEFAULT_OBJECTIVES + (Objective("params", "min"),)
        pts = [_r("p", 0.5, 2.0, 3), _r("q", 0.25, 1.0, 4)]
        # boxes 0.5*2*2 and 0.25*3*1 overlap in 0.25*2*1
        assert hypervolume(pts, objs, [0.0, 4.0, 5.0]) == pytest.approx(2 + 0.75 - 0.5)

    def test_default_reference(self):
        assert default_reference(DEFAULT_OBJECTIVES, self.POINTS) == \
            pytest.approx([0.0, 5.5])
        ref = default_reference(DEFAULT_OBJECTIVES, self.POINTS)
        assert hypervolume(self.POINTS, DEFAULT_OBJECTIVES, ref) == \
            pytest.approx(4.5 * 0.5 + 3.5 * 0.3 + 0.5 * 0.1)

    def test_monotone_in_points(self):
        base = hypervolume(self.POINTS, DEFAULT_OBJECTIVES, self.REF)
        better = hypervolume(self.POINTS + [_r("n", 0.85, 1.5)], DEFAULT_OBJECTIVES, self.REF)
        # the new point adds the box latency [1.5, 2] x accuracy [0.5, 0.85] plus
        # latency [2, 5] x accuracy [0.8, 0.85] (beyond 5 ms, point a already covers it)
        assert better == pytest.approx(base + 0.5 * 0.35 + 3 * 0.05)
