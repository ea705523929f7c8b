"""Ask/tell searchers over a ``SearchSpace``: Optuna NSGA-II, Optuna TPE, random.

``ask()`` is called whenever a subnet slot frees up and returns a token plus an Arch;
``tell(token, values)`` is called once per asked token with the objective values (or None
when the evaluation failed). Batching, Ray Tune and the evaluator live elsewhere
(``search/tune_driver.py``), so the same searcher serves the live search and replays.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raynas.search.registry import register_searcher
from raynas.space import Arch, Choice, FloatRange, IntRange, PerLayer, SearchSpace


@dataclass(frozen=True)
class Objective:
    """A metric to optimise: ``direction`` is ``"max"`` or ``"min"``."""

    name: str
    direction: str

    def __post_init__(self):
        if self.direction not in ("max", "min"):
            raise ValueError(f"objective {self.name}: direction must be 'max' or 'min'")


DEFAULT_OBJECTIVES = (Objective("accuracy", "max"), Objective("latency_ms", "min"))


@dataclass(frozen=True)
class Constraint:
    """``metric <= limit``; points violating it are infeasible."""

    metric: str
    limit: float

    def violation(self, values: Mapping[str, float]) -> float:
        return float(values[self.metric]) - self.limit


class AskTellSearcher(ABC):
    """Base class: propose Archs one at a time, learn from their results."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective] = DEFAULT_OBJECTIVES,
                 constraints: Sequence[Constraint] = (), seed: int = 0):
        self.space, self.objectives, self.constraints, self.seed = (
            space, tuple(objectives), tuple(constraints), seed
        )

    @abstractmethod
    def ask(self) -> tuple[Any, Arch]:
        """Return ``(token, arch)``; the token comes back in ``tell``."""

    @abstractmethod
    def tell(self, token: Any, values: Mapping[str, float] | None) -> None:
        """Report the metrics of an asked arch (None: its evaluation failed)."""


class RandomSearcher(AskTellSearcher):
    """Uniform random sampling (per dimension): the baseline every searcher must beat."""

    def __init__(self, space, objectives=DEFAULT_OBJECTIVES, constraints=(), seed=0, **_):
        super().__init__(space, objectives, constraints, seed)
        self._rng = random.Random(seed)

    def ask(self):
        arch = self.space.sample(self._rng)
        return arch.key, arch

    def tell(self, token, values):
        pass


class OptunaSearcher(AskTellSearcher):
    """Any Optuna sampler through ``study.ask()`` / ``study.tell()``.

    Per-layer dimensions are suggested for every possible layer (``name[i]``) so the
    sampler sees a fixed-dimensional space; the Arch keeps the first ``depth`` of them.
    Constraints are set on each trial (``Trial.set_constraint``; feasible iff all values
    <= 0), which Optuna's samplers use for constrained domination.
    """

    def __init__(self, space, sampler, objectives=DEFAULT_OBJECTIVES, constraints=(), seed=0):
        import optuna

        super().__init__(space, objectives, constraints, seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        directions = ["maximize" if o.direction == "max" else "minimize" for o in objectives]
        self.study = optuna.create_study(directions=directions, sampler=sampler)
        self._trials: dict[int, Any] = {}

    def ask(self):
        trial = self.study.ask()
        values: dict[str, Any] = {}
        for d in self.space.dims:
            if isinstance(d, Choice):
                values[d.name] = trial.suggest_categorical(d.name, list(d.values))
            elif isinstance(d, IntRange):
                values[d.name] = trial.suggest_int(d.name, d.low, d.high)  # inclusive
            elif isinstance(d, FloatRange):
                values[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
        for d in self.space.dims:
            if isinstance(d, PerLayer):
                slots = [trial.suggest_categorical(f"{d.name}[{i}]", list(d.values))
                         for i in range(d.max_len)]
                values[d.name] = slots[: int(values[d.depth])]
        self._trials[trial.number] = trial
        return trial.number, Arch(values)

    def tell(self, token, values):
        import optuna

        trial = self._trials.pop(token)
        if values is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        for c in self.constraints:  # feasible iff every value <= 0; samplers read them
            trial.set_constraint(c.metric, c.violation(values))
        self.study.tell(trial, [float(values[o.name]) for o in self.objectives])


@register_searcher("optuna_nsga2")
def _nsga2(space, objectives=DEFAULT_OBJECTIVES, constraints=(), seed=0,
           population_size: int = 32, **_):
    import optuna

    sampler = optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    return OptunaSearcher(space, sampler, objectives, constraints, seed)


@register_searcher("optuna_tpe")
def _tpe(space, objectives=DEFAULT_OBJECTIVES, constraints=(), seed=0, **_):
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=16)
    return OptunaSearcher(space, sampler, objectives, constraints, seed)


@register_searcher("random")
def _random(space, objectives=DEFAULT_OBJECTIVES, constraints=(), seed=0, **_):
    return RandomSearcher(space, objectives, constraints, seed)
