"""Pareto fronts and hypervolume over evaluation records (dicts of metric values)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raynas.search.searchers import Constraint, Objective


def _loss_matrix(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]):
    """Every objective as a value to minimise (maximised metrics negated)."""
    return np.array([[(-1.0 if o.direction == "max" else 1.0) * float(r[o.name])
                      for o in objectives] for r in records], dtype=float).reshape(
        len(records), len(objectives))


def feasible(records: Sequence[Mapping[str, Any]],
             constraints: Sequence[Constraint] = ()) -> list[Mapping[str, Any]]:
    return [r for r in records if all(c.violation(r) <= 0 for c in constraints)]


def pareto_mask(losses: np.ndarray) -> np.ndarray:
    """True for rows no other row dominates (all <=, one <); duplicates all stay."""
    n = len(losses)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = np.all(losses <= losses[i], axis=1) & np.any(losses < losses[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def pareto_front(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective],
                 constraints: Sequence[Constraint] = ()) -> list[Mapping[str, Any]]:
    """Non-dominated feasible records, one per arch, ordered by the last objective
    (latency, for the default objectives), then by the first."""
    unique = list({r["arch_key"]: r for r in records}.values()) if records and \
        "arch_key" in records[0] else list(records)
    pool = feasible(unique, constraints)
    if not pool:
        return []
    mask = pareto_mask(_loss_matrix(pool, objectives))
    front = [r for r, keep in zip(pool, mask) if keep]
    last, first = objectives[-1], objectives[0]
    sign = -1.0 if first.direction == "max" else 1.0
    return sorted(front, key=lambda r: (float(r[last.name]), sign * float(r[first.name])))


def default_reference(objectives: Sequence[Objective],
                      records: Sequence[Mapping[str, Any]]) -> list[float]:
    """Reference point in metric units: 0 for maximised metrics in [0, 1] (accuracy),
    1.1 x the worst observed value for minimised ones."""
    ref = []
    for o in objectives:
        values = [float(r[o.name]) for r in records]
        ref.append(0.0 if o.direction == "max" else 1.1 * max(values))
    return ref


def hypervolume(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective],
                reference: Sequence[float], constraints: Sequence[Constraint] = ()) -> float:
    """Hypervolume dominated by the feasible records, bounded by ``reference`` (metric units).

    Points not strictly better than the reference in every objective add nothing.
    """
    from optuna._hypervolume import compute_hypervolume  # exact (WFG), 2-d fast path

    pool = feasible(records, constraints)
    if not pool:
        return 0.0
    losses = _loss_matrix(pool, objectives)
    ref = np.array([(-1.0 if o.direction == "max" else 1.0) * float(v)
                    for o, v in zip(objectives, reference)])
    inside = losses[np.all(losses < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    front = inside[pareto_mask(inside)]
    return float(compute_hypervolume(front, ref))
