"""raynas.search.pareto: fronts and hypervolume on hand-made points."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from raynas.search.pareto import (
    default_reference,
    feasible,
    hypervolume,
    pareto_front,
    pareto_mask,
)
from raynas.search.searchers import Constraint, Objective

ACC_LAT = (Objective("accuracy", "max"), Objective("latency_ms", "min"))


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
        assert _keys(pareto_front(RECORDS, ACC_LAT)) == ["p"]

    def test_constraint_removes_before_dominance(self):
        cap = (Constraint("params", 1000),)
        front = pareto_front(RECORDS, ACC_LAT, cap)
        assert _keys(front) == ["i", "c", "b", "e", "a", "g"]
        lat = [r["latency_ms"] for r in front]
        assert lat == sorted(lat)

    def test_latency_budget(self):
        cons = (Constraint("params", 1000), Constraint("latency_ms", 6.0))
        front = pareto_front(RECORDS, ACC_LAT, cons)
        assert _keys(front) == ["i", "c", "b", "e", "a"]
        assert all(r["latency_ms"] <= 6.0 for r in front)
        # budget exactly at a point's latency keeps it (<=)
        cons = (Constraint("params", 1000), Constraint("latency_ms", 5.0))
        assert _keys(pareto_front(RECORDS, ACC_LAT, cons))[-1] == "a"

    def test_everything_infeasible(self):
        assert pareto_front(RECORDS, ACC_LAT, (Constraint("latency_ms", 0.1),)) == []
        assert pareto_front([], ACC_LAT) == []

    def test_same_latency_orders_by_accuracy(self):
        recs = [_r("x", 0.6, 1.0), _r("y", 0.9, 2.0), _r("z", 0.7, 1.0)]
        # x is dominated by z (same latency, less accurate)
        assert _keys(pareto_front(recs, ACC_LAT)) == ["z", "y"]

    def test_without_arch_keys(self):
        recs = [{"accuracy": 0.5, "latency_ms": 1.0}, {"accuracy": 0.5, "latency_ms": 1.0},
                {"accuracy": 0.4, "latency_ms": 2.0}]
        assert len(pareto_front(recs, ACC_LAT)) == 2  # duplicates stay

    def test_other_objectives(self):
        objs = (Objective("latency_ms", "min"), Objective("params", "min"))
        recs = [_r("a", 0, 1.0, 300), _r("b", 0, 2.0, 100), _r("c", 0, 3.0, 200)]
        # ordered by the last objective (params), c is dominated by b
        assert _keys(pareto_front(recs, objs)) == ["b", "a"]

    def test_mask(self):
        losses = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [0.5, 3.0], [1.0, 3.0]])
        assert pareto_mask(losses).tolist() == [True, True, False, True, False]
        assert pareto_mask(np.zeros((0, 2))).tolist() == []

    @pytest.mark.parametrize("n_obj", [1, 2, 3, 4])
    def test_mask_agrees_with_comparing_every_pair(self, n_obj):
        """Ties, duplicates, infinities and NaN rows (compared with nothing), against the
        definition: a row is dropped when another is <= everywhere and < somewhere."""
        rng = np.random.default_rng(n_obj)
        for _ in range(100):
            losses = rng.integers(0, 4, (int(rng.integers(1, 40)), n_obj)).astype(float)
            losses[rng.random(losses.shape) < 0.03] = np.inf
            losses[rng.random(len(losses)) < 0.05, 0] = np.nan
            want = [not any(np.all(other <= row) and np.any(other < row) for other in losses)
                    for row in losses]
            assert pareto_mask(losses).tolist() == want

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
        assert hypervolume(self.POINTS, ACC_LAT, self.REF) == \
            pytest.approx(self.EXPECTED)

    def test_single_point_is_a_rectangle(self):
        assert hypervolume([_r("x", 0.6, 4.0)], ACC_LAT, self.REF) == \
            pytest.approx(0.6 * 6.0)

    def test_dominated_and_duplicate_points_add_nothing(self):
        extra = [_r("d", 0.7, 3.0), _r("b", 0.8, 2.0), _r("h", 0.4, 9.0)]
        assert hypervolume(self.POINTS + extra, ACC_LAT, self.REF) == \
            pytest.approx(self.EXPECTED)

    def test_points_outside_reference_add_nothing(self):
        outside = [_r("slow", 0.99, 12.0), _r("at_ref", 0.95, 10.0), _r("zero", 0.0, 0.5),
                   _r("neg", -0.1, 0.1)]
        assert hypervolume(self.POINTS + outside, ACC_LAT, self.REF) == \
            pytest.approx(self.EXPECTED)
        assert hypervolume(outside, ACC_LAT, self.REF) == 0.0

    def test_constraint(self):
        hv = hypervolume(self.POINTS, ACC_LAT, self.REF,
                         (Constraint("latency_ms", 3.0),))
        assert hv == pytest.approx(4.5 + 2.4)
        assert hypervolume(self.POINTS, ACC_LAT, self.REF,
                           (Constraint("latency_ms", 0.1),)) == 0.0
        assert hypervolume([], ACC_LAT, self.REF) == 0.0

    def test_three_objectives(self):
        objs = ACC_LAT + (Objective("params", "min"),)
        pts = [_r("p", 0.5, 2.0, 3), _r("q", 0.25, 1.0, 4)]
        # boxes 0.5*2*2 and 0.25*3*1 overlap in 0.25*2*1
        assert hypervolume(pts, objs, [0.0, 4.0, 5.0]) == pytest.approx(2 + 0.75 - 0.5)

    def test_default_reference(self):
        # worst value pushed out by 10% of the range: accuracy 0.5 - 0.04, latency 5 + 0.4
        ref = default_reference(ACC_LAT, self.POINTS)
        assert ref == pytest.approx([0.46, 5.4])
        assert hypervolume(self.POINTS, ACC_LAT, ref) == \
            pytest.approx(4.4 * 0.04 + 3.4 * 0.3 + 0.4 * 0.1)

    def test_monotone_in_points(self):
        base = hypervolume(self.POINTS, ACC_LAT, self.REF)
        better = hypervolume(self.POINTS + [_r("n", 0.85, 1.5)], ACC_LAT, self.REF)
        # the new point adds the box latency [1.5, 2] x accuracy [0.5, 0.85] plus
        # latency [2, 5] x accuracy [0.8, 0.85] (beyond 5 ms, point a already covers it)
        assert better == pytest.approx(base + 0.5 * 0.35 + 3 * 0.05)


class TestReference:
    """default_reference: one rule for any metric, whatever its scale, sign or bounds."""

    BLEU_WER = (Objective("bleu", "max"), Objective("wer", "min"))

    def test_bleu_and_wer(self):
        # a trade-off: more BLEU costs more WER
        recs = [{"bleu": 20.0, "wer": 0.3}, {"bleu": 30.0, "wer": 0.4},
                {"bleu": 40.0, "wer": 0.5}]
        ref = default_reference(self.BLEU_WER, recs)
        assert ref == pytest.approx([18.0, 0.52])  # 20 - 10% of 20; 0.5 + 10% of 0.2
        # slices of BLEU, each as high as the lowest WER reaching that far:
        expected = (40 - 30) * (0.52 - 0.5) + (30 - 20) * (0.52 - 0.4) + (20 - 18) * (0.52 - 0.3)
        assert hypervolume(recs, self.BLEU_WER, ref) == pytest.approx(expected)

    def test_every_point_adds_volume(self):
        # Negative and above-1 values: each point still lies strictly inside the reference.
        objs = (Objective("log_likelihood", "max"), Objective("wer", "min"))
        recs = [{"log_likelihood": -3.0, "wer": 1.4}, {"log_likelihood": -1.0, "wer": 2.0}]
        ref = default_reference(objs, recs)
        assert ref == pytest.approx([-3.2, 2.06])
        assert hypervolume(recs, objs, ref) == pytest.approx(
            0.2 * (2.06 - 1.4) + 2.0 * (2.06 - 2.0))

    def test_shift_and_scale_invariant_ratios(self):
        recs = [{"bleu": b, "wer": w} for b, w in [(20, 0.3), (30, 0.4), (40, 0.5), (25, 0.45)]]
        # the same quality, rescaled and shifted (and BLEU turned into a loss to minimise)
        moved = [{"bleu": 100 - 2 * r["bleu"], "wer": 10 * r["wer"] - 3} for r in recs]
        objs = (Objective("bleu", "min"), Objective("wer", "min"))
        ratio = (hypervolume(recs[:2], self.BLEU_WER, default_reference(self.BLEU_WER, recs))
                 / hypervolume(recs, self.BLEU_WER, default_reference(self.BLEU_WER, recs)))
        moved_ratio = (hypervolume(moved[:2], objs, default_reference(objs, moved))
                       / hypervolume(moved, objs, default_reference(objs, moved)))
        assert moved_ratio == pytest.approx(ratio)

    def test_placed_by_the_front_not_by_the_worst_subnet(self):
        """A dominated outlier (slow and poor) moves nothing; an infeasible subnet does not
        place it either: the point is the feasible front's nadir plus 10% of its range."""
        front = [{"bleu": 20.0, "wer": 0.3}, {"bleu": 40.0, "wer": 0.5}]
        outlier = {"bleu": 1.0, "wer": 9.0}
        assert default_reference(self.BLEU_WER, front + [outlier]) == \
            pytest.approx([18.0, 0.52])
        fast_but_over = {"bleu": 10.0, "wer": 0.1, "latency_ms": 50.0}
        recs = [{**r, "latency_ms": 1.0} for r in front] + [fast_but_over]
        assert default_reference(self.BLEU_WER, recs) == pytest.approx([7.0, 0.54])
        assert default_reference(self.BLEU_WER, recs, (Constraint("latency_ms", 10.0),)) == \
            pytest.approx([18.0, 0.52])

    def test_one_value_and_non_finite(self):
        recs = [{"bleu": 30.0, "wer": 0.0}, {"bleu": float("nan"), "wer": 0.0}]
        assert default_reference(self.BLEU_WER, recs) == pytest.approx([27.0, 1.0])
        with pytest.raises(ValueError, match="no finite value of 'bleu'"):
            default_reference(self.BLEU_WER, [{"bleu": float("nan"), "wer": 1.0}])


