"""Nevergrad optimisers behind the ask/tell interface (``search.searcher: nevergrad``).

Options (``search.options``):

``optimizer``
    Any name in ``nevergrad.optimizers.registry`` (default ``NGOpt``, nevergrad's own choice
    of algorithm for the problem; ``DiscreteOnePlusOne`` is the (1+1) evolution strategy for
    discrete spaces, ``DE`` differential evolution). On the exhaustively evaluated
    ``digits_cnn_small`` (``benchmarks/search_efficiency.py``), ``NGOpt`` beat
    ``DiscreteOnePlusOne`` at every budget from 50 to 300 subnets.
``budget``
    Passed to the optimiser's constructor (default 10,000). It does not stop the search (the
    driver's ``search.budget`` does, and ``ask`` keeps working past it): it only shapes how
    ``NGOpt``-style meta-optimisers choose an algorithm, when one-shot designs
    (``HammersleySearch``, ...) run out (random points follow), and nevergrad's constraint
    penalty, which gets a constant term once more than ``budget / 2`` results are told.
``num_workers``
    Evaluations the optimiser expects in flight at once (default 16, a Tune trial's batch).
    Some optimisers adapt to it; those that cannot run in parallel reject values above 1.
``reference``
    Multi-objective only: the reference point (nevergrad's "upper bounds"), one value per
    objective in metric units, as for ``raynas.search.pareto.hypervolume``; points beyond it
    in any objective count as pointless. By default, when every objective has a natural bound
    (0 for a maximised metric, as for accuracy in [0, 1]; a constraint's limit for a
    minimised metric that is constrained, such as ``latency_ms`` under a latency budget) that
    point is used; otherwise nevergrad bounds the problem itself from the first 15 results
    it is told (its ``AUTO_BOUND``).
``population_size``
    Accepted so every searcher takes the driver's ``search.population_size``; ignored (the
    registered nevergrad optimisers come with their own population settings).

The parametrization: ``ng.p.Choice`` (deterministic: the most likely value rather than a
draw from the softmax of its weights, which would add noise and turn the (1+1) family's
one-gene mutations into fresh random archs) for choices and for each possible layer of a
per-layer dimension (``name[i]``; the Arch keeps the first ``depth``), ``ng.p.TransitionChoice``
(ordered) for integer ranges, ``ng.p.Scalar`` / ``ng.p.Log`` for floats. The random state is
seeded from ``seed``.

How results reach nevergrad:

* one objective: its value as the loss (negated when maximised); several: the list of
  losses, which switches nevergrad to its own multi-objective mode (single-objective
  optimisers minimise the negative hypervolume of nevergrad's Pareto archive, read back
  with ``pareto_front()``).
* constraints: ``tell(..., constraint_violation=[metric - limit, ...])`` for an infeasible
  point. Nevergrad then never records it as a best, so the (1+1) family never mutates from
  it; since it would otherwise mutate its starting point (the middle of the space) until it
  stumbles on a feasible arch, a constrained search starts from the smallest arch
  (``optimizer.suggest``). Nevergrad's penalty scales with the positive part of the loss, so
  an infeasible point whose loss is <= 0 (a negated accuracy) is only kept out of the bests,
  not penalised, until ``budget / 2`` results. With several objectives the default reference
  handles the usual case: with the latency limit as the latency bound, an over-budget point
  lies beyond the reference, gets a positive loss (its distance to it) plus the penalty, and
  stays out of nevergrad's Pareto archive once a point within the bounds is known.
* failed evaluations (``None``) are not told. Nevergrad has no "failed" state, and a very
  large loss would wreck its automatic bound and hypervolume; an asked candidate that is
  never told is supported (it only stays in the optimiser's set of asked ids). Exact
  repeats of a told point are not told either (see ``tell``).

Costs: nevergrad's parametrization objects make an ask plus a tell take ~10-25 ms for a
20-parameter space on a 2-core machine (Optuna ~2 ms), and the pickled searcher (the Tune
checkpoint) grows by ~25 KB per told point until nevergrad prunes its archive (~1,000).
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from raynas.errors import ConfigError, describe_value
from raynas.search.registry import register_searcher
from raynas.search.searchers import AskTellSearcher, check_options
from raynas.space import Arch, Choice, FloatRange, IntRange, PerLayer

DEFAULT_OPTIMIZER = "NGOpt"
DEFAULT_BUDGET = 10_000
DEFAULT_WORKERS = 16


def _bad(option: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"search.options.{option} = {describe_value(value)}: {allowed}")


def _positive_int(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(option, value, "must be an integer >= 1")
    return value


class NevergradSearcher(AskTellSearcher):
    """A nevergrad optimiser over the space (see the module docstring for the options).

    Per-layer dimensions get one parameter per possible layer (``name[i]``) so the optimiser
    sees a fixed-dimensional space; the Arch keeps the first ``depth`` of them. Dimensions
    with a single possible value are left out of the parametrization.
    """

    def __init__(self, space, objectives, constraints=(), seed=0,
                 optimizer: str = DEFAULT_OPTIMIZER, budget: int | None = DEFAULT_BUDGET,
                 num_workers: int = DEFAULT_WORKERS,
                 reference: Sequence[float] | None = None):
        import nevergrad as ng
        import numpy as np

        super().__init__(space, objectives, constraints, seed)
        registry = ng.optimizers.registry
        if not isinstance(optimizer, str) or optimizer not in registry:
            names = sorted(registry)
            close = difflib.get_close_matches(str(optimizer), names, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise _bad("optimizer", optimizer,
                       f"not a nevergrad optimizer; {hint}for example DiscreteOnePlusOne, "
                       f"NGOpt, PortfolioDiscreteOnePlusOne, TwoPointsDE, CMA "
                       f"({len(names)} names in nevergrad.optimizers.registry)")
        if budget is not None:
            budget = _positive_int("budget", budget)
        num_workers = _positive_int("num_workers", num_workers)
        if not self.objectives:
            raise ConfigError("the nevergrad searcher needs at least one objective")
        self._signs = [-1.0 if o.direction == "max" else 1.0 for o in self.objectives]
        upper = self._reference(reference)

        def choice(values):  # deterministic: see the module docstring
            return ng.p.Choice(values, deterministic=True)

        self._fixed: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for d in space.dims:
            if isinstance(d, Choice):
                self._add(params, d.name, d.values, choice)
            elif isinstance(d, IntRange):
                self._add(params, d.name, list(d.values()), ng.p.TransitionChoice)
            elif isinstance(d, FloatRange):
                if d.low == d.high:
                    self._fixed[d.name] = d.low
                elif d.log:
                    params[d.name] = ng.p.Log(lower=d.low, upper=d.high)
                else:
                    params[d.name] = ng.p.Scalar(lower=d.low, upper=d.high)
            elif isinstance(d, PerLayer):
                for i in range(d.max_len):
                    self._add(params, f"{d.name}[{i}]", d.values, choice)
        if not params:
            raise ConfigError(f"space {space.name!r} has a single arch: nothing to search")
        parametrization = ng.p.Dict(**params)
        parametrization.random_state = np.random.RandomState(seed % 2**32)
        try:
            self.optimizer = registry[optimizer](parametrization=parametrization,
                                                 budget=budget, num_workers=num_workers)
        except ValueError as exc:  # e.g. "does not support parallelization"
            raise _bad("optimizer", optimizer, f"nevergrad refused it: {exc} (with "
                       f"num_workers={num_workers}, budget={budget})") from None
        if upper is not None:
            self.optimizer.tell(ng.p.MultiobjectiveReference(), upper)
        if self.constraints:
            # Nevergrad never makes a point told with a violation its best, so a (1+1)
            # optimiser would keep mutating its starting point (the middle of the space) until
            # it stumbles on a feasible one. Start from the smallest arch, the one most likely
            # to meet latency or size limits.
            start = {name: value for name, value in space.smallest().items() if name in params}
            for d in space.dims:
                if isinstance(d, PerLayer):
                    for i in range(d.max_len):
                        if f"{d.name}[{i}]" in params:
                            start[f"{d.name}[{i}]"] = d.values[0]
            self.optimizer.suggest(start)
        # the reference point in metric units; None: nevergrad's automatic bound (or one
        # objective)
        self.reference = None if upper is None else [
            s * u for s, u in zip(self._signs, upper)]
        self._candidates: dict[int, Any] = {}
        self._next_token = 0

    def _add(self, params, name, values, kind) -> None:
        values = list(values)
        if len(values) == 1:
            self._fixed[name] = values[0]
        else:
            params[name] = kind(values)

    def _reference(self, reference: Sequence[float] | None) -> list[float] | None:
        """Nevergrad's upper bounds on the losses, or None (single objective, or automatic)."""
        n = len(self.objectives)
        if reference is not None:
            if (isinstance(reference, (str, bytes)) or not isinstance(reference, Sequence)
                    or len(reference) != n
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               and math.isfinite(v) for v in reference)):
                raise _bad("reference", reference, f"must be a list of {n} finite numbers, "
                           f"one per objective ({', '.join(o.name for o in self.objectives)})")
            if n == 1:
                raise _bad("reference", reference, "only applies to several objectives")
            return [s * float(v) for s, v in zip(self._signs, reference)]
        if n == 1:
            return None
        limits = {}
        for c in self.constraints:  # the tightest limit on each metric
            limits[c.metric] = min(c.limit, limits.get(c.metric, math.inf))
        upper = []
        for o in self.objectives:
            if o.direction == "max":
                upper.append(0.0)
            elif o.name in limits:
                upper.append(float(limits[o.name]))
            else:
                return None
        return upper

    # ---- ask / tell ----------------------------------------------------------------------
    def ask(self):
        opt = self.optimizer
        try:
            candidate = opt.ask()
        except AssertionError:
            # One-shot designs (HammersleySearch, LHSSearch, ...) assert once ``budget`` points
            # are drawn; keep going with random points, told as "not asked" candidates.
            if opt.budget is None or opt.num_ask < opt.budget:
                raise
            candidate = opt.parametrization.sample()
        arch = self._arch_of(candidate.value)
        token = self._next_token
        self._next_token += 1
        self._candidates[token] = candidate
        return token, arch

    def tell(self, token, values: Mapping[str, float] | None) -> None:
        from nevergrad.common import errors

        candidate = self._candidates.pop(token)
        if values is None:
            return  # not told: see the module docstring
        opt = self.optimizer
        if candidate.get_standardized_data(reference=opt.parametrization) in opt.archive:
            # An exact repeat (a (1+1) mutation that changed nothing). Nevergrad treats losses
            # as noisy: a point told twice gets a tight confidence bound and would become the
            # optimiser's parent over better points told once (prior variance 1e6). Our
            # results are deterministic, so the repeat adds nothing: skip it.
            return
        losses = [s * float(values[o.name]) for s, o in zip(self._signs, self.objectives)]
        violations = [float(c.violation(values)) for c in self.constraints]
        # Only infeasible points carry a violation: nevergrad multiplies its loss by the
        # violation's positive part, and its hypervolume loss can be inf (a point on the
        # reference's edge), so a feasible point's inf * 0 would turn into nan.
        violation = violations if any(v > 0 for v in violations) else None
        with warnings.catch_warnings():
            # Nevergrad's multi-objective mode turns some points into an inf loss itself (no
            # hypervolume gain while not dominated, or worse than the automatic bound) and
            # then warns, once per optimiser, that it stores or clips an inf: noise to users.
            warnings.simplefilter("ignore", errors.BadLossWarning)
            warnings.simplefilter("ignore", errors.LossTooLargeWarning)
            try:
                opt.tell(candidate, losses[0] if len(losses) == 1 else losses,
                         constraint_violation=violation)
            except errors.TellNotAskedNotSupportedError:
                pass  # a random point past a one-shot design's budget (see ``ask``)

    # ---- results -------------------------------------------------------------------------
    def pareto_front(self) -> list[tuple[Arch, dict[str, float]]]:
        """Nevergrad's own Pareto archive (``optimizer.pareto_front()``; with one objective,
        its best feasible point) as ``(arch, objective values)`` pairs.

        Infeasible points stay out of it when the reference point bounds the constrained
        metric (the default for a constrained objective); with a constraint on a metric that
        is not an objective they may not, so the final answer should come from the
        evaluation records (``raynas.search.pareto.pareto_front``).
        """
        if self.optimizer.num_tell == 0:
            return []
        if len(self.objectives) == 1:
            params = [self.optimizer.current_bests["pessimistic"].parameter]
        else:
            try:
                params = self.optimizer.pareto_front()
            except RuntimeError:  # empty archive: nevergrad falls back to recommend(), which
                return []  # has no meaning with several objectives
        out = []
        for param in params:
            if param.loss is None or param.loss == float("inf"):
                continue  # nevergrad's initial placeholder: nothing feasible told yet
            metrics = {o.name: s * float(v)
                       for o, s, v in zip(self.objectives, self._signs, param.losses)}
            out.append((self._arch_of(param.value), metrics))
        return out

    def _arch_of(self, values: Mapping[str, Any]) -> Arch:
        def pick(name: str) -> Any:
            return self._fixed[name] if name in self._fixed else values[name]

        arch: dict[str, Any] = {}
        for d in self.space.dims:
            if isinstance(d, FloatRange):  # clip: exp(log(x)) may round past a bound
                arch[d.name] = min(max(float(pick(d.name)), d.low), d.high)
            elif not isinstance(d, PerLayer):
                arch[d.name] = pick(d.name)
        for d in self.space.dims:
            if isinstance(d, PerLayer):
                arch[d.name] = tuple(pick(f"{d.name}[{i}]") for i in range(int(arch[d.depth])))
        return Arch(arch)


_OPTIONS = ("optimizer", "budget", "num_workers", "reference", "population_size")


@register_searcher("nevergrad")
def _nevergrad(space, objectives, constraints=(), seed=0,
               optimizer: str = DEFAULT_OPTIMIZER, budget: int | None = DEFAULT_BUDGET,
               num_workers: int = DEFAULT_WORKERS, reference: Sequence[float] | None = None,
               population_size: int | None = None, **unknown):
    check_options("nevergrad", unknown, _OPTIONS)
    del population_size  # accepted for the driver, not used (see the module docstring)
    return NevergradSearcher(space, objectives, constraints, seed, optimizer=optimizer,
                             budget=budget, num_workers=num_workers, reference=reference)
