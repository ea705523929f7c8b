"""raynas.search.searchers: ask/tell over a space for every registered searcher."""

from __future__ import annotations

import sys

import pytest

from raynas.errors import ConfigError
from raynas.search.registry import create_searcher, register_searcher, searcher_names
from raynas.search.searchers import (
    Constraint,
    Objective,
    OptunaSearcher,
    RandomSearcher,
)
from raynas.space import Arch, SearchSpace

ACC_LAT = (Objective("accuracy", "max"), Objective("latency_ms", "min"))

SEARCHERS = ["optuna_nsga2", "optuna_tpe", "random", "nevergrad", "hat_evolution", "surrogate"]


def _objective(arch: Arch) -> dict[str, float]:
    """Synthetic, deterministic: bigger nets are more accurate and slower."""
    depth = sum(v for k, v in arch.items() if k.endswith("_depth"))
    width = sum(v for k, v in arch.items() if k.endswith("_width"))
    kernels = sum(sum(v) for k, v in arch.items() if k.endswith("_kernel"))
    return {"accuracy": 1 - 1 / (1 + 0.01 * width + 0.05 * depth + 0.01 * kernels),
            "latency_ms": 0.01 * width * depth + 0.02 * kernels}


def _make(name, space, **kw):
    kw.setdefault("objectives", ACC_LAT)
    return create_searcher(name, space=space, population_size=8, **kw)


def test_registry():
    assert set(SEARCHERS) <= set(searcher_names())
    with pytest.raises(ConfigError) as e:
        create_searcher("nope", space=None)
    assert "'nope'" in str(e.value) and "optuna_tpe" in str(e.value)
    with pytest.raises(ValueError, match="already registered"):
        register_searcher("random")(lambda **_: None)


@pytest.mark.parametrize("name", SEARCHERS)
def test_ask_tell_cycle(name, digits_space):
    searcher = _make(name, digits_space, seed=0)
    asked = []
    for i in range(60):
        token, arch = searcher.ask()
        assert isinstance(arch, Arch)
        assert digits_space.validate(arch) == arch  # valid and already normalised
        asked.append(arch)
        searcher.tell(token, None if i % 9 == 4 else _objective(arch))
    assert len(set(asked)) > 30  # it explores
    if isinstance(searcher, OptunaSearcher):
        states = [t.state.name for t in searcher.study.trials]
        assert len(states) == 60
        assert states.count("FAIL") == len([i for i in range(60) if i % 9 == 4])
        assert states.count("COMPLETE") == 60 - states.count("FAIL")
        done = [t for t in searcher.study.trials if t.state.name == "COMPLETE"]
        assert all(len(t.values) == 2 for t in done)
        assert searcher._trials == {}  # every asked token was told


@pytest.mark.parametrize("name", SEARCHERS)
def test_concurrent_asks(name, tiny_space):
    """Several archs in flight at once, told out of order (as the Tune driver does)."""
    searcher = _make(name, tiny_space, seed=1)
    pending = [searcher.ask() for _ in range(5)]
    for token, arch in reversed(pending):
        searcher.tell(token, _objective(arch))
    token, arch = searcher.ask()
    assert tiny_space.contains(arch)


@pytest.mark.parametrize("name", SEARCHERS)
def test_a_searcher_pickled_mid_search_goes_on_as_the_original(name, tiny_space):
    """Ray Tune pickles the searcher with its experiment state and to resume it."""
    from ray import cloudpickle

    searcher = _make(name, tiny_space, seed=2)
    for _ in range(12):  # past NSGA-II's first generation of 8
        token, arch = searcher.ask()
        searcher.tell(token, _objective(arch))
    in_flight = [searcher.ask() for _ in range(3)]  # Tune saves with trials running
    copy = cloudpickle.loads(cloudpickle.dumps(searcher))
    for token, arch in in_flight:
        searcher.tell(token, _objective(arch))
        copy.tell(token, _objective(arch))
    for _ in range(10):
        (t1, a1), (t2, a2) = searcher.ask(), copy.ask()
        assert a1 == a2
        searcher.tell(t1, _objective(a1))
        copy.tell(t2, _objective(a2))


@pytest.mark.parametrize("name", ["optuna_nsga2", "optuna_tpe"])
def test_constraint_recorded(name, tiny_space):
    constraint = Constraint("latency_ms", 0.8)
    searcher = _make(name, tiny_space, seed=0, constraints=(constraint,))
    told = {}
    for _ in range(20):
        token, arch = searcher.ask()
        values = _objective(arch)
        searcher.tell(token, values)
        told[token] = values["latency_ms"] - 0.8
    for trial in searcher.study.trials:
        # stored where Optuna's samplers read feasibility from (Trial.set_constraint)
        assert trial.system_attrs["constraints:latency_ms"] == pytest.approx(told[trial.number])
    assert any(v > 0 for v in told.values()) and any(v <= 0 for v in told.values())