class TestExactHypervolume:
    """Against volumes computed by hand, in 2 and 3 objectives."""

    def test_2d_staircase(self):
        objs = (Objective("f1", "min"), Objective("f2", "min"))
        pts = [{"f1": 1.0, "f2": 4.0}, {"f1": 2.0, "f2": 2.0}, {"f1": 3.0, "f2": 1.0},
               {"f1": 3.5, "f2": 3.5}]  # the last one is dominated by (2, 2)
        # columns between consecutive f1 values up to the reference (5, 5):
        # [1,2] x [4,5] + [2,3] x [2,5] + [3,5] x [1,5] = 1 + 3 + 8
        assert hypervolume(pts, objs, [5.0, 5.0]) == pytest.approx(12.0)

    def test_3d_three_boxes(self):
        objs = tuple(Objective(f"f{i}", "min") for i in range(3))
        pts = [dict(zip(("f0", "f1", "f2"), p)) for p in
               [(1.0, 2.0, 2.0), (2.0, 1.0, 2.0), (2.0, 2.0, 1.0)]]
        # boxes to the reference (3, 3, 3): each 2 x 1 x 1 = 2 (sum 6); every pair overlaps
        # in [2,3]^3 (volume 1), and so do all three: 6 - 3 * 1 + 1 = 4
        assert hypervolume(pts, objs, [3.0, 3.0, 3.0]) == pytest.approx(4.0)
        # a point dominated by the first adds nothing; one at the reference in f2 adds nothing
        more = pts + [{"f0": 1.5, "f1": 2.5, "f2": 2.5}, {"f0": 0.0, "f1": 0.0, "f2": 3.0}]
        assert hypervolume(more, objs, [3.0, 3.0, 3.0]) == pytest.approx(4.0)

    def test_3d_mixed_directions(self):
        objs = (Objective("accuracy", "max"), Objective("latency_ms", "min"),
                Objective("params", "min"))
        pts = [{"accuracy": 0.9, "latency_ms": 2.0, "params": 3.0},
               {"accuracy": 0.6, "latency_ms": 1.0, "params": 1.0}]
        # boxes from reference (0.5, 4, 4): 0.4 * 2 * 1 = 0.8 and 0.1 * 3 * 3 = 0.9, which
        # overlap in 0.1 * 2 * 1 = 0.2
        assert hypervolume(pts, objs, [0.5, 4.0, 4.0]) == pytest.approx(0.8 + 0.9 - 0.2)

    def test_one_objective(self):
        # accuracy alone (latency only a budget): the distance from the best to the reference
        objs = ACC_LAT[:1]
        assert hypervolume(TestHypervolume.POINTS, objs, [0.2]) == pytest.approx(0.7)

    def test_needs_no_private_optuna_module(self, monkeypatch):
        # optuna._hypervolume is private: a minor release may move it (optuna < 7 is allowed).
        monkeypatch.setitem(sys.modules, "optuna._hypervolume", None)
        assert hypervolume(TestHypervolume.POINTS, ACC_LAT, TestHypervolume.REF) \
            == pytest.approx(TestHypervolume.EXPECTED)


