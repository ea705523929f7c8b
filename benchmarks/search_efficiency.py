"""Search efficiency against known truth: every searcher replayed on an exhaustively
evaluated space.

Truth (``--table``, see ``_truth.py``; cached in ``results/<table>_truth.parquet``):

- ``digits_cnn_small``: all 2,592 subnets evaluated once through the trained quickstart
  supernet (validation accuracy, latency measured on this machine);
- ``vit_tiny_small``: all 1,568 subnets of a corner of ``vit_tiny`` through
  ``jobs/vit_tiny.yaml``'s supernet (validation accuracy, FLOPs). No searcher's defaults
  were chosen on it: it is the held-out table.

Each searcher (``nevergrad:NAME`` is nevergrad with optimizer NAME; plain ``nevergrad`` its
default, NGOpt) is replayed through ``raynas.search.replay`` (the same ``BatchSearcher`` a live
search uses, 16 archs per batch) for 20 seeds up to 500 distinct subnets; the figure is the
hypervolume of its first N subnets over the true front's, for N in 50/100/200/300/500:
median [min-max] over the seeds. The reference point is raynas's one rule,
``raynas.search.pareto.default_reference`` over the whole table (the true front's worst
value of each objective, pushed out by 10% of the front's range), as a live search and
``raynas replay`` place it. Goal: the best searcher reaches >= 0.98 at 300 and beats random at
every budget (set when the point lay behind the table's worst subnet, where random search
itself reached 0.97 at 300). The ``surrogate`` searcher's goal: above every other searcher
at 100, 200 and 500 subnets.

    python benchmarks/search_efficiency.py [--table NAME] [--seeds 20] [--searchers a,b]
        [--checkpoint PATH] [--rebuild-truth]
"""

from __future__ import annotations

import argparse
import time

from _common import fmt, machine_info, summarize, write_json
from _truth import TABLES, load_truth

from raynas.search.replay import load_table, replay
from raynas.space.registry import load_space

NAME = "search_efficiency"
BUDGETS = [50, 100, 200, 300, 500]
SEARCHERS = ["optuna_nsga2", "optuna_tpe", "nevergrad", "nevergrad:DE",
             "nevergrad:DiscreteOnePlusOne", "hat_evolution", "surrogate", "random"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", choices=sorted(TABLES), default="digits_cnn_small")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--searchers", default=",".join(SEARCHERS))
    ap.add_argument("--checkpoint", help="trained checkpoint of the table's job, for a new "
                    "truth table")
    ap.add_argument("--rebuild-truth", action="store_true")
    args = ap.parse_args()

    truth = TABLES[args.table]
    load_truth(truth, args.checkpoint, rebuild=args.rebuild_truth)
    space = load_space(truth.name)
    table = load_table(truth.path, space, truth.objectives)
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
    others = [n for n in med if n not in ("surrogate", "random")]
    surrogate = {b: med["surrogate"][b] > max(med[n][b] for n in others)
                 for b in (100, 200, 500)} if "surrogate" in med and others else None
    name = NAME if truth.name == "digits_cnn_small" else f"{NAME}_{truth.name}"
    write_json(name, {"machine": machine_info(), "truth": truth.path.name,
                      "objectives": [[o.name, o.direction] for o in truth.objectives],
                      "subnets": len(table.records), "true_front": len(front),
                      "budgets": BUDGETS, "seeds": args.seeds, "results": results,
                      "best_searcher": best, "best_at_300": med[best][300],
                      "best_beats_random_at_every_budget": beats,
                      "goal": "best >= 0.98 at 300 and > random at every budget",
                      "surrogate_above_every_other": surrogate})
    print(f"RESULT best searcher {best}: HV ratio {med[best][300]:.3f} at 300 (goal >= 0.98), "
          f"beats random at every budget: {beats}")
    if surrogate is not None:
        print("RESULT surrogate above every other searcher at N=100/200/500: "
              + ", ".join(f"{b}: {ok}" for b, ok in surrogate.items()))


if __name__ == "__main__":
    main()
