"""``raynas tune``'s schedulers against their baselines, on ``jobs/tune_quickstart.yaml``.

Two comparisons, each over seeds 0..K-1 (the seed sets the searcher's draws, the data split
and the initial weights), every study a ``raynas tune`` subprocess as a user runs it:

1. ASHA vs FIFO (no early stopping), same searcher (TPE), same trial count. Figures per
   seed: the best completed trial's probe metric, the wall time, the epochs trained
   (compute), and FIFO's best at ASHA's wall time (its best trial among those that had
   finished when the ASHA study ended): equal wall time, side by side.
2. PBT vs random search, same population and epochs (equal compute: trials x epochs, PBT's
   restarts cost wall time, not epochs): the best completed trial's probe metric and wall.

Quality figures: median [min-max] over the seeds, never the best seed.

    python benchmarks/hpo_schedulers.py [--seeds 3] [--trials 8] [--epochs 6]
    python benchmarks/hpo_schedulers.py --kinds pbt,random --side-by-side 4

``--side-by-side N`` trains N trials at once (``hpo.max_concurrent_trials``) on an embedded
Ray of N CPUs (``ray.num_cpus``: a trial's one Train worker asks for one), so a population of
N trains as population-based training wants it, whatever the machine's core count; the
results go to ``hpo_schedulers_side_by_side.json``.
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

NAME = "hpo_schedulers"
JOB = ROOT / "jobs" / "tune_quickstart.yaml"
METRIC = "val_accuracy_probes"

STUDIES = {
    "asha": ["hpo.searcher=optuna_tpe",
             "hpo.scheduler={name: asha, options: {grace_period: 1, reduction_factor: 2}}"],
    "fifo": ["hpo.searcher=optuna_tpe", "hpo.scheduler=fifo"],
    "pbt": ["hpo.searcher=random", "hpo.scheduler=pbt"],
    "random": ["hpo.searcher=random", "hpo.scheduler=fifo"],
}


def run_study(kind: str, seed: int, trials: int, epochs: int, timeout_s: float,
              extra: tuple[str, ...] = ()) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"raynas-hpo-{kind}-s{seed}-"))
    out = tmp / "out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlruns.db"}
    cmd = [*raynas_exe(), "tune", str(JOB), "--output-dir", str(out), f"seed={seed}",
           f"train.epochs={epochs}", f"hpo.trials={trials}", *STUDIES[kind], *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"{kind} seed {seed}: exited {proc.returncode}\n{proc.stderr[-3000:]}",
              file=sys.stderr)
        return {"kind": kind, "seed": seed, "rc": proc.returncode, "wall_s": wall}
    study = json.loads((out / "tune.json").read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    done = [t for t in study["trials"] if t["status"] == "completed"]
    return {
        "kind": kind, "seed": seed, "rc": 0, "wall_s": wall, "study_wall_s": study["wall_s"],
        "best": study["best"][METRIC], "epochs_trained": study["epochs_trained"],
        "completed": len(done),
        "stopped": sum(t["status"] == "stopped" for t in study["trials"]),
        "exploits": sum(len(t["restored_at_epochs"]) for t in study["trials"]),
        # (when it finished, its final metric) of each completed trial
        "finished": sorted((t["ended_s"], t[METRIC]) for t in done),
    }


def best_by(finished: list, seconds: float) -> float | None:
    values = [m for s, m in finished if s is not None and s <= seconds]
    return max(values) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=8, help="trials of ASHA / FIFO studies")
    ap.add_argument("--population", type=int, default=4, help="trials of PBT / random")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--kinds", default=",".join(STUDIES), help="studies to run, of "
                    f"{', '.join(STUDIES)}")
    ap.add_argument("--side-by-side", type=int, default=None, metavar="N",
                    help="N trials at once on an embedded Ray of N CPUs")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",")]
    unknown = [k for k in kinds if k not in STUDIES]
    if unknown:
        ap.error(f"--kinds: unknown {unknown[0]!r}; choose among {', '.join(STUDIES)}")
    n_side = args.side_by_side
    extra = (f"hpo.max_concurrent_trials={n_side}", f"ray.num_cpus={n_side}") if n_side else ()
    runs = []
    for seed in range(args.seeds):
        for kind in kinds:
            n = args.trials if kind in ("asha", "fifo") else args.population
            r = run_study(kind, seed, n, args.epochs, args.timeout, extra)
            print(json.dumps({k: v for k, v in r.items() if k != "finished"}), flush=True)
            runs.append(r)
    ok = {(r["kind"], r["seed"]): r for r in runs if r["rc"] == 0}
    seeds = [s for s in range(args.seeds) if all((k, s) in ok for k in kinds)]
    summary: dict = {}
    for kind in kinds:
        rs = [ok[(kind, s)] for s in seeds]
        summary[kind] = {f: summarize([r[f] for r in rs])
                         for f in ("best", "study_wall_s", "epochs_trained")} if rs else {}
    if {"asha", "fifo"} <= set(kinds):
        diffs = []
        for s in seeds:  # FIFO's best among trials finished by the time ASHA's study ended
            at = best_by(ok[("fifo", s)]["finished"], ok[("asha", s)]["study_wall_s"])
            diffs.append(None if at is None else ok[("asha", s)]["best"] - at)
        summary["asha_minus_fifo_at_asha_wall"] = diffs
        summary["asha_minus_fifo_final"] = [ok[("asha", s)]["best"] - ok[("fifo", s)]["best"]
                                            for s in seeds]
    if {"pbt", "random"} <= set(kinds):
        summary["pbt_minus_random"] = [ok[("pbt", s)]["best"] - ok[("random", s)]["best"]
                                       for s in seeds]
    write_json(NAME + ("_side_by_side" if n_side else ""),
               {"args": vars(args), "machine": machine_info(), "runs": runs,
                "summary": summary})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