def test_the_search_keeps_its_front_as_records_arrive(tmp_path, capsys):
    """The driver's front, updated batch by batch from the last front, is the front of
    every record so far, with a budget and duplicates in the batches."""
    import random

    from raynas.search.searchers import Constraint
    from raynas.search.tune_driver import _Collector

    rng = random.Random(3)
    objectives = [Objective("accuracy", "max"), Objective("latency_ms", "min")]
    budget = [Constraint("latency_ms", 2.5)]
    prior = [{"arch_key": f"p{i}", "accuracy": rng.random(), "latency_ms": rng.uniform(0, 3)}
             for i in range(20)]
    collector = _Collector("k", 500, objectives, budget, tmp_path / "log.jsonl", None, prior)
    for b in range(30):
        batch = [{"arch_key": f"b{b}-{i}", "accuracy": round(rng.random(), 2),
                  "latency_ms": round(rng.uniform(0, 3), 1)} for i in range(16)]
        collector.on_trial_result(b, [], None, {"records": batch + batch[:3]})
        want = pareto_front(collector.records, objectives, budget)
        assert sorted(r["arch_key"] for r in collector.front) == sorted(
            r["arch_key"] for r in want)
    # A batch's repeats are records too (the searcher asked twice); earlier keys are not.
    assert len(collector.records) == 20 + 30 * 19
    assert f"search {20 + 30 * 19}/500 subnets  front {len(want)} points" in (
        capsys.readouterr().out)
