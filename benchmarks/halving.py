"""Multi-fidelity search: the hypervolume a search reaches per second of evaluation, with and
without ``search.evaluator.halving``.

Per job (``vit_tiny``: 2,876 validation samples; ``quickstart``: 450), the job's supernet is
trained once (``raynas train``, as a user runs it). Then, per seed, the same searcher runs
twice in one process, in alternating order: against an evaluator that scores every subnet in
full, and against one with halving (``start`` 0.25, ``eta`` 2, ``z`` 2). Both
are the evaluator a search's actor runs (``raynas.evaluation.Evaluator``: BN recalibration,
validation and test splits, measured latency, FLOPs), driven ask / tell for ``--budget``
distinct subnets, with the objectives accuracy (max) and FLOPs (min): a front that timing
noise cannot move, while every subnet still pays for its latency measurement.

Reported per job and mode, median [min-max] over the seeds:

- ``eval_s``: the evaluator's seconds over the whole budget (the sum of the records'
  ``eval_s``), and the paired ratio halving / full;
- the hypervolume ratio of the front of full-fidelity records against the front of every
  subnet scored in full in any run of that job (one reference point for all:
  ``default_reference`` over those records), after the whole budget, and at fixed shares
  (1/4, 1/2, 1) of the full runs' median ``eval_s``: the quality bought per unit of
  evaluation compute;
- ``stopped``: the share of subnets halving stopped early; ``validation_share``: the mean
  fidelity.

    python benchmarks/halving.py [--jobs vit_tiny quickstart] [--seeds 5] [--budget 200]
        [--searcher optuna_nsga2] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_info, raynas_exe, summarize, write_json

from raynas.config import load_config
from raynas.evaluation import Evaluator
from raynas.evaluation.actor import evaluator_args
from raynas.search.pareto import default_reference, hypervolume, pareto_front
from raynas.search.registry import create_searcher
from raynas.search.searchers import Objective
from raynas.space.registry import load_space

NAME = "halving"
OBJECTIVES = (Objective("accuracy", "max"), Objective("flops", "min"))
HALVING = {"start": 0.25, "eta": 2.0, "z": 2.0}
SHARES = (0.25, 0.5, 1.0)


def checkpoint(job: str, work: Path) -> Path:
    out = work / job
    ckpt = out / "checkpoint"
    if not (ckpt / "supernet.pt").is_file():
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns.db'}"}
        subprocess.run([*raynas_exe(), "train", str(ROOT / "jobs" / f"{job}.yaml"),
                        "--output-dir", str(out)], cwd=work, env=env, check=True)
    return ckpt


def search(job: str, ckpt: Path, seed: int, halving: bool, budget: int, searcher: str
           ) -> list[dict]:
    """One search of ``budget`` distinct subnets; its records in evaluation order."""
    cfg = load_config(ROOT / "jobs" / f"{job}.yaml", [f"seed={seed}"])
    space = load_space(cfg.space)
    args = evaluator_args(cfg, ckpt, space)
    if halving:
        args["evaluator"] = {**args["evaluator"], "halving": HALVING}
    ev = Evaluator(**args, objectives=[(o.name, o.direction) for o in OBJECTIVES])
    s = create_searcher(searcher, space=space, objectives=OBJECTIVES, constraints=(),
                        seed=seed, population_size=cfg.search.population_size)
    records: list[dict] = []
    seen: set[str] = set()
    for _ in range(budget * 50):
        if len(records) == budget:
            break
        token, arch = s.ask()
        if arch.key in seen:  # a repeat: rejected, as a live search does
            s.tell(token, None)
            continue
        seen.add(arch.key)
        (record,) = ev.evaluate([arch])
        records.append(record)
        s.tell(token, record)
    return records


def curve_at(records: list[dict], seconds: float, reference, best: float) -> float:
    """The hypervolume ratio of the records evaluated within ``seconds`` of evaluation."""
    t, done = 0.0, []
    for r in records:
        t += r["eval_s"]
        if t > seconds:
            break
        done.append(r)
    return hypervolume(done, OBJECTIVES, reference) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", nargs="+", default=["vit_tiny", "quickstart"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=200, help="distinct subnets per search")
    ap.add_argument("--searcher", default="optuna_nsga2")
    ap.add_argument("--work", type=Path, help="work directory (trained checkpoints are reused)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="raynas-halving-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for job in args.jobs:
        ckpt = checkpoint(job, work)
        runs: dict[str, list[list[dict]]] = {"full": [], "halving": []}
        for seed in range(args.seeds):
            order = ("full", "halving") if seed % 2 == 0 else ("halving", "full")
            for mode in order:
                t0 = time.perf_counter()
                recs = search(job, ckpt, seed, mode == "halving", args.budget, args.searcher)
                runs[mode].append(recs)
                print(f"[bench] {job} seed {seed} {mode}: {len(recs)} subnets, eval "
                      f"{sum(r['eval_s'] for r in recs):.1f} s "
                      f"(wall {time.perf_counter() - t0:.0f} s)", flush=True)
        every = [r for mode in runs.values() for recs in mode for r in recs]
        reference = default_reference(OBJECTIVES, every)
        best = hypervolume(pareto_front(every, OBJECTIVES), OBJECTIVES, reference)
        full_s = statistics.median(sum(r["eval_s"] for r in recs) for recs in runs["full"])
        per_mode = {}
        for mode, all_recs in runs.items():
            per_mode[mode] = {
                "eval_s": summarize([sum(r["eval_s"] for r in recs) for recs in all_recs]),
                "hv_ratio_at_budget": summarize(
                    [hypervolume(recs, OBJECTIVES, reference) / best for recs in all_recs]),
                **{f"hv_ratio_at_{share:g}_of_full_eval_s": summarize(
                    [curve_at(recs, share * full_s, reference, best) for recs in all_recs])
                   for share in SHARES},
                "stopped": summarize([sum(r.get("fidelity", 1) < 1 for r in recs) / len(recs)
                                      for recs in all_recs]),
                "validation_share": summarize([sum(r.get("fidelity", 1) for r in recs)
                                               / len(recs) for recs in all_recs]),
            }
        per_mode["eval_s_halving_over_full"] = summarize(
            [sum(r["eval_s"] for r in h) / sum(r["eval_s"] for r in f)
             for h, f in zip(runs["halving"], runs["full"])])
        results[job] = {"true_front": len(pareto_front(every, OBJECTIVES)),
                        "reference": reference, **per_mode}
        for mode in ("full", "halving"):
            m = per_mode[mode]
            print(f"{job:12s} {mode:8s} eval {m['eval_s']['median']:7.1f} s  HV at budget "
                  f"{m['hv_ratio_at_budget']['median']:.3f}  at 1/4 of full's eval time "
                  f"{m['hv_ratio_at_0.25_of_full_eval_s']['median']:.3f}  at 1/2 "
                  f"{m['hv_ratio_at_0.5_of_full_eval_s']['median']:.3f}  stopped "
                  f"{m['stopped']['median']:.2f}", flush=True)
        print(f"{job:12s} eval_s halving / full: "
              f"{per_mode['eval_s_halving_over_full']['median']:.3f}", flush=True)
    path = write_json(NAME, {"machine": machine_info(), "jobs": args.jobs, "seeds": args.seeds,
                             "budget": args.budget, "searcher": args.searcher,
                             "halving": HALVING, "results": results, "work_dir": str(work)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
