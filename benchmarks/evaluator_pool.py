"""Evaluator pool: subnets/s of the search with two evaluator actors against one.

The same N fixed distinct subnets of digits_cnn (seeded) are evaluated three ways from an
untrained checkpoint (throughput does not depend on the weights' quality), inside one
``ray_session(num_cpus=2)`` (this machine's cores). Each clock starts before the evaluators
are created (they load the checkpoint and the data) and stops when the last record is in:
the search stage as a user waits for it.

  one       one evaluator actor that times latency itself, waited for, then ``run_search``
            (replaying searcher, subnets_per_trial=16, 2 trials at once): the search as it
            was before the pool.
  pool      ``create_evaluator_pool(n=2)`` (latency timed by the job's one meter, created
            first, as a search does) not waited for: Tune starts while the actors load;
            then ``run_search`` with 4 trials at once (2 per evaluator, the default).
  pool_raw  the same pool, waited for, then called directly without Tune: the N subnets in
            batches of 16, every batch submitted at once to the actors in turn: the pool's
            raw throughput.

The runs go one, pool, pool_raw per repetition. Ratios per repetition: pool / one (goal
>= 1.6) and pool / pool_raw (goal >= 0.9); every path must return the same accuracy for
every subnet.

    python benchmarks/evaluator_pool.py [--reps 3] [--n 96]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import OBJECTIVES, fmt, machine_info, quickstart, summarize, write_json
from search_throughput import ReplaySearcher, brief

from raynas.checkpoint import save_checkpoint
from raynas.evaluation.actor import create_evaluator_pool, stop_evaluator_actor
from raynas.latency.remote import meter_actor, stop_meter
from raynas.pipeline.latency import distinct_archs
from raynas.runtime import ray_session
from raynas.supernets import create_supernet

NAME = "evaluator_pool"
GOAL_POOL, GOAL_TUNE = 1.6, 0.9


def run_tune(cfg, ckpt, space, archs, n: int, storage: Path, log: io.TextIOBase) -> dict:
    from raynas.search.tune_driver import run_search

    t0 = time.perf_counter()
    meter = [meter_actor(space, cfg.latency)] if n > 1 else []
    pool, _ = create_evaluator_pool(cfg, ckpt, space, n, wait=n == 1)
    with contextlib.redirect_stdout(log):  # the collector's progress lines
        outcome = run_search(ReplaySearcher(space, archs), pool, budget=len(archs),
                             subnets_per_trial=16, max_concurrent_trials=2 * n,
                             storage_path=storage, objectives=OBJECTIVES)
    wall = time.perf_counter() - t0
    for handle in pool:
        stop_evaluator_actor(handle)
    if meter:
        stop_meter(space, cfg.latency)
    return {"wall_s": wall, "records": outcome.records}


def run_raw(cfg, ckpt, space, archs, n: int) -> dict:
    import ray

    t0 = time.perf_counter()
    meter = meter_actor(space, cfg.latency)  # held to the end: the evaluators share it
    pool, _ = create_evaluator_pool(cfg, ckpt, space, n)
    batches = [[a.to_dict() for a in archs[i:i + 16]] for i in range(0, len(archs), 16)]
    refs = [pool[i % n].evaluate.remote(b) for i, b in enumerate(batches)]
    records = [r for batch in ray.get(refs) for r in batch]
    wall = time.perf_counter() - t0
    for handle in pool:
        stop_evaluator_actor(handle)
    stop_meter(space, cfg.latency)
    del meter
    return {"wall_s": wall, "records": records}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=96, help="fixed subnets per run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    machine = machine_info(1)  # each evaluator sets torch threads to evaluator.num_cpus = 1
    space, cfg = quickstart()
    archs = distinct_archs(space, args.n, args.seed)
    reps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="raynas-bench-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(args.seed)
        ckpt = save_checkpoint(tmp / "ckpt", space, create_supernet(space).state_dict(), 0)
        log = (tmp / "tune.log").open("w")
        with ray_session(num_cpus=2):  # once, outside every timed region
            t_start = time.perf_counter()
            warm = distinct_archs(space, 16, args.seed + 1)
            run_tune(cfg, ckpt, space, warm, 2, tmp / "warm", log)  # warm-up, not reported
            for i in range(args.reps):
                one = run_tune(cfg, ckpt, space, archs, 1, tmp / f"one{i}", log)
                pool = run_tune(cfg, ckpt, space, archs, 2, tmp / f"pool{i}", log)
                raw = run_raw(cfg, ckpt, space, archs, 2)
                by_key = {r["arch_key"]: r for r in one["records"]}
                for run in (pool, raw):
                    assert {r["arch_key"] for r in run["records"]} == set(by_key)
                    for r in run["records"]:
                        assert r["accuracy"] == by_key[r["arch_key"]]["accuracy"], \
                            "accuracy differs between the pool and one evaluator"
                rep = {"one": brief(one, args.n), "pool": brief(pool, args.n),
                       "pool_raw": brief(raw, args.n)}
                rep["pool_over_one"] = rep["pool"]["subnets_per_s"] / rep["one"]["subnets_per_s"]
                rep["pool_over_raw"] = (rep["pool"]["subnets_per_s"]
                                        / rep["pool_raw"]["subnets_per_s"])
                reps.append(rep)
                print(f"rep {i}: one {rep['one']['subnets_per_s']:.2f}, pool "
                      f"{rep['pool']['subnets_per_s']:.2f}, pool raw "
                      f"{rep['pool_raw']['subnets_per_s']:.2f} subnets/s -> pool/one "
                      f"{rep['pool_over_one']:.2f}x, pool/raw {rep['pool_over_raw']:.2f}x",
                      flush=True)
            total_s = time.perf_counter() - t_start
        log.close()

    over_one = summarize([r["pool_over_one"] for r in reps])
    over_raw = summarize([r["pool_over_raw"] for r in reps])
    path = write_json(NAME if args.n == 96 else f"{NAME}_n{args.n}", {
        "machine": machine,
        "setup": {"space": space.name, "n_subnets": args.n, "seed": args.seed,
                  "subnets_per_trial": 16, "ray_num_cpus": 2,
                  "evaluator": cfg.search.evaluator.model_dump(),
                  "latency": cfg.latency.model_dump(),
                  "clock": "from before the evaluators are created to the last record",
                  "order": "warm-up pool; then one, pool, pool_raw per repetition"},
        "reps": reps, "pool_over_one": over_one, "pool_over_raw": over_raw,
        "goals": {"pool_over_one": GOAL_POOL, "pool_over_raw": GOAL_TUNE},
        "met": {"pool_over_one": over_one["median"] >= GOAL_POOL,
                "pool_over_raw": over_raw["median"] >= GOAL_TUNE},
        "loadavg_at_end": list(os.getloadavg()), "total_s": total_s,
    })
    print(f"wrote {path}")
    print(f"evaluator_pool N={args.n}, {len(reps)} reps: pool/one {fmt(over_one)} (goal >= "
          f"{GOAL_POOL}: {'met' if over_one['median'] >= GOAL_POOL else 'MISSED'}); "
          f"pool/raw {fmt(over_raw)} (goal >= {GOAL_TUNE}: "
          f"{'met' if over_raw['median'] >= GOAL_TUNE else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
