"""Search throughput: subnets/s through Ray Tune + the evaluator actor vs the bare Evaluator.

The same N fixed subnets of digits_cnn (distinct, sampled with a seed) are evaluated two ways
from an untrained checkpoint (throughput does not depend on the weights' quality):

  raw   an in-process ``Evaluator(**evaluator_args(cfg, ckpt, space))``, fresh per repetition
        (so its cache never helps); only ``evaluate(archs)`` is timed.
  tune  ``run_search`` with a searcher replaying exactly those archs in order, against a fresh
        ``create_evaluator_actor`` per repetition (created before the clock starts, killed
        with ``ray.kill`` after), subnets_per_trial=16, max_concurrent_trials=2.

Ray is started once (``ray_session(num_cpus=2)``) outside every timed region. After one
warm-up of each path, the pairs run raw, tune, raw, tune, ... Ratio = tune subnets/s / raw
subnets/s, goal >= 0.8. One extra pair with subnets_per_trial=1 illustrates why batching
matters (a single pair, 48 subnets by default: an illustration, not a measurement with a
spread). Diagnostics (single runs, to show where the time goes): the evaluator actor called
directly without Tune, and Tune driving a null evaluator that answers instantly.

    python benchmarks/search_throughput.py [--pairs 3] [--n 96]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import OBJECTIVES, fmt, machine_info, quickstart, summarize, write_json

from raynas.checkpoint import save_checkpoint
from raynas.evaluation.actor import create_evaluator_actor, evaluator_args, stop_evaluator_actor
from raynas.evaluation.evaluator import Evaluator
from raynas.pipeline.latency import distinct_archs
from raynas.runtime import ray_session
from raynas.search.searchers import AskTellSearcher
from raynas.supernets import create_supernet

NAME = "search_throughput"
GOAL = 0.8


class ReplaySearcher(AskTellSearcher):
    """Hands out a fixed list of archs, in order; remembers what it was told."""

    def __init__(self, space, archs):
        super().__init__(space, OBJECTIVES)
        self.archs = list(archs)
        self.next = 0
        self.told: dict[str, object] = {}

    def ask(self):
        arch = self.archs[self.next]
        self.next += 1
        return arch.key, arch

    def tell(self, token, values):
        self.told[token] = values


def run_raw(cfg, ckpt, space, archs) -> dict:
    ev = Evaluator(**evaluator_args(cfg, ckpt, space))  # fresh: empty cache
    t0 = time.perf_counter_ns()
    records = ev.evaluate([a.to_dict() for a in archs])
    wall = (time.perf_counter_ns() - t0) / 1e9
    return {"wall_s": wall, "records": records, "evaluate_calls": ev.calls}


def run_tune(cfg, ckpt, space, archs, storage: Path, spt: int, concurrent: int,
             log: io.TextIOBase) -> dict:
    import ray

    from raynas.search.tune_driver import run_search

    handle = create_evaluator_actor(cfg, ckpt, space)  # outside the clock
    searcher = ReplaySearcher(space, archs)
    arrivals: list[int] = []  # driver clock when each trial's records arrived

    def on_records(batch: list[dict]) -> None:
        arrivals.append(time.perf_counter_ns())

    with contextlib.redirect_stdout(log):  # the collector's progress lines
        t0 = time.perf_counter_ns()
        outcome = run_search(searcher, handle, budget=len(archs), subnets_per_trial=spt,
                             max_concurrent_trials=concurrent, storage_path=storage,
                             objectives=OBJECTIVES, on_records=on_records)
        t1 = time.perf_counter_ns()
    wall = (t1 - t0) / 1e9
    try:
        calls = ray.get(handle.__ray_call__.remote(lambda self: self.calls))
    except Exception:  # older Ray: no __ray_call__
        calls = None
    stop_evaluator_actor(handle)
    trials = len(list((storage / "search").glob("batch_*")))
    return {"wall_s": wall, "tuner_fit_s": outcome.wall_s, "records": outcome.records,
            "evaluate_calls": calls, "trials": trials,
            "first_result_at_s": (arrivals[0] - t0) / 1e9 if arrivals else None,
            "after_last_result_s": (t1 - arrivals[-1]) / 1e9 if arrivals else None,
            "first_subnet_eval_s": outcome.records[0]["eval_s"] if outcome.records else None,
            # records arrive trial by trial: the first `spt` are the first trial's batch
            "actor_idle_before_first_batch_s": (
                (arrivals[0] - t0) / 1e9 - sum(r["eval_s"] for r in outcome.records[:spt])
                if arrivals else None)}


def run_tune_null(space, archs, storage: Path, spt: int, concurrent: int,
                  log: io.TextIOBase) -> dict:
    """Diagnostic: the same Tune search against an actor that answers instantly with dummy
    records: what Ray Tune itself costs (start-up, trials, teardown)."""
    import ray

    from raynas.search.tune_driver import run_search
    from raynas.space import Arch

    @ray.remote(num_cpus=1)
    class NullEvaluator:
        def ready(self) -> bool:
            return True

        def evaluate(self, batch):
            return [{"arch_key": Arch(a).key, "arch": a, "accuracy": 0.5, "latency_ms": 1.0,
                     "eval_s": 0.0} for a in batch]

    handle = NullEvaluator.remote()
    ray.get(handle.ready.remote())
    arrivals: list[int] = []
    with contextlib.redirect_stdout(log):
        t0 = time.perf_counter_ns()
        run_search(ReplaySearcher(space, archs), handle, budget=len(archs),
                   subnets_per_trial=spt, max_concurrent_trials=concurrent,
                   storage_path=storage, objectives=OBJECTIVES,
                   on_records=lambda batch: arrivals.append(time.perf_counter_ns()))
        t1 = time.perf_counter_ns()
    stop_evaluator_actor(handle)
    return {"what": "DIAGNOSTIC single run: run_search against a null evaluator actor "
                    f"(instant dummy records), N={len(archs)}, subnets_per_trial={spt}",
            "wall_s": (t1 - t0) / 1e9, "first_result_at_s": (arrivals[0] - t0) / 1e9,
            "trials": len(arrivals)}


def run_actor_direct(cfg, ckpt, space, archs) -> dict:
    """Diagnostic: a fresh evaluator actor, one ``evaluate.remote(all archs)``, no Tune."""
    import ray

    handle = create_evaluator_actor(cfg, ckpt, space)
    t0 = time.perf_counter_ns()
    records = ray.get(handle.evaluate.remote([a.to_dict() for a in archs]))
    wall = (time.perf_counter_ns() - t0) / 1e9
    stop_evaluator_actor(handle)
    return {"wall_s": wall, "records": records, "evaluate_calls": 1,
            "first_subnet_eval_s": records[0]["eval_s"]}


def check_same(raw: list[dict], tune: list[dict], archs) -> None:
    """Both paths evaluated exactly the N archs and agree on the (deterministic) accuracy."""
    want = [a.key for a in archs]
    assert [r["arch_key"] for r in raw] == want, "raw path evaluated other archs"
    got = {r["arch_key"]: r for r in tune}
    assert len(tune) == len(want) and set(got) == set(want), "tune path: wrong arch set"
    for r in raw:
        assert got[r["arch_key"]]["accuracy"] == r["accuracy"], "accuracy differs raw/tune"


def brief(run: dict, n: int) -> dict:
    eval_sum = sum(r["eval_s"] for r in run["records"])
    out = {k: v for k, v in run.items() if k != "records"}
    out.update(subnets=n, subnets_per_s=n / run["wall_s"], sum_eval_s=eval_sum,
               median_eval_s=statistics.median(r["eval_s"] for r in run["records"]),
               evaluator_busy_fraction=eval_sum / run["wall_s"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--n", type=int, default=96, help="fixed subnets per repetition")
    ap.add_argument("--spt1-n", type=int, default=48,
                    help="subnets in the subnets_per_trial=1 illustration (0: skip it)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    machine = machine_info(1)  # the Evaluator sets torch threads to evaluator.num_cpus = 1
    space, cfg = quickstart()
    archs = distinct_archs(space, args.n, args.seed)
    warm_archs = distinct_archs(space, args.n + 16, args.seed + 1)[:16]
    # One evaluator actor: search.max_concurrent_trials' default gives it 2 trials at once.
    spt, concurrent = cfg.search.subnets_per_trial, cfg.search.max_concurrent_trials or 2
    assert (spt, concurrent) == (16, 2), (spt, concurrent)
    threads = max(1, int(cfg.search.evaluator.num_cpus))

    pairs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="raynas-bench-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(args.seed)
        ckpt = save_checkpoint(tmp / "ckpt", space, create_supernet(space).state_dict(), 0)
        log = (tmp / "tune.log").open("w")
        with ray_session(num_cpus=2):  # once, outside every timed region
            t_start = time.perf_counter()
            warm = {"raw": brief(run_raw(cfg, ckpt, space, warm_archs), 16),
                    "tune": brief(run_tune(cfg, ckpt, space, warm_archs, tmp / "warm",
                                           spt, concurrent, log), 16)}
            print(f"warm-up: raw {warm['raw']['subnets_per_s']:.2f} subnets/s, "
                  f"tune {warm['tune']['subnets_per_s']:.2f} subnets/s (16 subnets each)",
                  flush=True)
            for i in range(args.pairs):
                raw = run_raw(cfg, ckpt, space, archs)
                tune = run_tune(cfg, ckpt, space, archs, tmp / f"tune{i}", spt, concurrent,
                                log)
                check_same(raw["records"], tune["records"], archs)
                p = {"raw": brief(raw, args.n), "tune": brief(tune, args.n)}
                p["ratio_tune_over_raw"] = p["tune"]["subnets_per_s"] / p["raw"]["subnets_per_s"]
                pairs.append(p)
                print(f"pair {i}: raw {p['raw']['subnets_per_s']:.2f} subnets/s "
                      f"(wall {raw['wall_s']:.1f} s), tune {p['tune']['subnets_per_s']:.2f} "
                      f"subnets/s (wall {tune['wall_s']:.1f} s, actor busy "
                      f"{p['tune']['evaluator_busy_fraction']:.0%}, {tune['trials']} trials, "
                      f"actor idle {tune['actor_idle_before_first_batch_s']:.1f} s before the "
                      f"first batch, first subnet {tune['first_subnet_eval_s']:.1f} s) "
                      f"-> ratio {p['ratio_tune_over_raw']:.3f}", flush=True)
            direct = run_actor_direct(cfg, ckpt, space, archs)
            check_same(direct["records"], direct["records"], archs)
            direct = {"what": "DIAGNOSTIC single run: fresh evaluator actor, one "
                              "evaluate.remote(all N archs), no Tune", **brief(direct, args.n)}
            print(f"diagnostic actor-direct (no Tune, single run): "
                  f"{direct['subnets_per_s']:.2f} subnets/s (wall {direct['wall_s']:.1f} s, "
                  f"first subnet {direct['first_subnet_eval_s']:.2f} s)", flush=True)
            null = run_tune_null(space, archs, tmp / "null", spt, concurrent, log)
            print(f"diagnostic Tune with a null evaluator (single run): wall "
                  f"{null['wall_s']:.1f} s for {null['trials']} trials, first result at "
                  f"{null['first_result_at_s']:.1f} s", flush=True)
            spt1 = None
            if args.spt1_n:
                sub = archs[: args.spt1_n]
                raw = run_raw(cfg, ckpt, space, sub)
                tune = run_tune(cfg, ckpt, space, sub, tmp / "spt1", 1, concurrent, log)
                check_same(raw["records"], tune["records"], sub)
                spt1 = {"what": "SINGLE-PAIR ILLUSTRATION: subnets_per_trial=1, "
                                f"max_concurrent_trials={concurrent}",
                        "raw": brief(raw, len(sub)), "tune": brief(tune, len(sub))}
                spt1["ratio_tune_over_raw"] = (spt1["tune"]["subnets_per_s"]
                                               / spt1["raw"]["subnets_per_s"])
                print(f"subnets_per_trial=1 (single pair, illustration): raw "
                      f"{spt1['raw']['subnets_per_s']:.2f}, tune "
                      f"{spt1['tune']['subnets_per_s']:.2f} subnets/s "
                      f"({tune['trials']} trials) -> ratio {spt1['ratio_tune_over_raw']:.3f}",
                      flush=True)
            total_s = time.perf_counter() - t_start
        log.close()

    ratios = [p["ratio_tune_over_raw"] for p in pairs]
    s = summarize(ratios)
    raw_rates = [p["raw"]["subnets_per_s"] for p in pairs]
    tune_rates = [p["tune"]["subnets_per_s"] for p in pairs]
    path = write_json(NAME if args.n == 96 else f"{NAME}_n{args.n}", {
        "machine": {**machine, "torch_threads": threads},
        "setup": {"space": space.name, "n_subnets": args.n, "seed": args.seed,
                  "subnets_per_trial": spt, "max_concurrent_trials": concurrent,
                  "ray_num_cpus": 2, "evaluator": cfg.search.evaluator.model_dump(),
                  "latency": cfg.latency.model_dump(),
                  "evaluator_threads": threads, "checkpoint": "untrained (create_supernet, "
                  f"torch.manual_seed({args.seed}))",
                  "order": "warm-up raw, tune; then raw, tune per pair"},
        "warmup": warm, "pairs": pairs, "summary": s,
        "raw_subnets_per_s": summarize(raw_rates), "tune_subnets_per_s": summarize(tune_rates),
        "actor_direct_diagnostic": direct, "tune_null_evaluator_diagnostic": null,
        "spt1_single_pair": spt1, "goal_min": GOAL, "met": s["median"] >= GOAL,
        "loadavg_at_end": list(os.getloadavg()),
        "total_s": total_s,
    })
    print(f"raw {fmt(summarize(raw_rates), ' subnets/s')}; tune "
          f"{fmt(summarize(tune_rates), ' subnets/s')}")
    print(f"wrote {path}")
    extra = (f"; spt=1 single pair {spt1['ratio_tune_over_raw']:.2f}x" if spt1 else "")
    print(f"search_throughput tune/raw (spt={spt}, {concurrent} concurrent, N={args.n}, "
          f"{len(pairs)} pairs): {fmt(s)} (goal >= {GOAL:.2f}: "
          f"{'met' if s['median'] >= GOAL else 'MISSED'}){extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
