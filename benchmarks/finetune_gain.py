"""What ``raynas finetune`` adds to a subnet's inherited weights, on ``jobs/quickstart.yaml``.

Per seed (the seed sets the data split, the supernet's training and the searcher's draws):
``raynas run`` trains the quickstart supernet, searches it and exports its best subnet; then
``raynas finetune --pick best`` fine-tunes that subnet twice with the default study (4 trials
of 3 epochs over the learning rate): on the labels alone, and half distilled from the
supernet's largest subnet (``finetune.distill=0.5``). Then ``--search-arch`` draws 12
subnets from the space's dims with their learning rates, within the FLOPs of that best
subnet (``--budget flops<=...``), and fine-tunes those that fit: does drawing the subnet in
the study beat fine-tuning the search's pick? Each is a subprocess as a user runs it.

Figures: the subnet's test accuracy with its inherited weights and after each fine-tuning,
and the gain, as median [min-max] over the seeds; the study's wall time; for
``--search-arch``, the exported subnet's test accuracy and how many draws broke the budget.

    python benchmarks/finetune_gain.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_info, raynas_exe, summarize, write_json

NAME = "finetune_gain"
JOB = ROOT / "jobs" / "quickstart.yaml"
# Draws within the budget are few (the search's pick is among the space's smallest subnets):
# 4 draws found none fitting on seed 0; the study draws 12, training those that fit.
SEARCH_TRIALS = 12
VARIANTS = {"labels": ["finetune.distill=0"], "distill_0.5": ["finetune.distill=0.5"]}


def _raynas(args: list[str], cwd: Path, env: dict, timeout: float,
            ok: tuple[int, ...] = (0,)) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([*raynas_exe(), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode not in ok:
        raise RuntimeError(f"raynas {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def run_seed(seed: int, timeout: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"raynas-finetune-s{seed}-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlruns.db"}
    run = tmp / "run"
    row: dict = {"seed": seed}
    row["run_wall_s"] = _raynas(["run", str(JOB), f"seed={seed}", "--output-dir", str(run)],
                                tmp, env, timeout)
    for name, overrides in VARIANTS.items():
        out = tmp / name
        wall = _raynas(["finetune", str(JOB), f"seed={seed}", "--checkpoint",
                        str(run / "checkpoint"), "--pareto", str(run / "pareto.parquet"),
                        "--pick", "best", "--output-dir", str(out), *overrides],
                       tmp, env, timeout)
        s = json.loads((out / "finetune.json").read_text())
        row["arch_key"] = s["arch_key"]
        row["before"] = s["before"]["test_accuracy"]
        row[name] = {"after": s["after"]["test_accuracy"],
                     "gain": s["after"]["test_accuracy"] - s["before"]["test_accuracy"],
                     "val_before": s["before"]["val_accuracy"],
                     "val_after": s["after"]["val_accuracy"],
                     "best_config": s["best"]["config"], "wall_s": wall}
        row["flops"] = s["flops"]
    out = tmp / "search_arch"
    wall = _raynas(["finetune", str(JOB), f"seed={seed}", "--checkpoint",
                    str(run / "checkpoint"), "--search-arch", "--budget",
                    f"flops<={row['flops']}", f"finetune.trials={SEARCH_TRIALS}",
                    "--output-dir", str(out)], tmp, env, timeout, ok=(0, 2))
    if not (out / "finetune.json").is_file():  # exit 2: no draw fitted the budget
        row["search_arch"] = {"after": None, "vs_labels": None, "infeasible": SEARCH_TRIALS,
                              "trials": SEARCH_TRIALS, "wall_s": wall}
        shutil.rmtree(tmp, ignore_errors=True)
        return row
    s = json.loads((out / "finetune.json").read_text())
    row["search_arch"] = {"after": s["after"]["test_accuracy"],
                          "vs_labels": s["after"]["test_accuracy"] - row["labels"]["after"],
                          "before": s["before"]["test_accuracy"], "flops": s["flops"],
                          "infeasible": s["infeasible"], "trials": len(s["trials"]),
                          "arch_key": s["arch_key"], "wall_s": wall}
    shutil.rmtree(tmp, ignore_errors=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args()
    rows = []
    for seed in range(args.seeds):
        rows.append(run_seed(seed, args.timeout))
        print(json.dumps(rows[-1]), flush=True)
    summary = {"before": summarize([r["before"] for r in rows])}
    for name in VARIANTS:
        summary[name] = {f: summarize([r[name][f] for r in rows])
                         for f in ("after", "gain", "wall_s")}
    fitted = [r["search_arch"] for r in rows if r["search_arch"]["after"] is not None]
    summary["search_arch"] = {f: summarize([r[f] for r in fitted]) if fitted else None
                              for f in ("after", "vs_labels", "infeasible", "wall_s")}
    summary["search_arch"]["nothing_fitted"] = sum(r["search_arch"]["after"] is None
                                                   for r in rows)
    write_json(NAME, {"args": vars(args), "machine": machine_info(), "runs": rows,
                      "summary": summary})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
