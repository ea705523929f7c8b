"""Ask/tell searchers over a ``SearchSpace``: Optuna NSGA-II, Optuna TPE, random.

``ask()`` is called whenever a subnet slot frees up and returns a token plus an Arch;
``tell(token, values)`` is called once per asked token with the objective values (or None
when the evaluation failed). Batching, Ray Tune and the evaluator live elsewhere
(``search/tune_driver.py``), so the same searcher serves the live search and replays.
"""

from __future__ import annotations

import copy
import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raynas.errors import ConfigError, describe_value
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


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


@dataclass(frozen=True)
class Constraint:
    """``metric <= limit``; points violating it are infeasible."""

    metric: str
    limit: float

    def violation(self, values: Mapping[str, float]) -> float:
        return float(values[self.metric]) - self.limit

    def __str__(self) -> str:  # the limit exactly, as a budget is written: params<=2000000
        limit = float(self.limit)
        return f"{self.metric}<={int(limit) if limit.is_integer() else limit!r}"


def check_options(searcher: str, unknown: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise ``ConfigError`` for the first option a searcher's factory does not take.

    Factories name their options as keyword parameters and gather the rest in ``**unknown``,
    which they pass here with the names they do take.
    """
    if unknown:
        key, value = next(iter(unknown.items()))
        names = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"search.options.{key} = {describe_value(value)}: unknown option for "
                          f"searcher {searcher!r}; allowed: {names}")


class AskTellSearcher(ABC):
    """Base class: propose Archs one at a time, learn from their results."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective],
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

    def __init__(self, space, objectives, constraints=(), seed=0, **_):
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

    A sampler that has converged on a small discrete space keeps proposing archs it already
    proposed (TPE does after ~100 subnets of a 2,592-subnet space). After ``patience`` such
    repeats in a row, the next trial is a random arch not proposed before, enqueued with
    ``study.enqueue_trial``, the way the sampler's own start-up trials are random.
    """

    def __init__(self, space, sampler, objectives, constraints=(), seed=0,
                 patience: int = 4):
        import optuna

        super().__init__(space, objectives, constraints, seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        directions = ["maximize" if o.direction == "max" else "minimize" for o in objectives]
        self.study = optuna.create_study(directions=directions, sampler=sampler)
        self._trials: dict[int, Any] = {}
        self.patience = patience
        self._asked: set[str] = set()
        self._repeats = 0
        self.restarts = 0
        self._rng = random.Random(seed)

    # Ray Tune pickles the searcher with its experiment state (and to resume it). Some Optuna
    # samplers hold a lock (the GA samplers do from Optuna 5.1), which pickle refuses: the
    # pickled copy leaves the sampler's locks out and the unpickled one makes new ones.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        sampler = self.study.sampler
        locks = sorted(k for k, v in vars(sampler).items() if isinstance(v, _LOCK_TYPES))
        if locks:
            sampler = copy.copy(sampler)
            for k in locks:
                delattr(sampler, k)
            study = state["study"] = copy.copy(self.study)
            study.sampler = sampler
            state["_trials"] = {}  # the asked trials, on that copy (pickle keeps one study)
            for token, trial in self._trials.items():
                state["_trials"][token] = copy.copy(trial)
                state["_trials"][token].study = study
        state["_sampler_locks"] = locks
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        locks = state.pop("_sampler_locks", ())
        self.__dict__.update(state)
        for k in locks:
            setattr(self.study.sampler, k, threading.Lock())

    def _params(self, arch: Arch) -> dict[str, Any]:
        """``arch`` in this searcher's Optuna parameter names (unused layer slots random)."""
        params = {d.name: arch[d.name] for d in self.space.dims if not isinstance(d, PerLayer)}
        for d in self.space.dims:
            if isinstance(d, PerLayer):
                layers = list(arch[d.name])
                for i in range(d.max_len):
                    params[f"{d.name}[{i}]"] = (layers[i] if i < len(layers)
                                                else self._rng.choice(list(d.values)))
        return params

    def ask(self):
        if self._repeats >= self.patience:
            for _ in range(100):
                fresh = self.space.sample(self._rng)
                if fresh.key not in self._asked:
                    break
            self.study.enqueue_trial(self._params(fresh))
            self._repeats = 0
            self.restarts += 1
        token, arch = self._ask()
        if arch.key in self._asked:
            self._repeats += 1
        else:
            self._asked.add(arch.key)
            self._repeats = 0
        return token, arch

    def _ask(self):
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
def _nsga2(space, objectives, constraints=(), seed=0,
           population_size: int = 32, **unknown):
    from raynas.search.nsga2 import NSGAIISampler

    check_options("optuna_nsga2", unknown, ["population_size"])
    sampler = NSGAIISampler(population_size=population_size, seed=seed)
    return OptunaSearcher(space, sampler, objectives, constraints, seed)


@register_searcher("optuna_tpe")
def _tpe(space, objectives, constraints=(), seed=0,
         population_size: int | None = None, **unknown):
    import optuna

    # population_size is accepted (the driver passes it to every searcher) and ignored.
    check_options("optuna_tpe", unknown, ["population_size"])
    # constant_liar: archs asked but not yet told (a Tune batch) count as bad, so one batch
    # does not hold the same arch sixteen times.
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=16,
                                         constant_liar=True)
    return OptunaSearcher(space, sampler, objectives, constraints, seed)


@register_searcher("random")
def _random(space, objectives, constraints=(), seed=0,
            population_size: int | None = None, **unknown):
    # population_size is accepted (the driver passes it to every searcher) and ignored.
    check_options("random", unknown, ["population_size"])
    return RandomSearcher(space, objectives, constraints, seed)
