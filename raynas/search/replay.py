"""Replay: run a searcher against recorded evaluations instead of a live supernet.

A table of evaluated subnets (from a raynas search, or from anywhere) answers the searcher's
archs, so a searcher can be compared and tuned in seconds. Each replay reports the
hypervolume its first N distinct subnets reach, as a ratio to the hypervolume of the whole
table (its true front), for every requested budget N and seed.

Table format (Parquet or CSV, one row per evaluated subnet):

- one column per dimension of the space, named like the dimension. Categorical values may be
  strings ("3" matches the choice 3); per-layer values are JSON lists (``"[3, 5]"``);
- one column per objective metric (``--objective name:max|min``); other columns are ignored;
- rows whose objective values are missing or NaN are dropped; an arch appearing in several
  rows gets the mean of its values.

The searcher is driven through the same ``BatchSearcher`` that serves Ray Tune in a live
search, batch by batch, so the budget counts distinct subnets exactly as it does there.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raynas.errors import ArchError, ConfigError
from raynas.search.pareto import (
    REFERENCE_MARGIN,
    default_reference,
    hypervolume,
    pareto_front,
)
from raynas.search.searchers import Constraint, Objective
from raynas.space import Choice, FloatRange, IntRange, PerLayer, SearchSpace


def parse_objective(text: str) -> Objective:
    """``"accuracy:max"`` -> Objective; a clear error otherwise."""
    name, sep, direction = text.rpartition(":")
    if not sep or not name or direction not in ("max", "min"):
        raise ConfigError(f"--objective = {text!r}: write NAME:max or NAME:min, e.g. "
                          "accuracy:max or latency_ms:min")
    return Objective(name, direction)


def parse_constraint(text: str, field: str = "--constraint",
                     known: Mapping[str, str] | None = None) -> Constraint:
    """``"latency_ms<=0.5"`` -> Constraint. ``field`` names the setting in errors; ``known``
    (metric -> goal), when given, is what the metric must be one of: a metric to minimise,
    since a budget bounds it from above."""
    name, sep, limit = str(text).partition("<=")
    name = name.strip()
    try:
        value = float(limit)
    except ValueError:
        value = None
    if not sep or not name or value is None or not math.isfinite(value):
        raise ConfigError(f"{field} = {text!r}: write METRIC<=LIMIT with a finite number, "
                          "e.g. latency_ms<=0.5 or params<=2e6")
    if known is not None and name not in known:
        raise ConfigError(f"{field} = {text!r}: {name!r} is not a metric a subnet's record "
                          f"holds; choose from {', '.join(known)}")
    if known is not None and known[name] == "max":
        raise ConfigError(f"{field} = {text!r}: {name} is maximised, and a budget caps a "
                          f"metric from above; budget one of "
                          f"{', '.join(k for k, g in known.items() if g == 'min')}")
    return Constraint(name, value)


def check_budgets(budgets: Sequence[int], size: int | None = None) -> list[int]:
    """Distinct, sorted, positive budgets; with the table's ``size``, none above it (a replay
    cannot evaluate more distinct subnets than the table holds)."""
    out = sorted(set(int(b) for b in budgets))
    if not out or out[0] < 1:
        raise ConfigError(f"--budget = {list(budgets)!r}: give positive integers, e.g. "
                          "50,100,200")
    if size is not None and out[-1] > size:
        raise ConfigError(f"--budget = {out[-1]}: the table holds {size} distinct subnets; "
                          f"give budgets up to {size}")
    return out


def check_reference(reference: Sequence[float] | None,
                    objectives: Sequence[Objective]) -> None:
    """A given reference point has one value per objective."""
    if reference is not None and len(reference) != len(objectives):
        text = ",".join(f"{v:g}" for v in reference)
        raise ConfigError(f"--reference = {text!r}: give one value per objective, "
                          f"{len(objectives)} ({', '.join(o.name for o in objectives)})")


def reference_warnings(table: ReplayTable, reference: Sequence[float],
                       constraints: Sequence[Constraint] = ()) -> list[str]:
    """What makes a user's reference point a poor yardstick, one line each: true-front points
    it shuts out (they add no volume, so a searcher gains nothing by finding them), and an
    objective where it lies so far beyond the front (over 10 times the front's range, a value
    in other units, such as 0.9 for a percent column) that any subnet near the front scores
    close to 1."""
    front = table.true_front(constraints)
    if not front:
        return []
    out = []
    beaten = [r for r in front if all(
        (float(r[o.name]) > v) if o.direction == "max" else (float(r[o.name]) < v)
        for o, v in zip(table.objectives, reference))]
    if 0 < len(beaten) < len(front):
        out.append(f"--reference {','.join(f'{v:g}' for v in reference)} shuts out "
                   f"{len(front) - len(beaten)} of the true front's {len(front)} points (not "
                   "better than it in every objective): finding them adds nothing")
    for o, v in zip(table.objectives, reference):
        values = [float(r[o.name]) for r in front]
        worst = min(values) if o.direction == "max" else max(values)
        scale = (max(values) - min(values)) or abs(worst) * REFERENCE_MARGIN or 1.0
        beyond = (worst - v) if o.direction == "max" else (v - worst)
        if beyond > 10 * scale:
            out.append(f"--reference {o.name}={v:g} lies {beyond / scale:.0f}x the true "
                       f"front's range of {o.name} beyond its worst value there ({worst:g}): "
                       f"any subnet near the front scores close to 1; is it in the column's "
                       "units?")
    return out


@dataclass
class ReplayTable:
    space: SearchSpace
    objectives: tuple[Objective, ...]
    records: dict[str, dict[str, Any]]  # arch key -> {"arch_key", "arch", metrics...}
    source: str
    rows: int = 0
    dropped: int = 0

    def true_front(self, constraints: Sequence[Constraint] = ()) -> list[Mapping[str, Any]]:
        return pareto_front(list(self.records.values()), self.objectives, constraints)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"TABLE = {str(path)!r}: file does not exist")
    import pyarrow as pa

    try:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
        else:
            import pyarrow.parquet as pq

            with open(path, "rb") as f:  # one handle: a running search may replace it
                table = pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise ConfigError(f"TABLE = {str(path)!r}: cannot read it as "
                          f"{'CSV' if path.suffix.lower() == '.csv' else 'Parquet'} ({e})") \
            from None
    return table.to_pylist()


def _scalar(d, value: Any) -> Any:
    if isinstance(d, Choice):
        for allowed in d.values:
            if value == allowed or str(value) == str(allowed):
                return allowed
        return value  # validate() names it and the allowed values
    if isinstance(d, IntRange):
        try:
            return int(str(value).strip()) if isinstance(value, str) else value
        except ValueError:
            return value
    if isinstance(d, FloatRange):
        try:
            return float(value)
        except (TypeError, ValueError):
            return value
    return value


def _arch_from_row(space: SearchSpace, row: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for d in space.dims:
        v = row[d.name]
        if isinstance(d, PerLayer):
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    raise ArchError(f"column {d.name!r}: {v!r} is not a JSON list (per-layer "
                                    "values are written like \"[3, 5]\")") from None
            if isinstance(v, list):
                v = [_scalar(Choice(d.name, tuple(d.values)), x) for x in v]
        else:
            v = _scalar(d, v)
        values[d.name] = v
    return values


def load_table(path: str | Path, space: SearchSpace,
               objectives: Sequence[Objective]) -> ReplayTable:
    """Read and check a table: every dimension and objective column present, every row a
    valid arch of ``space`` (an invalid one is an error naming its row)."""
    rows = read_rows(path)
    if not rows:
        raise ConfigError(f"TABLE = {str(path)!r}: no rows")
    columns = list(rows[0])
    need = [*space.names, *(o.name for o in objectives)]
    missing = [c for c in need if c not in columns]
    if missing:
        raise ConfigError(f"TABLE = {str(path)!r}: lacks column(s) {', '.join(missing)} "
                          f"(one per dimension of space {space.name!r} and per objective); "
                          f"it has {', '.join(columns)}")
    sums: dict[str, dict[str, Any]] = {}
    dropped = 0
    for i, row in enumerate(rows):
        metrics = {}
        for o in objectives:
            v = row[o.name]
            try:
                v = float(v)
            except (TypeError, ValueError):
                v = math.nan
            metrics[o.name] = v
        if any(math.isnan(v) for v in metrics.values()):
            dropped += 1
            continue
        try:
            arch = space.validate(_arch_from_row(space, row))
        except ArchError as e:
            raise ConfigError(f"TABLE = {str(path)!r}, row {i + 1}: {e}") from None
        entry = sums.setdefault(arch.key, {"arch": arch, "n": 0, "extra": row,
                                           **{o.name: 0.0 for o in objectives}})
        entry["n"] += 1
        for name, v in metrics.items():
            entry[name] += v
    records = {}
    for key, e in sums.items():
        rec = {k: v for k, v in e["extra"].items() if k not in space.names}
        rec.update({"arch_key": key, "arch": e["arch"].to_dict(),
                    **{o.name: e[o.name] / e["n"] for o in objectives}})
        records[key] = rec
    if not records:
        raise ConfigError(f"TABLE = {str(path)!r}: none of its {len(rows)} rows has a value "
                          f"for every objective ({', '.join(o.name for o in objectives)})")
    return ReplayTable(space, tuple(objectives), records, str(path), len(rows), dropped)


@dataclass
class Trace:
    """What one replay evaluated, in order (distinct subnets), plus what it skipped."""

    records: list[dict[str, Any]]
    skipped: int = 0
    exhausted: bool = False
    wall_s: float = 0.0


def replay_once(table: ReplayTable, searcher, budget: int, batch_size: int = 16,
                missing: str = "error") -> Trace:
    """Drive ``searcher`` (an ask/tell searcher) through ``BatchSearcher`` against the table
    until ``budget`` distinct subnets from it have been evaluated."""
    from ray.tune.search import Searcher

    from raynas.search.tune_driver import BatchSearcher

    if missing not in ("error", "skip"):
        raise ConfigError(f"--missing = {missing!r}: use 'error' or 'skip'")
    batcher = BatchSearcher(searcher, budget, batch_size)
    trace = Trace([])
    t0 = time.perf_counter()
    for n in range(10**9):
        config = batcher.suggest(f"replay_{n}")
        if config is None or config == Searcher.FINISHED:
            trace.exhausted = len(trace.records) < budget
            break
        found = []
        for arch in config["archs"]:
            rec = table.records.get(table.space.validate(arch).key)
            if rec is None:
                if missing == "error":
                    raise ConfigError(
                        f"the searcher proposed arch {json.dumps(arch)}, which is not in "
                        f"{table.source}; replay with --missing skip to pass over such "
                        "archs (they then count as failed evaluations, not against the "
                        "budget)")
                trace.skipped += 1
                batcher.suggested -= 1  # a skipped arch costs no budget
            else:
                found.append(rec)
        trace.records.extend(found)
        batcher.on_trial_complete(f"replay_{n}", {"records": found})
        if trace.skipped > 20 * budget:
            trace.exhausted = True  # the searcher keeps proposing archs the table lacks
            break
    trace.wall_s = time.perf_counter() - t0
    return trace


@dataclass
class ReplayReport:
    searcher: str
    budgets: list[int]
    seeds: list[int]
    reference: list[float]
    true_hypervolume: float
    ratios: dict[int, list[float]] = field(default_factory=dict)  # budget -> per seed
    evaluated: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)

    def summary(self, budget: int) -> tuple[float, float, float]:
        values = self.ratios[budget]
        return statistics.median(values), min(values), max(values)

    def to_dict(self) -> dict[str, Any]:
        return {"searcher": self.searcher, "budgets": self.budgets, "seeds": self.seeds,
                "reference": self.reference, "true_hypervolume": self.true_hypervolume,
                "ratios": {str(b): v for b, v in self.ratios.items()},
                "median": {str(b): self.summary(b)[0] for b in self.budgets},
                "evaluated": self.evaluated, "skipped": self.skipped, "wall_s": self.wall_s}


def replay(table: ReplayTable, searcher: str, budgets: Sequence[int], seeds: Sequence[int],
           constraints: Sequence[Constraint] = (), reference: Sequence[float] | None = None,
           batch_size: int = 16, missing: str = "error",
           options: Mapping[str, Any] | None = None) -> ReplayReport:
    """Replay ``searcher`` once per seed up to the largest budget; the hypervolume ratio at a
    smaller budget is that of the run's first ``budget`` subnets (a searcher does not know
    its budget, so this equals a shorter run)."""
    from raynas.search.registry import create_searcher

    budgets = check_budgets(budgets, len(table.records))
    # The default is the rule a live search uses too, over the whole table (so at its true
    # front): one reference for every searcher, seed and budget.
    check_reference(reference, table.objectives)
    reference = (list(reference) if reference is not None
                 else default_reference(table.objectives, table.records.values(), constraints))
    objectives = table.objectives
    truth = hypervolume(list(table.records.values()), objectives, reference, constraints)
    if truth <= 0:
        raise ConfigError(f"the table's true front has zero hypervolume against reference "
                          f"{reference}: choose a reference every objective can beat")
    report = ReplayReport(searcher, budgets, list(seeds), reference, truth,
                          {b: [] for b in budgets})
    for seed in seeds:
        s = create_searcher(searcher, space=table.space, objectives=objectives,
                            constraints=constraints, seed=seed, **dict(options or {}))
        trace = replay_once(table, s, budgets[-1], batch_size, missing)
        for b in budgets:
            hv = hypervolume(trace.records[:b], objectives, reference, constraints)
            report.ratios[b].append(hv / truth)
        report.evaluated.append(len(trace.records))
        report.skipped.append(trace.skipped)
        report.wall_s.append(trace.wall_s)
    return report