def test_no_constraint_no_attr(tiny_space):
    searcher = _make("optuna_nsga2", tiny_space, seed=0)
    token, arch = searcher.ask()
    searcher.tell(token, _objective(arch))
    assert not any(k.startswith("constraints") for k in searcher.study.trials[0].system_attrs)


def test_constraint_violation():
    c = Constraint("latency_ms", 2.0)
    assert c.violation({"latency_ms": 3.5}) == 1.5
    assert c.violation({"latency_ms": 1.0}) == -1.0


def test_objective_direction_checked():
    with pytest.raises(ValueError, match="direction"):
        Objective("accuracy", "up")


def test_study_directions(tiny_space):
    s = _make("optuna_tpe", tiny_space, seed=0)
    assert [d.name for d in s.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    s = _make("optuna_tpe", tiny_space, seed=0,
              objectives=(Objective("latency_ms", "min"),))
    assert [d.name for d in s.study.directions] == ["MINIMIZE"]


@pytest.mark.parametrize("name", ["random", "optuna_nsga2"])
def test_same_seed_same_asks(name, digits_space):
    def first_asks(seed, n=12):
        searcher = _make(name, digits_space, seed=seed)
        out = []
        for _ in range(n):
            token, arch = searcher.ask()
            out.append(arch)
            searcher.tell(token, _objective(arch))
        return out

    a, b, c = first_asks(3), first_asks(3), first_asks(4)
    assert a == b
    assert a != c


def test_float_dims_suggested(rng):
    space = SearchSpace.from_dict({"name": "hp", "family": "cnn", "dims": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "d": {"type": "int", "low": 1, "high": 3},
        "k": {"type": "per_layer", "depth": "d", "values": [3, 5]},
        "act": {"type": "choice", "values": ["relu", "gelu"]},
    }})
    for name in SEARCHERS:
        searcher = _make(name, space, seed=0)
        for _ in range(10):
            token, arch = searcher.ask()
            assert space.validate(arch) == arch
            searcher.tell(token, {"accuracy": rng.random(), "latency_ms": rng.random()})


@pytest.mark.parametrize("name", SEARCHERS)
def test_a_searcher_assumes_no_objectives(name, tiny_space):
    # What to optimise comes from the job and its task, never from a searcher's default.
    with pytest.raises(TypeError, match="objectives"):
        create_searcher(name, space=tiny_space, seed=0)


def test_a_searcher_registers_through_an_entry_point(tmp_path, monkeypatch, tiny_space):
    from raynas.search.registry import SEARCHERS

    (tmp_path / "my_searcher.py").write_text(
        "from raynas.search.registry import register_searcher\n"
        "from raynas.search.searchers import RandomSearcher\n"
        "@register_searcher('my_random')\n"
        "def make(space, objectives, constraints=(), seed=0, **_):\n"
        "    return RandomSearcher(space, objectives, constraints, seed)\n")
    dist = tmp_path / "my_searcher-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-searcher\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[raynas.searchers]\nmy_random = my_searcher\n")
    searcher_names()  # built-ins registered before the registry is copied
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(SEARCHERS, "_loaded", False)
    monkeypatch.setattr(SEARCHERS, "_items", dict(SEARCHERS._items))
    monkeypatch.delitem(sys.modules, "my_searcher", raising=False)
    assert "my_random" in searcher_names()
    s = create_searcher("my_random", space=tiny_space, objectives=ACC_LAT, seed=1)
    assert isinstance(s, RandomSearcher) and tiny_space.contains(s.ask()[1])


def test_nsga2_remembers_parents_and_asks_as_optuna_does(digits_space):
    """raynas's NSGA-II sampler keeps each generation's parents instead of rescanning the
    study per ask: the same asks as Optuna's own sampler, over many generations, and no more
    than two generations kept."""
    import optuna

    from raynas.search.nsga2 import NSGAIISampler
    from raynas.search.searchers import OptunaSearcher

    def asks(sampler, n=160):
        searcher = OptunaSearcher(digits_space, sampler, ACC_LAT, seed=5)
        out = []
        for _ in range(n):
            token, arch = searcher.ask()
            out.append(arch)
            searcher.tell(token, _objective(arch))
        return out, sampler

    ours, sampler = asks(NSGAIISampler(population_size=8, seed=5))
    theirs, _ = asks(optuna.samplers.NSGAIISampler(population_size=8, seed=5))
    assert ours == theirs  # 20 generations of 8
    assert 1 <= len(sampler._raynas_parents) <= 2
    assert max(g for _, g in sampler._raynas_parents) >= 18
