"""raynas.search.evolution (HAT's evolutionary search) and raynas.search.ng (nevergrad)."""

from __future__ import annotations

import random
import re
import statistics
import subprocess
import sys
import warnings

import cloudpickle
import numpy as np
import pytest
from search_problems import pattern_problem
from test_searchers import _objective

from raynas.errors import ConfigError
from raynas.search.evolution import EvolutionSearcher, crowding_distance, rank
from raynas.search.pareto import hypervolume
from raynas.search.registry import create_searcher, searcher_names
from raynas.search.searchers import Constraint, Objective
from raynas.space import Arch, PerLayer, SearchSpace

ACC_LAT = (Objective("accuracy", "max"), Objective("latency_ms", "min"))

ACCURACY = (Objective("accuracy", "max"),)


def _evo(space, **kw) -> EvolutionSearcher:
    kw.setdefault("objectives", ACC_LAT)
    return create_searcher("hat_evolution", space=space, **kw)


def _drive(searcher, objective, n: int, batch: int = 16, fail=lambda i: False):
    """Ask ``batch`` archs, then tell them (last first), like the Tune driver; returns
    ``(arch, values)`` for every evaluation that did not fail."""
    out, pending = [], []
    for i in range(n):
        pending.append((i, *searcher.ask()))
        if len(pending) == batch or i == n - 1:
            for j, token, arch in reversed(pending):
                values = None if fail(j) else objective(arch)
                searcher.tell(token, values)
                if values is not None:
                    out.append((arch, values))
            pending = []
    return out


def _genes(space: SearchSpace, arch: Arch) -> dict[str, object]:
    """One gene per scalar dimension and per layer of a per-layer dimension."""
    genes = {}
    for d in space.dims:
        if isinstance(d, PerLayer):
            genes.update({f"{d.name}[{i}]": v for i, v in enumerate(arch[d.name])})
        else:
            genes[d.name] = arch[d.name]
    return genes


# ---- options ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, allowed", [
    ("hat_evolution", "crossover_size, mutation_prob, mutation_size, parents_size, "
                      "population_size"),
    ("nevergrad", "budget, num_workers, optimizer, population_size, reference"),
    ("optuna_nsga2", "population_size"),
    ("optuna_tpe", "population_size"),
    ("random", "population_size"),
])
def test_unknown_option(name, allowed, tiny_space):
    assert name in searcher_names()
    with pytest.raises(ConfigError) as e:
        create_searcher(name, objectives=ACC_LAT,
                        space=tiny_space, population_size=8, mutation_rate=0.5)
    assert str(e.value) == (f"search.options.mutation_rate = 0.5: unknown option for searcher "
                            f"{name!r}; allowed: {allowed}")
    create_searcher(name, objectives=ACC_LAT,
                    space=tiny_space, population_size=8)  # the driver's call works


@pytest.mark.parametrize("option, value, message", [
    ("parents_size", 0, "must be an integer >= 1"),
    ("population_size", 2.5, "must be an integer >= 1"),
    ("mutation_prob", 1.5, "must be in [0, 1]"),
    ("mutation_prob", True, "must be in [0, 1]"),
    ("mutation_size", -1, "must be an integer >= 0"),
])
def test_evolution_bad_option_values(option, value, message, tiny_space):
    with pytest.raises(ConfigError, match=rf"^search\.options\.{option} = .*{re.escape(message)}"):
        _evo(tiny_space, **{option: value})
    with pytest.raises(ConfigError, match="mutation_size \\+ crossover_size"):
        _evo(tiny_space, mutation_size=0, crossover_size=0)


def test_nevergrad_bad_option_values(tiny_space):
    with pytest.raises(ConfigError) as e:
        create_searcher("nevergrad", objectives=ACC_LAT,
                        space=tiny_space, optimizer="NoSuchOptimizer")
    text = str(e.value)
    assert text.startswith("search.options.optimizer = 'NoSuchOptimizer': not a nevergrad")
    assert "DiscreteOnePlusOne" in text and "NGOpt" in text
    with pytest.raises(ConfigError, match="did you mean DiscreteOnePlusOne"):
        create_searcher("nevergrad", objectives=ACC_LAT,
                        space=tiny_space, optimizer="DiscreteOnePlusOn")
    with pytest.raises(ConfigError, match=r"search\.options\.budget = 0: must be an integer"):
        create_searcher("nevergrad", objectives=ACC_LAT, space=tiny_space, budget=0)
    with pytest.raises(ConfigError, match=r"search\.options\.reference = \[1\.0\]: must be a "
                                          r"list of 2 finite numbers"):
        create_searcher("nevergrad", objectives=ACC_LAT, space=tiny_space, reference=[1.0])
    create_searcher("nevergrad", objectives=ACC_LAT,
                    space=tiny_space, budget=None, optimizer="NGOpt")


