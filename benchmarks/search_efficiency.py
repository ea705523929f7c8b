"""Search efficiency against known truth: every searcher replayed on an exhaustively
evaluated space.

Truth: all 2,592 subnets of ``digits_cnn_small`` evaluated once through the trained
quickstart supernet (validation accuracy, measured latency on this machine): see
``_truth.py``; the table is cached in ``results/digits_cnn_small_truth.parquet``.

Each searcher (``nevergrad:NAME`` is nevergrad with optimizer NAME; plain ``nevergrad`` its
default, NGOpt) is replayed through ``raynas.search.replay`` (the same ``BatchSearcher`` a live
search uses, 16 archs per batch) for 5 seeds up to 500 distinct subnets; the figure is the
hypervolume of its first N subnets over the true front's (accuracy max, latency min), for N
in 50/100/200/300/500: median [min-max] over the seeds. The reference point is raynas's one
rule, ``raynas.search.pareto.default_reference`` over the whole table (the true front's worst
value of each objective, pushed out by 10% of the front's range), as a live search and
``raynas replay`` place it. Goal: the best searcher reaches >= 0.98 at 300 and beats random at
every budget (set when the point lay behind the table's worst subnet, where random search
itself reached 0.97 at 300).

    python benchmarks/search_efficiency.py [--seeds 5] [--searchers a,b] [--rebuild-truth]
"""

from __future__ import annotations

import argparse
import time

from _common import OBJECTIVES, fmt, machine_info, summarize, write_json
from _truth import TRUTH, load_truth

from raynas.search.replay import load_table, replay
from raynas.space.registry import load_space

NAME = "search_efficiency"
BUDGETS = [50, 100, 200, 300, 500]
SEARCHERS = ["optuna_nsga2", "optuna_tpe", "nevergrad", "nevergrad:DE",
             "nevergrad:DiscreteOnePlusOne", "hat_evolution", "surrogate", "random"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--searchers", default=",".join(SEARCHERS))
    ap.add_argument("--checkpoint", help="trained digits_cnn checkpoint for a new truth table")
    ap.add_argument("--rebuild-truth", action="store_true")
    args = ap.parse_args()

    load_truth(args.checkpoint, rebuild=args.rebuild_truth)
    space = load_space("digits_cnn_small")
    table = load_table(TRUTH, space, OBJECTIVES)
    front = table.true_front()
    print(f"[bench] truth: {len(table.records)} subnets, true front {len(front)} points",
          flush=True)
    results = {}
    for name in args.searchers.split(","):
        searcher, _, optimizer = name.partition(":")  # nevergrad:DE -> its optimizer option
        t0 = time.perf_counter()
        report = replay(table, searcher, BUDGETS, range(args.seeds),
                        options={"optimizer": optimizer} if optimizer else None)
        results[name] = {"per_budget": {b: summarize(report.ratios[b]) for b in BUDGETS},
                         **report.to_dict()}
        print(f"[bench] {name:<14} " + "  ".join(
            f"N={b}: {fmt(summarize(report.ratios[b]), '')}" for b in BUDGETS)
            + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    med = {n: {b: r["per_budget"][b]["median"] for b in BUDGETS} for n, r in results.items()}
    best = max((n for n in med if n != "random"), key=lambda n: med[n][300])
    beats = all(med[best][b] > med["random"][b] for b in BUDGETS) if "random" in med else None
    write_json(NAME, {"machine": machine_info(), "truth": str(TRUTH.name),
                      "subnets": len(table.records), "true_front": len(front),
                      "budgets": BUDGETS, "seeds": args.seeds, "results": results,
                      "best_searcher": best, "best_at_300": med[best][300],
                      "best_beats_random_at_every_budget": beats,
                      "goal": "best >= 0.98 at 300 and > random at every budget"})
    print(f"RESULT best searcher {best}: HV ratio {med[best][300]:.3f} at 300 (goal >= 0.98), "
          f"beats random at every budget: {beats}")


if __name__ == "__main__":
    main()
