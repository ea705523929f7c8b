"""Ray Tune's Optuna and Nevergrad searchers, told each trial's budget violations.

A study whose space holds the subnet (``raynas finetune --search-arch``) has budgets: a
trial whose subnet breaks one reports ``violation.<metric>`` > 0 (relative to the limit)
and is not trained. Optuna gets the values as the trial's constraints
(``Trial.set_constraint``: its samplers rank a feasible trial above every infeasible one,
and infeasible ones by their total violation); Nevergrad as a loss worse than every
feasible one it was told (below). A result without violations is told as Tune's own
searchers tell it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ray.tune.search.nevergrad import NevergradSearch
from ray.tune.search.optuna import OptunaSearch

from raynas.hpo.space import VIOLATION


def violations(result: Mapping | None) -> dict[str, float]:
    """``metric -> relative excess`` of the ``violation.*`` values ``result`` holds."""
    return {k.removeprefix(VIOLATION): float(v) for k, v in (result or {}).items()
            if k.startswith(VIOLATION)}


class ConstrainedOptunaSearch(OptunaSearch):
    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        trial = self._ot_trials.get(trial_id)
        if trial is not None and trial_id not in self._completed_trials:
            for name, excess in violations(result).items():
                trial.set_constraint(name, excess)
        super().on_trial_complete(trial_id, result, error)


class ConstrainedNevergradSearch(NevergradSearch):
    # Nevergrad's own penalty (``tell(..., constraint_violation=)``) scales with the positive
    # part of the loss, and a maximised metric is told negated: it would add nothing. A
    # subnet over a budget is told the worst loss any subnet within the budgets was told so
    # far (or its own, if worse), plus its total excess.
    _worst: float | None = None

    def _process_result(self, trial_id: str, result: dict) -> None:
        loss = self._metric_op * result[self._metric]
        excess = sum(max(v, 0.0) for v in violations(result).values())
        if excess <= 0:
            self._worst = loss if self._worst is None else max(self._worst, loss)
        else:
            loss = max(loss, loss if self._worst is None else self._worst) + excess
        self._nevergrad_opt.tell(self._live_trial_mapping[trial_id], loss)