def test_registry_import_stays_cheap():
    code = ("import sys; from raynas.search.registry import searcher_names; "
            "names = searcher_names(); "
            "assert 'nevergrad' in names and 'hat_evolution' in names, names; "
            "heavy = [m for m in ('nevergrad', 'optuna') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- evolution: breeding --------------------------------------------------------------------
def test_generation_zero_is_random_then_children(digits_space):
    s = _evo(digits_space, seed=0, population_size=6, parents_size=3, mutation_size=4,
             crossover_size=4)
    gen0 = _drive(s, _objective, 6, batch=6)
    assert s.generation == 0 and len({a for a, _ in gen0}) == 6
    children = [s.ask()[1] for _ in range(8)]
    assert s.generation == 1
    for child in children:
        assert digits_space.validate(child) == child
    evaluated = {a for a, _ in gen0}
    assert not evaluated & set(children)  # new archs, not the parents again
    assert len(set(children)) == 8


def test_mutation_prob_zero_gives_copies_of_parents(digits_space):
    s = _evo(digits_space, seed=1, population_size=10, parents_size=3, mutation_size=6,
             crossover_size=0, mutation_prob=0.0)
    _drive(s, _objective, 10)
    parents = {a for a, _ in s.top(3)}
    children = [s.ask()[1] for _ in range(6)]
    assert s.generation == 1
    assert all(c in parents for c in children)


def test_mutation_resamples_genes_and_follows_depth(digits_space):
    s = _evo(digits_space, seed=2, mutation_prob=0.3)
    rng = random.Random(0)
    changed = total = 0
    depth_changed = False
    for _ in range(300):
        parent = digits_space.sample(rng)
        child = s.mutate(parent)
        assert digits_space.validate(child) == child  # per-layer lists match their depth
        a, b = _genes(digits_space, parent), _genes(digits_space, child)
        for stage in ("s1", "s2", "s3"):
            depth_changed |= child[f"{stage}_depth"] != parent[f"{stage}_depth"]
            n = min(parent[f"{stage}_depth"], child[f"{stage}_depth"])
            # kept layers are the parent's, each resampled with probability 0.3
            for i in range(n):
                total += 1
                changed += a[f"{stage}_kernel[{i}]"] != b[f"{stage}_kernel[{i}]"]
    assert depth_changed
    # P(change) = 0.3 * (1 - 1/2) for a two-valued gene
    assert 0.10 < changed / total < 0.20
    with pytest.raises(AssertionError):  # mutation_prob=1 changes something almost always
        s1 = _evo(digits_space, seed=2, mutation_prob=1.0)
        parent = digits_space.largest()
        assert all(s1.mutate(parent) == parent for _ in range(20))


def test_crossover_takes_every_gene_from_its_two_parents(digits_space):
    s = _evo(digits_space, seed=3)
    rng = random.Random(1)
    from_a = from_b = 0
    for _ in range(300):
        a, b = digits_space.sample(rng), digits_space.sample(rng)
        child = s.crossover(a, b)
        assert digits_space.validate(child) == child
        ga, gb, gc = (_genes(digits_space, x) for x in (a, b, child))
        for gene, value in gc.items():
            assert value in {ga.get(gene), gb.get(gene)} - {None}, gene
            from_a += value == ga.get(gene) and value != gb.get(gene)
            from_b += value == gb.get(gene) and value != ga.get(gene)
    assert 0.4 < from_a / (from_a + from_b) < 0.6  # 50/50


def test_crossover_children_come_from_two_parents(digits_space):
    """Through ask(): with crossovers only, each child's genes all come from a pair of
    the current parents."""
    s = _evo(digits_space, seed=4, population_size=12, parents_size=4, mutation_size=0,
             crossover_size=8)
    _drive(s, _objective, 12)
    parents = [_genes(digits_space, a) for a, _ in s.top(4)]
    children = [s.ask()[1] for _ in range(8)]
    assert s.generation == 1
    for child in children:
        gc = _genes(digits_space, child)
        assert any(all(v in (p.get(g), q.get(g)) for g, v in gc.items())
                   for p in parents for q in parents if p is not q)


# ---- evolution: ranking ------------------------------------------------------------------
def test_rank_one_objective_feasible_first():
    losses = np.array([[3.0], [1.0], [2.0], [0.0], [-5.0]])
    violations = np.array([0.0, 0.0, 0.0, 0.5, 0.1])
    assert rank(losses, violations) == [1, 2, 0, 4, 3]
    assert rank(losses, violations, k=2) == [1, 2]


def test_rank_several_objectives_fronts_then_crowding():
    losses = np.array([[0.0, 3.0], [2.2, 2.2], [1.0, 2.0], [2.0, 1.0], [3.0, 0.0], [1.5, 1.5],
                       [-1.0, -1.0]])
    violations = np.array([0, 0, 0, 0, 0, 0, 1.0])
    order = rank(losses, violations)
    assert set(order[:5]) == {0, 2, 3, 4, 5} and order[5:] == [1, 6]
    assert set(order[:2]) == {0, 4}  # a front's ends have infinite crowding distance
    # (1.5, 1.5) sits closer to its neighbours than (1, 2) and (2, 1) do
    assert rank(losses, violations, k=4)[2:] in ([2, 3], [3, 2])
    assert list(crowding_distance(losses[[0, 2, 5, 3, 4]])) == pytest.approx(
        [np.inf, 2 / 3 + 1 / 3, 1 / 3 + 1 / 3, 2 / 3 + 1 / 3, np.inf])


def test_top_uses_directions_and_constraints(tiny_space):
    s = _evo(tiny_space, seed=0, objectives=ACCURACY, constraints=(Constraint("latency_ms", 0.8),))
    evaluated = _drive(s, _objective, 40)
    best_arch, best = s.top(1)[0]
    feasible = [v for _, v in evaluated if v["latency_ms"] <= 0.8]
    assert best["latency_ms"] <= 0.8
    assert best["accuracy"] == max(v["accuracy"] for v in feasible)
    ranked = s.top()
    flags = [v["latency_ms"] > 0.8 for _, v in ranked]
    assert flags == sorted(flags)  # every feasible point before any infeasible one


# ---- evolution: asynchronous use, failures, state ----------------------------------------------
def test_ask_never_blocks_and_avoids_repeats(digits_space):
    s = _evo(digits_space, seed=5, population_size=8, parents_size=4)
    asked = [s.ask() for _ in range(40)]  # nothing told: random archs past generation 0
    assert len({a for _, a in asked}) == 40
    for token, arch in reversed(asked[8:28]):  # not generation 0 (the first 8)
        s.tell(token, _objective(arch))
    more = [s.ask() for _ in range(30)]  # generation 0 is still out: extra children
    assert s.generation == 0
    seen = {a for _, a in asked}
    assert len({a for _, a in more} - seen) == 30
    for token, arch in asked[:8] + asked[28:] + more:
        s.tell(token, _objective(arch))
    s.ask()
    assert s.generation == 1


def test_failures_are_dropped(tiny_space):
    s = _evo(tiny_space, seed=0, population_size=8, parents_size=4)
    _drive(s, _objective, 8, fail=lambda i: True)
    assert s.top() == []
    token, arch = s.ask()  # too few results: keeps sampling
    assert tiny_space.contains(arch) and s.generation == 0
    s.tell(token, None)
    _drive(s, _objective, 40, fail=lambda i: i % 3 == 0)
    assert s.generation >= 1 and len(s.top()) > 10


@pytest.mark.parametrize("name", ["hat_evolution", "nevergrad"])
def test_same_seed_same_sequence(name, tiny_space):
    def run(seed):
        s = create_searcher(name, objectives=ACC_LAT,
                            space=tiny_space, seed=seed, population_size=8)
        return [a for a, _ in _drive(s, _objective, 24, batch=8)]

    a, b, c = run(3), run(3), run(4)
    assert a == b and a != c


@pytest.mark.parametrize("name", ["hat_evolution", "nevergrad"])
def test_cloudpickle_round_trip_mid_search(name, tiny_space):
    s = create_searcher(name, objectives=ACC_LAT, space=tiny_space, seed=7, population_size=8,
                        constraints=(Constraint("latency_ms", 0.8),))
    _drive(s, _objective, 20, batch=8)
    out = [s.ask() for _ in range(5)]  # in flight while the driver checkpoints
    copy = cloudpickle.loads(cloudpickle.dumps(s))

    def finish(searcher):
        for token, arch in out:
            searcher.tell(token, _objective(arch))
        return [a for a, _ in _drive(searcher, _objective, 16, batch=8)]

    assert finish(copy) == finish(s)


# ---- evolution: search quality -----------------------------------------------------------------
def test_evolution_beats_random_under_a_latency_limit(digits_space):
    """One objective plus a hard latency limit (HAT's setting), 200 evaluations in batches."""
    limit = 6.0

    def best(name, seed):
        s = create_searcher(name, space=digits_space, objectives=ACCURACY, seed=seed,
                            constraints=(Constraint("latency_ms", limit),), population_size=32)
        return max(v["accuracy"] for _, v in _drive(s, _objective, 200)
                   if v["latency_ms"] <= limit)

    evo = statistics.median(best("hat_evolution", seed) for seed in range(3))
    rnd = statistics.median(best("random", seed) for seed in range(3))
    assert evo > rnd + 0.005, (evo, rnd)


# ---- nevergrad ---------------------------------------------------------------------------------
def test_nevergrad_parametrization(tiny_space):
    import nevergrad as ng

    space = SearchSpace.from_dict({"name": "hp", "family": "cnn", "dims": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "drop": {"type": "float", "low": 0.0, "high": 0.5},
        "d": {"type": "int", "low": 1, "high": 3},
        "k": {"type": "per_layer", "depth": "d", "values": [3, 5]},
        "act": {"type": "choice", "values": ["relu", "gelu"]},
        "fixed": {"type": "choice", "values": [7]},
    }})
    s = create_searcher("nevergrad", objectives=ACC_LAT, space=space, seed=0)
    params = s.optimizer.parametrization
    assert sorted(params.keys()) == ["act", "d", "drop", "k[0]", "k[1]", "k[2]", "lr"]
    assert isinstance(params["act"], ng.p.Choice) and isinstance(params["k[2]"], ng.p.Choice)
    assert isinstance(params["d"], ng.p.TransitionChoice)
    assert isinstance(params["lr"], ng.p.Log) and not isinstance(params["drop"], ng.p.Log)
    for _ in range(30):
        token, arch = s.ask()
        assert space.validate(arch) == arch and arch["fixed"] == 7
        assert len(arch["k"]) == arch["d"]
        s.tell(token, {"accuracy": arch["lr"], "latency_ms": arch["d"]})


