"""Search at scale: does a subnet cost the same at the end of a long search as at the start?

A search of N subnets of digits_cnn (74,088 subnets) runs through ``run_search`` with the
search stage's own bookkeeping on every batch: the records appended to
``evaluations.parquet`` as a part (``append_records``), their metrics logged to MLflow in one
batch (a local SQLite store), the incremental Pareto front and the progress line. The
searcher is the default, ``optuna_nsga2``; 16 subnets per Tune trial.

  replay  (default: N=5,000) an evaluator actor that answers at once with metrics computed
          from each arch (accuracy saturating with size, plus a seeded per-arch wobble as
          large as the gains near the top, so that most subnets are dominated and the front
          stays tens of points, as in real searches; latency from size): everything but the
          scoring itself, so the bookkeeping and the searcher are all there is to time.
  live    (N=2,000) the real evaluator pool (``search.evaluators: auto``) on an untrained
          checkpoint (time does not depend on the weights).

The driver's clock is read when each batch's records arrive; the cost of a subnet over a
stretch is its wall time over the subnets in it. Reported: the first 1,000 subnets' cost
against the last 1,000's (goal: the last within 1.5x of the first), and the time the
bookkeeping itself took per batch, first and last 1,000.

    python benchmarks/search_scale.py [--mode replay|live] [--n N]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import OBJECTIVES, machine_info, quickstart, write_json

from raynas.runtime import ray_session
from raynas.search.registry import create_searcher
from raynas.search.results import append_records, read_records
from raynas.search.tune_driver import run_search
from raynas.space import SearchSpace

NAME = "search_scale"
GOAL = 1.5


class InstantEvaluator:
    """Answers at once with metrics computed from each arch (see the module doc)."""

    def __init__(self, space: dict):
        self.space = SearchSpace.from_dict(space)

    def ready(self) -> bool:
        return True

    def evaluate(self, archs: list[dict]) -> list[dict]:
        out = []
        for a in archs:
            arch = self.space.validate(a)
            size = sum(float(sum(v)) if isinstance(v, (list, tuple)) else float(v)
                       for v in arch.to_dict().values())
            wobble = int(hashlib.sha256(arch.key.encode()).hexdigest()[:8], 16) / 16**8
            out.append({"arch_key": arch.key, "arch": arch.to_dict(),
                        "accuracy": 0.95 - 0.05 * math.exp(-size / 100) + 0.02 * wobble,
                        "latency_ms": 0.05 + size / 500,
                        "eval_s": 0.0, "evaluated_at": time.time()})
        return out


def main() -> int:
    import ray

    from raynas.tracking.tracker import MlflowTracker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("replay", "live"), default="replay")
    ap.add_argument("--n", type=int, default=None, help="subnets (replay 5,000, live 2,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--searcher", default="optuna_nsga2")
    args = ap.parse_args()
    n = args.n or (5000 if args.mode == "replay" else 2000)
    stretch = min(1000, n // 2)

    space, cfg = quickstart([f"search.budget={n}"])
    with tempfile.TemporaryDirectory(prefix="raynas-bench-") as tmp:
        tmp = Path(tmp)
        arrivals: list[tuple[float, int]] = []  # (driver clock, records so far)
        bookkeeping: list[tuple[int, float]] = []  # (records so far, seconds it took)
        table = tmp / "evaluations.parquet"
        with ray_session(num_cpus=2):
            tracker = MlflowTracker(f"sqlite:///{tmp}/mlruns.db", "search-scale")
            tracker.start_run("search-scale")
            so_far = [0]

            def on_records(batch: list[dict]) -> None:
                t0 = time.perf_counter()
                start = so_far[0]
                so_far[0] += len(batch)
                append_records(table, batch, space, start)
                tracker.log_metric_rows([(start + i, {"subnet_accuracy": r["accuracy"],
                                                      "subnet_latency_ms": r["latency_ms"]})
                                         for i, r in enumerate(batch)])
                t1 = time.perf_counter()
                bookkeeping.append((so_far[0], t1 - t0))
                arrivals.append((t1, so_far[0]))

            if args.mode == "replay":
                actor = ray.remote(InstantEvaluator).options(num_cpus=1).remote(
                    space.to_dict())
                ray.get(actor.ready.remote())
                pool, stop = [actor], lambda: ray.kill(actor)
                what = "instant evaluator actor (metrics from the arch)"
            else:
                from raynas.checkpoint import save_checkpoint
                from raynas.evaluation.actor import (
                    create_evaluator_pool,
                    pool_size,
                    stop_evaluator_actor,
                )
                from raynas.latency.remote import meter_actor, stop_meter
                from raynas.supernets import create_supernet

                ckpt = save_checkpoint(tmp / "ckpt", space,
                                       create_supernet(space).state_dict(), 0)
                size = pool_size(cfg)
                meter = meter_actor(space, cfg.latency) if size > 1 else None
                pool, _ = create_evaluator_pool(cfg, ckpt, space, size)

                def stop():
                    for handle in pool:
                        stop_evaluator_actor(handle)
                    if meter is not None:
                        stop_meter(space, cfg.latency)

                what = f"evaluator pool of {size} on an untrained checkpoint"
            searcher = create_searcher(args.searcher, space=space, objectives=OBJECTIVES,
                                       constraints=(), seed=args.seed, population_size=32)
            t_start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                outcome = run_search(searcher, pool, budget=n, subnets_per_trial=16,
                                     max_concurrent_trials=2 * len(pool),
                                     storage_path=tmp / "tune", objectives=OBJECTIVES,
                                     on_records=on_records)
            wall = time.perf_counter() - t_start
            stop()
            tracker.end_run()
        assert len(outcome.records) == n, len(outcome.records)
        assert len(read_records(table)) == n  # every batch's part is there, once

    def cost(lo: int, hi: int) -> float:
        """Seconds per subnet between the arrivals that crossed ``lo`` and ``hi`` records."""
        (t_lo, k_lo), (t_hi, k_hi) = (next(a for a in arrivals if a[1] >= k) for k in (lo, hi))
        return (t_hi - t_lo) / (k_hi - k_lo)

    first, last = cost(0, stretch), cost(n - stretch, n)
    book_first = [s for k, s in bookkeeping if k <= stretch]
    book_last = [s for k, s in bookkeeping if k > n - stretch]
    ratio = last / first
    asks = getattr(getattr(searcher, "study", None), "trials", None)
    path = write_json(f"{NAME}_{args.mode}"
                      + ("" if args.searcher == "optuna_nsga2" else f"_{args.searcher}"), {
        "machine": machine_info(1),
        "setup": {"space": space.name, "n_subnets": n, "mode": args.mode, "evaluator": what,
                  "searcher": args.searcher, "population_size": 32, "subnets_per_trial": 16,
                  "seed": args.seed, "stretch": stretch, "ray_num_cpus": 2,
                  "bookkeeping": "append_records part + one MLflow log_batch per batch "
                                 "(SQLite store), incremental front, progress line"},
        "wall_s": wall, "front_size": len(outcome.front),
        "asks": len(asks) if asks is not None else None,
        "first_s_per_subnet": first, "last_s_per_subnet": last, "last_over_first": ratio,
        "bookkeeping_ms_per_batch": {
            "first": 1000 * statistics.median(book_first),
            "last": 1000 * statistics.median(book_last)},
        "goal_max": GOAL, "met": ratio <= GOAL, "loadavg_at_end": list(os.getloadavg()),
    })
    print(f"wrote {path}")
    print(f"search_scale {args.mode} {args.searcher} N={n}: {wall:.0f} s; first {stretch} subnets "
          f"{1000 * first:.1f} ms each, last {stretch} {1000 * last:.1f} ms -> "
          f"{ratio:.2f}x (goal <= {GOAL}: {'met' if ratio <= GOAL else 'MISSED'}); "
          f"bookkeeping per batch {1000 * statistics.median(book_first):.1f} ms first, "
          f"{1000 * statistics.median(book_last):.1f} ms last")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
