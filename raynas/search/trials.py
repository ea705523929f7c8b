"""A fixed list of independent jobs run as Ray Tune trials, each with its own resources.

Where a search asks a searcher what to try next (``tune_driver``), some work is known up
front: the standalone trainings of a fidelity report, one per subnet. ``run_trials`` runs
``fn(item)`` once per item as a Tune trial (one grid point each), as many at once as Ray's
resources and ``max_concurrent`` allow, and hands each result to ``on_result`` in the driver
as it arrives. It lives here because only ``raynas.search`` imports ``ray.tune``; ``fn`` is
plain Python (it must be importable by Ray's workers: a module-level function).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.logger import JsonLoggerCallback

Result = dict[str, Any]


def _call(config: dict[str, Any], fn: Callable[..., Result], items: Sequence[Any]) -> None:
    index = config["index"]
    tune.report({"index": index, "result": fn(items[index])})


class _Reporter(tune.Callback):
    """Runs in the driver: hands each finished trial's result to ``on_result``."""

    def __init__(self, on_result: Callable[[int, Result], None] | None):
        self.on_result = on_result

    def __reduce__(self):
        # Tune saves its callbacks with the experiment; a closure over the driver's state
        # need not (and may not) pickle. These experiments are never restored.
        return _Reporter, (None,)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.on_result is not None:
            self.on_result(int(result["index"]), result["result"])


def run_trials(fn: Callable[[Any], Result], items: Sequence[Any], *,
               resources: Mapping[str, float], storage_path: str | Path, name: str,
               max_concurrent: int | None = None,
               on_result: Callable[[int, Result], None] | None = None) -> list[Result]:
    """``[fn(item) for item in items]``, each call a Ray Tune trial holding ``resources``
    (e.g. ``{"cpu": 1}`` or ``{"cpu": 1, "gpu": 1}``); Ray must be initialised.

    ``max_concurrent``: trials at once (None: as many as Ray's resources hold). ``on_result(i,
    result)`` runs in the driver as each trial finishes. ``items`` travel to
    the workers once through Ray's object store (``tune.with_parameters``). Raises
    ``RuntimeError`` naming the first failure if any trial fails.
    """
    if not items:
        return []
    if max_concurrent is None:
        # No more trials than fit at once: Tune would otherwise ask Ray for a placement group
        # per queued trial, which the job's placement watch reports as waiting work.
        import ray

        have = ray.cluster_resources()
        max_concurrent = max(1, min(int(have.get(k.upper(), 0) // v)
                                    for k, v in resources.items() if v > 0))
    # Quiet consoles: no Tune status tables (the caller prints progress) and no per-trial
    # CSV/TensorBoard files, only result.json (where Tune reads the results back), as in the
    # search (see tune_driver.run_search).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    remote = "://" in str(storage_path)
    storage = str(storage_path) if remote else str(Path(storage_path).resolve())
    trainable = tune.with_resources(
        tune.with_parameters(_call, fn=fn, items=list(items)), dict(resources))
    tuner = tune.Tuner(
        trainable,
        param_space={"index": tune.grid_search(list(range(len(items))))},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent,
                                    reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                  callbacks=[_Reporter(on_result), JsonLoggerCallback()]),
    )
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(items)} trials of {name!r} failed; first "
                           f"error: {errors[0]}")
    results: list[Result | None] = [None] * len(items)
    for r in grid:
        results[int(r.metrics["index"])] = r.metrics["result"]
    return results  # type: ignore[return-value]