def test_nevergrad_tells_losses_and_skips_failures(tiny_space):
    s = create_searcher("nevergrad", objectives=ACC_LAT, space=tiny_space, seed=0)
    assert s.reference is None  # no natural bound on latency: nevergrad's own
    told = _drive(s, _objective, 30, batch=5, fail=lambda i: i % 4 == 0)
    assert s.optimizer.num_tell == len(told) < 30  # failures are not told
    assert s.optimizer.num_objectives == 2
    front = s.pareto_front()
    assert front
    records = {a: v for a, v in told}
    for arch, values in front:  # nevergrad's archive, back in metric units
        assert values == pytest.approx(
            {k: records[arch][k] for k in ("accuracy", "latency_ms")})
        assert not any(v["accuracy"] >= values["accuracy"]
                       and v["latency_ms"] < values["latency_ms"] for v in records.values())


def test_nevergrad_constraint_sets_reference_and_start(digits_space):
    limit = 3.0
    s = create_searcher("nevergrad", objectives=ACC_LAT, space=digits_space, seed=0,
                        constraints=(Constraint("latency_ms", limit),))
    assert s.reference == [0.0, limit]
    token, arch = s.ask()
    assert arch == digits_space.smallest()  # nevergrad only mutates feasible points
    s.tell(token, _objective(arch))
    told = _drive(s, _objective, 40, batch=8)
    assert any(v["latency_ms"] > limit for _, v in told)
    front = s.pareto_front()
    assert front and all(v["latency_ms"] <= limit for _, v in front)


