"""The search loop on Ray Tune: an ask/tell searcher, batched trials, a shared evaluator.

A subnet evaluates in ~0.15 s on a 2-core CPU, while Ray Tune costs a few seconds to start a
search and some scheduling per trial. So each trial carries a *batch* of
``subnets_per_trial`` archs (asked from the searcher one by one) to the evaluator actor in
one call, and a few trials run at once so the actor always has the next batch queued. Trials
pass arch dicts and get metrics back; they never see weights.

The evaluator is anything with an ``evaluate.remote(list_of_arch_dicts)`` method (the live
evaluator actor, or a replay table served the same way), or a list of them: a pool, each
batch sent to the evaluator with the fewest batches in flight.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.search import Searcher

from raynas.search.pareto import pareto_front
from raynas.search.searchers import AskTellSearcher, Constraint, Objective


class BatchSearcher(Searcher):
    """Tune ``Searcher`` that hands out batches of archs from an ask/tell searcher.

    The budget counts distinct subnets. An arch the searcher proposes again (evaluated, or
    still being evaluated) costs neither budget nor an evaluator call: the repeat is told as
    failed, so the searcher learns each subnet's result once and moves on. Answering repeats
    with their known record instead makes them count again in the searcher's population
    (NSGA-II's generations fill with copies and it stalls, asking ~10 times per new subnet
    on a 2,592-subnet space) and keeps its trial list growing, which Optuna's samplers rescan
    on every ask.
    """

    def __init__(self, searcher: AskTellSearcher, budget: int, batch_size: int,
                 max_repeats: int = 50, slots: int = 1):
        super().__init__(metric=None, mode=None)
        # Not named `searcher`: Tune unwraps wrapped searchers through that attribute.
        self._asktell, self.budget, self.batch_size = searcher, budget, batch_size
        self.max_repeats = max_repeats  # asks per wanted arch before the space counts as spent
        self.suggested = 0
        self._pending: dict[str, list[tuple[Any, str]]] = {}  # trial -> (token, arch key)
        self._known: set[str] = set()  # arch keys evaluated
        self._in_flight: set[str] = set()  # arch keys being evaluated
        self._exhausted = False
        self.slots = slots  # evaluators in the pool; each batch goes to the least busy
        self._slot_of: dict[str, int] = {}  # trial -> its evaluator

    def _free_slot(self) -> int:
        busy = [0] * self.slots
        for slot in self._slot_of.values():
            busy[slot % self.slots] += 1
        return busy.index(min(busy))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        remaining = self.budget - self.suggested
        if remaining <= 0:
            return Searcher.FINISHED
        if self._exhausted:  # nothing new to propose; finish once in-flight work is told
            return None if self._in_flight else Searcher.FINISHED
        want = min(self.batch_size, remaining)
        batch: list[tuple[Any, Any]] = []
        for _ in range(self.max_repeats * want):
            token, arch = self._asktell.ask()
            if arch.key in self._known or arch.key in self._in_flight:
                self._asktell.tell(token, None)  # a repeat: rejected, see the class doc
            else:
                self._in_flight.add(arch.key)
                batch.append((token, arch))
                if len(batch) == want:
                    break
        else:
            self._exhausted = True  # the searcher keeps proposing known archs
        if not batch:
            return Searcher.FINISHED if not self._in_flight else None
        self.suggested += len(batch)
        self._pending[trial_id] = [(token, arch.key) for token, arch in batch]
        slot = self._slot_of[trial_id] = self._free_slot()
        return {"archs": [arch.to_dict() for _, arch in batch], "slot": slot}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        records = {} if error or not result else {
            r["arch_key"]: r for r in result.get("records") or []}
        self._slot_of.pop(trial_id, None)
        for token, key in self._pending.pop(trial_id, []):
            record = records.get(key)
            self._in_flight.discard(key)
            if record is not None:
                self._known.add(key)
            self._asktell.tell(token, record)  # a failed arch may be proposed again

    # Tune checkpoints the searcher with the experiment, so a resumed search continues the
    # same study instead of starting over.
    def get_state(self) -> dict[str, Any]:
        return {"asktell": self._asktell, "suggested": self.suggested,
                "pending": dict(self._pending), "known": set(self._known),
                "in_flight": set(self._in_flight),
                "exhausted": self._exhausted, "slot_of": dict(self._slot_of)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._asktell = state["asktell"]
        self.suggested = state["suggested"]
        self._pending = dict(state["pending"])
        self._known = set(state["known"])
        self._in_flight = set(state["in_flight"])
        self._exhausted = state["exhausted"]
        self._slot_of = dict(state.get("slot_of", {}))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            cloudpickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(cloudpickle.load(f))


# What each Tune trial asks Ray for: it only waits on an evaluator, so no CPU (the
# evaluators hold those); Tune needs some resource in a request, so a token of memory.
TRIAL_RESOURCES = {"cpu": 0, "memory": 1 << 20}


def _evaluate_batch(config: dict[str, Any], evaluator) -> None:
    import ray

    pool = evaluator if isinstance(evaluator, list) else [evaluator]
    records = ray.get(pool[config.get("slot", 0) % len(pool)].evaluate.remote(config["archs"]))
    tune.report({"records": records, "n": len(records)})


# The collector of the search running in this process, by experiment path. Tune pickles its
# callbacks with the experiment; a resumed experiment unpickles them as a lookup here, so the
# restored run reports to the live collector of the resuming process.
_LIVE: dict[str, _Collector] = {}


def _live_collector(key: str) -> _Collector:
    return _LIVE[key]


class _Collector(tune.Callback):
    """Runs in the driver: keeps every record and the Pareto front, appends each record to a
    JSONL file as it arrives (nothing lost if the run dies), and prints one progress line
    per finished trial.

    ``prior``: records of the interrupted run being resumed; a trial re-run after the
    resume reports them again (from the evaluator's cache) and they are not counted twice.
    """

    def __init__(self, key: str, budget: int, objectives, constraints, log_path: Path,
                 on_records: Callable[[list[dict]], None] | None = None,
                 prior: Sequence[dict[str, Any]] = ()):
        self.key = key
        self.budget, self.objectives, self.constraints = budget, objectives, constraints
        self.records: list[dict[str, Any]] = list(prior)
        self._seen = {r["arch_key"] for r in prior}
        # Kept as records arrive: the front of everything equals the front of the last
        # front and the new batch (a dominated record never returns to it).
        self.front = pareto_front(self.records, objectives, constraints)
        self.log_path = log_path
        self.on_records = on_records
        self.t0 = time.perf_counter()

    def __reduce__(self):
        return _live_collector, (self.key,)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        batch = [r for r in result.get("records") or [] if r["arch_key"] not in self._seen]
        self._seen.update(r["arch_key"] for r in batch)
        if not batch:
            return
        self.records.extend(batch)
        with self.log_path.open("a") as f:
            for r in batch:
                f.write(json.dumps(r) + "\n")
        if self.on_records:
            self.on_records(batch)
        front = self.front = pareto_front(self.front + batch, self.objectives,
                                          self.constraints)
        first = self.objectives[0]
        pick = max if first.direction == "max" else min
        best = pick(front, key=lambda r: r[first.name]) if front else None
        rate = len(self.records) / max(1e-9, time.perf_counter() - self.t0)
        line = (f"[raynas] search {len(self.records)}/{self.budget} subnets  "
                f"front {len(front)} points")
        if best is not None:
            line += f"  best {first.name} {best[first.name]:.3f}"
            if "latency_ms" in best:
                line += f" @ {best['latency_ms']:.3f} ms"
        print(f"{line}  ({rate:.1f} subnets/s)", flush=True)


@dataclass
class SearchOutcome:
    records: list[dict[str, Any]]
    front: list[dict[str, Any]]
    wall_s: float


def run_search(searcher: AskTellSearcher, evaluator, *, budget: int, subnets_per_trial: int,
               max_concurrent_trials: int, storage_path: str | Path,
               objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
               on_records: Callable[[list[dict]], None] | None = None,
               name: str = "search", resume: bool = False,
               prior: Sequence[dict[str, Any]] = ()) -> SearchOutcome:
    """Evaluate ``budget`` subnets proposed by ``searcher`` through Ray Tune.

    ``resume``: continue the interrupted experiment ``<storage_path>/<name>``: Tune restores
    its trials and the searcher's state, unfinished trials run again, and ``prior`` (the
    records the interrupted run had logged) are neither re-counted nor re-logged; pass an
    evaluator that knows them, so re-run trials do not evaluate them again.
    """
    # Our collector prints the progress. Tune's new console output prints tables even at
    # verbose=0; its legacy reporter is silent there. CSV/TensorBoard loggers cannot store
    # the per-trial record lists, so only the JSON logger (result.json) stays on.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    remote = "://" in str(storage_path)
    storage = str(storage_path) if remote else Path(storage_path).resolve()
    log_dir = Path(tempfile.gettempdir()) if remote else storage
    if not remote:
        storage.mkdir(parents=True, exist_ok=True)
    key = f"{storage}/{name}"
    collector = _LIVE[key] = _Collector(key, budget, objectives, constraints,
                                        log_dir / f"{name}.evaluations.jsonl", on_records,
                                        prior)
    trainable = tune.with_resources(
        tune.with_parameters(_evaluate_batch, evaluator=evaluator), TRIAL_RESOURCES)
    slots = len(evaluator) if isinstance(evaluator, list) else 1
    try:
        if resume:
            tuner = tune.Tuner.restore(key, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = _new_tuner(trainable, BatchSearcher(searcher, budget, subnets_per_trial,
                                                        slots=slots),
                               budget, max_concurrent_trials, storage, name, collector)
        t0 = time.perf_counter()
        grid = tuner.fit()
    finally:
        _LIVE.pop(key, None)
    errors = [r.error for r in grid if r.error is not None]
    if errors and not collector.records:
        raise RuntimeError(f"every search trial failed; first error: {errors[0]}")
    return SearchOutcome(collector.records, list(collector.front), time.perf_counter() - t0)


def can_resume(storage_path: str | Path, name: str) -> bool:
    """Whether an interrupted search experiment ``<storage_path>/<name>`` can be restored."""
    remote = "://" in str(storage_path)
    path = f"{storage_path}/{name}" if remote else str(Path(storage_path).resolve() / name)
    return tune.Tuner.can_restore(path)


def _new_tuner(trainable, batch_searcher: BatchSearcher, budget: int,
               max_concurrent_trials: int, storage, name: str, collector: _Collector):
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=batch_searcher,
            num_samples=budget,  # an upper bound: the searcher says when it is done
            max_concurrent_trials=max_concurrent_trials,
            reuse_actors=True,
            trial_dirname_creator=lambda trial: f"batch_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                  callbacks=[collector, JsonLoggerCallback()]),
    )
