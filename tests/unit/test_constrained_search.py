"""A study whose space holds the subnet: the architecture dims as Ray Tune dims, and the
Optuna and Nevergrad searchers told each trial's budget violations (no Ray needed: the
searchers run on the driver)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from raynas.config import build_config
from raynas.hpo.space import VIOLATION, arch_of, arch_point, arch_tune_space
from raynas.hpo.study import build_searcher


def test_every_subnet_has_one_point_in_the_tune_space_and_reads_back(tiny_space):
    space = arch_tune_space(tiny_space)
    # 4 scalar dims, and 2 per-layer dims of up to 2 layers: one Tune dim per slot.
    assert sorted(space) == sorted(["arch.s1_depth", "arch.s1_width", "arch.s2_depth",
                                    "arch.s2_width", "arch.s1_kernel.0", "arch.s1_kernel.1",
                                    "arch.s2_kernel.0", "arch.s2_kernel.1"])
    rng = random.Random(0)
    seen = set()
    for _ in range(3000):  # all 144 subnets of the space, each read back from its point
        arch = tiny_space.sample(rng)
        seen.add(arch.key)
        point = arch_point(tiny_space, arch)
        assert set(point) == set(space)  # a whole point: every searcher takes it
        assert arch_of(tiny_space, point) == arch
    assert len(seen) == 144
    # Drawn from Tune's domains: always a valid subnet, its depth picking the slots it uses.
    np.random.seed(0)
    for _ in range(50):
        config = {k: v.sample() for k, v in space.items()}
        arch = arch_of(tiny_space, config)
        assert len(arch["s1_kernel"]) == config["arch.s1_depth"]
        assert list(arch["s2_kernel"]) == [config[f"arch.s2_kernel.{i}"]
                                           for i in range(config["arch.s2_depth"])]


def _study(searcher_name: str, told: bool, n: int = 40) -> list[float]:
    """``n`` sequential trials of one dim x in [0, 1], maximising x under the budget
    x <= 0.3: the values drawn. ``told``: each result carries its violation."""
    from ray import tune

    cfg = build_config({"name": "t", "space": "tiny_cnn", "hpo": {
        "searcher": searcher_name, "trials": n}}, "job")
    searcher = build_searcher(cfg, "score", "max")
    assert searcher.set_search_properties("score", "max", {"x": tune.uniform(0.0, 1.0)})
    xs = []
    for i in range(n):
        x = float(searcher.suggest(str(i))["x"])
        xs.append(x)
        result = {"score": x}
        if told:
            result[VIOLATION + "latency_ms"] = (x - 0.3) / 0.3
        searcher.on_trial_complete(str(i), result)
    return xs


@pytest.mark.parametrize("name", ["optuna_tpe", "nevergrad"])
def test_a_searcher_told_the_violations_keeps_to_the_budget(name):
    """Told nothing, the searcher climbs x past the budget; told the violations, it keeps
    to the feasible side and closes in on the limit from below."""
    blind, told = _study(name, False), _study(name, True)
    late = slice(20, None)
    inside_blind = sum(x <= 0.3 for x in blind[late]) / 20
    inside_told = sum(x <= 0.3 for x in told[late]) / 20
    assert inside_told >= inside_blind + 0.4, (inside_blind, inside_told)
    assert max(x for x in told if x <= 0.3) > 0.25


def test_the_study_starts_from_front_points_within_the_budgets_spread_over_it(tiny_space):
    from raynas.pipeline.finetune import _starts
    from raynas.search.searchers import Constraint

    front = [{"arch": tiny_space.sample(i).to_dict(), "params": 1000 * i} for i in range(8)]
    front.append(dict(front[1]))  # a repeat is one start
    budget = Constraint("params", 5000)  # points 0-5 meet it
    starts = _starts(tiny_space, front, [budget], 3, {"lr": 0.01})
    keys = [arch_of(tiny_space, s).key for s in starts]
    # Three of the six that fit, spread over them: the first, the middle, the last.
    assert keys == [tiny_space.sample(i).key for i in (0, 2, 5)]
    assert all(s["lr"] == 0.01 for s in starts)
    # A budget on a metric the front lacks leaves it to the trials; none fits: no start.
    assert len(_starts(tiny_space, front, [Constraint("flops", 1)], 10, {})) == 8
    assert _starts(tiny_space, front, [Constraint("params", -1)], 3, {}) == []