def test_nevergrad_single_objective_and_no_warnings(tiny_space):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing nevergrad says should reach the user
        s = create_searcher("nevergrad", space=tiny_space, seed=0, objectives=ACCURACY,
                            constraints=(Constraint("latency_ms", 0.8),))
        told = _drive(s, _objective, 30, batch=8)
        (arch, values), = s.pareto_front()
        feasible = [v["accuracy"] for _, v in told if v["latency_ms"] <= 0.8]
        assert values["accuracy"] == max(feasible)  # exact repeats do not win (see tell)
        m = create_searcher("nevergrad", objectives=ACC_LAT, space=tiny_space, seed=0)
        _drive(m, _objective, 40, batch=8)


def test_nevergrad_asks_past_a_one_shot_budget(tiny_space):
    s = create_searcher("nevergrad", objectives=ACC_LAT,
                        space=tiny_space, seed=0, optimizer="HammersleySearch",
                        budget=4)
    told = _drive(s, _objective, 12, batch=3)
    assert len(told) == 12


def test_nevergrad_multiobjective_beats_random():
    """150 evaluations in batches of 8. The margin needs the objectives' directions right:
    minimising accuracy by mistake gives ~1.07x random (measured), the right way ~1.25x."""
    space, objective = pattern_problem()

    def hv(name, seed):
        s = create_searcher(name, objectives=ACC_LAT, space=space, seed=seed, population_size=8)
        records = [v for _, v in _drive(s, objective, 150, batch=8)]
        return hypervolume(records, ACC_LAT, [0.0, 4.0])

    ng_hv = statistics.median(hv("nevergrad", seed) for seed in range(3))
    rnd_hv = statistics.median(hv("random", seed) for seed in range(3))
    assert ng_hv > 1.15 * rnd_hv, (ng_hv, rnd_hv)
