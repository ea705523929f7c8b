"""raynas.evaluation.halving: multi-fidelity evaluation inside the evaluator."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raynas.checkpoint import save_checkpoint
from raynas.evaluation import Evaluator
from raynas.evaluation.halving import Halving, estimate, rung_ends
from raynas.search.pareto import feasible, pareto_front
from raynas.search.searchers import Constraint, Objective
from raynas.supernets import create_supernet
from raynas.tasks import make_loader

OBJECTIVES = [("accuracy", "max"), ("flops", "min")]  # flops: exact and noise-free


@pytest.mark.parametrize("start, eta, total, first, ends", [
    (0.25, 2, 16, 1, [4, 8, 16]),
    (0.1, 3, 100, 1, [10, 30, 90, 100]),
    (0.01, 2, 10, 3, [3, 6, 10]),  # at least `first` samples first
    (0.5, 2, 3, 3, [3]),  # too few samples to halve: the whole set at once
    (0.25, 2, 269, 64, [68, 136, 269]),
])
def test_rungs(start, eta, total, first, ends):
    assert rung_ends(start, eta, total, first) == ends


def test_estimate_is_the_ratio_estimator():
    sums = {"acc": ([3.0, 1.0, 4.0], [4.0, 4.0, 4.0])}
    ratio, se = estimate(sums, 10)["acc"]
    assert ratio == pytest.approx(8 / 12)
    means = np.array([0.75, 0.25, 1.0])  # equal counts: the chunk means' error
    assert se == pytest.approx(math.sqrt((1 - 3 / 10) * means.var(ddof=1) / 3))
    assert estimate(sums, 3)["acc"][1] == 0  # every chunk seen
    assert estimate({"acc": ([3.0], [4.0])}, 10)["acc"][1] == math.inf  # one: no spread


def test_standard_error_covers_the_whole_set_mean():
    # A fixed set of 0/1 outcomes in 40 groups, seen through random subsets of 8: the full
    # mean lies within 2 standard errors about as often as a normal estimate promises.
    g = np.random.default_rng(0)
    outcomes = (g.random(40 * 16) < 0.7).astype(float).reshape(40, 16)
    truth = outcomes.mean()
    hits = 0
    for _ in range(400):
        picked = g.choice(40, 8, replace=False)
        ratio, se = estimate({"a": (outcomes[picked].sum(1), [16.0] * 8)}, 40)["a"]
        hits += abs(ratio - truth) <= 2 * se
    assert 0.9 <= hits / 400 <= 0.99


def _halving(**kw):
    return Halving(0.25, 2, 2.0, 256, OBJECTIVES, kw.get("constraints", ()),
                   {"accuracy": "max", "loss": "min"}, kw.get("known", ()))


def test_hopeless_against_the_front_and_constraints():
    h = _halving(known=[{"accuracy": 0.9, "flops": 100}, {"accuracy": 0.5, "flops": 300,
                                                           "fidelity": 0.5}])
    assert len(h.front) == 1  # a partly scored record does not start the front
    sure = {"accuracy": ([32.0] * 4, [40.0] * 4)}  # 0.8 on every unit: no spread
    noisy = {"accuracy": ([20.0, 40.0, 24.0, 44.0], [40.0] * 4)}  # 0.8, wide
    assert h.hopeless({"flops": 200}, sure)  # worse in both: stop
    assert not h.hopeless({"flops": 50}, sure)  # cheaper: may join the front
    assert not h.hopeless({"flops": 200}, noisy)  # could still reach 0.9
    assert _halving(constraints=[("flops", 150)]).hopeless({"flops": 200}, noisy)
    h.add({"accuracy": 0.95, "flops": 100})
    assert h.front.tolist() == [[-0.95, 100]]  # the dominated point left the front


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, tiny_space, digits_data):
    """The tiny supernet trained a little (sandwich steps), so subnets differ in quality."""
    task, data = digits_data
    torch.manual_seed(0)
    net = create_supernet(tiny_space)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    rng = random.Random(0)
    for _ in range(3):
        for b in make_loader(data.train, 64, shuffle=True):
            opt.zero_grad()
            for arch in (tiny_space.largest(), tiny_space.smallest(),
                         tiny_space.sample(rng.randrange(10**6))):
                net.set_arch(arch)
                F.cross_entropy(net(*task.inputs(b)), b["labels"]).backward()
            opt.step()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt_trained"), tiny_space,
                           net.state_dict(), epoch=2)


def _evaluator(checkpoint, space, halving=None):
    return Evaluator(str(checkpoint), {"name": "digits"}, {"min_run_time_s": 0.002},
                     evaluator={"calib_batches": 1, "calib_batch_size": 128,
                                "halving": halving},
                     expected_space=space.to_dict(), objectives=OBJECTIVES)


def test_halving_keeps_the_front_and_scores_less(trained_checkpoint, tiny_space):
    archs = list(tiny_space.enumerate())
    random.Random(1).shuffle(archs)
    full = _evaluator(trained_checkpoint, tiny_space).evaluate(archs)
    ev = _evaluator(trained_checkpoint, tiny_space, {"start": 0.25})
    halved = ev.evaluate(archs)
    assert "fidelity" not in full[0]
    stopped = [r for r in halved if r["fidelity"] < 1]
    assert ev.halving.stopped == len(stopped) >= len(archs) // 4  # it saves work ...
    objectives = [Objective(*o) for o in OBJECTIVES]
    truth = {r["arch_key"] for r in pareto_front(full, objectives)}
    assert {r["arch_key"] for r in pareto_front(halved, objectives)} == truth  # ... not front
    by_key = {r["arch_key"]: r for r in full}
    for r in halved:
        ref = by_key[r["arch_key"]]
        if r["fidelity"] == 1:  # scored in full: what the evaluator gives without halving
            assert r["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
            assert r["test_accuracy"] == ref["test_accuracy"]
        else:
            assert math.isnan(r["test_accuracy"]) and r["arch_key"] not in truth
            assert r["fidelity"] in {68 / 269, 136 / 269}  # a rung's share
            assert abs(r["accuracy"] - ref["accuracy"]) < 0.2  # an estimate of it
    assert not feasible(stopped)  # never a front point, in any table


def test_halving_refuses_the_infeasible_at_once(trained_checkpoint, tiny_space):
    ev = Evaluator(str(trained_checkpoint), {"name": "digits"}, {"min_run_time_s": 0.002},
                   evaluator={"calib_batches": 1, "calib_batch_size": 128,
                              "halving": {"start": 0.25}},
                   expected_space=tiny_space.to_dict(), objectives=OBJECTIVES,
                   constraints=[("flops", 1.0)])
    (r,) = ev.evaluate([tiny_space.largest()])
    assert r["fidelity"] == pytest.approx(68 / 269)  # the first rung only
    assert Constraint("flops", 1.0).violation(r) > 0


def test_no_halving_without_the_search_objectives(trained_checkpoint, tiny_space):
    ev = Evaluator(str(trained_checkpoint), {"name": "digits"}, {"min_run_time_s": 0.002},
                   evaluator={"halving": {"start": 0.25}}, expected_space=tiny_space.to_dict())
    assert ev.halving is None and "fidelity" not in ev.evaluate([tiny_space.smallest()])[0]
