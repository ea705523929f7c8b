"""Tiny family jobs end to end: wall time, and how far apart their subnets score.

For each job (``jobs/resnet20_pool_tiny.yaml``, ``jobs/vit_tiny.yaml``,
``jobs/conformer_tiny.yaml``) and seed k, from a fresh temporary directory:

    MLFLOW_TRACKING_URI=sqlite:///<tmp>/mlruns.db \\
        raynas run jobs/<job>.yaml --output-dir <tmp>/out seed=<k>

timed around the subprocess (wall time; goal < 300 s: "a few minutes"). Then the trained
checkpoint is loaded into raynas' ``Evaluator`` (the search's own scoring: BN recalibrated per
subnet) and the space's smallest and largest subnet are scored on the test split, which the
search never optimises. The figure is the spread: how much better the largest scores than the
smallest on the job's metric. Vision jobs: test accuracy, largest minus smallest (goal >=
0.10: 10 accuracy points, enough for a search's ranking to mean something). Speech
(``conformer_tiny``): test word error rate, smallest minus largest (goal >= 0.03: 3 WER
points; the smallest decodes in chunks of 2 encoder frames with 1 earlier chunk, the largest
the whole utterance). Also reported: every subnet the search scored
(``evaluations.parquet``): the range of their test scores.

Figures are median [min-max] over the seeds, never the best seed.

    python benchmarks/subnet_spread.py [--jobs resnet20_pool_tiny vit_tiny conformer_tiny]
        [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_info, raynas_exe, summarize, write_json

NAME = "subnet_spread"
# job -> (metric, its goal, spread goal: how much better the largest must score)
JOBS = {"resnet20_pool_tiny": ("accuracy", "max", 0.10), "vit_tiny": ("accuracy", "max", 0.10),
        "conformer_tiny": ("wer", "min", 0.03)}
WALL_GOAL_S = 300.0


def score_extremes(out: Path, metric: str, goal: str) -> dict:
    """Test ``metric`` of the space's smallest and largest subnet, from the job's
    checkpoint."""
    import pyarrow.parquet as pq
    import yaml

    from raynas.evaluation.evaluator import Evaluator

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    evaluator = Evaluator(str(out / "checkpoint"), cfg["data"], cfg["latency"],
                          cfg["search"].get("evaluator"), task=cfg.get("task"),
                          seed=cfg.get("seed", 0))
    space = evaluator.space
    small, large = evaluator.evaluate([space.smallest(), space.largest()])
    scored = pq.read_table(out / "evaluations.parquet").to_pylist()
    key = f"test_{metric}"
    tests = [float(r[key]) for r in scored]
    better = large[key] - small[key] if goal == "max" else small[key] - large[key]
    return {"metric": key, "smallest": small[key], "largest": large[key], "spread": better,
            "smallest_flops": small["flops"], "largest_flops": large["flops"],
            "searched": len(scored), "searched_test_min": min(tests),
            "searched_test_max": max(tests)}


def run_once(job: str, seed: int, timeout_s: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"raynas-{job}-s{seed}-"))
    out = tmp / "out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlruns.db"}
    cmd = [*raynas_exe(), "run", str(ROOT / "jobs" / f"{job}.yaml"), "--output-dir",
           str(out), f"seed={seed}"]
    log = tmp / "run.log"
    with log.open("w") as fh:
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=tmp, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        wall = time.perf_counter() - t0
    result = {"job": job, "seed": seed, "rc": rc, "wall_s": wall,
              "loadavg": list(os.getloadavg())}
    if rc != 0:
        result["log_tail"] = log.read_text()[-3000:]
        print(f"{job} seed {seed}: exited {rc}; log tail:\n{result['log_tail']}",
              file=sys.stderr)
        return result
    result.update(score_extremes(out, *JOBS[job][:2]))
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..K-1 (default 3)")
    ap.add_argument("--timeout", type=float, default=900, help="per-run limit in seconds")
    args = ap.parse_args()
    runs, verdicts = [], {}
    for job in args.jobs:
        for seed in range(args.seeds):
            r = run_once(job, seed, args.timeout)
            runs.append(r)
            if r["rc"] == 0:
                print(f"{job} seed {seed}: wall {r['wall_s']:.1f} s; {r['metric']} smallest "
                      f"{r['smallest']:.3f} largest "
                      f"{r['largest']:.3f} (spread {r['spread']:+.3f}); "
                      f"{r['searched']} searched subnets {r['searched_test_min']:.3f}-"
                      f"{r['searched_test_max']:.3f}", flush=True)
        ok = [r for r in runs if r["job"] == job and r["rc"] == 0]
        if not ok:
            verdicts[job] = {"failed": True}
            continue
        spread, wall = (summarize([r[k] for r in ok]) for k in ("spread", "wall_s"))
        goal = JOBS[job][2]
        verdicts[job] = {
            "metric": ok[0]["metric"], "spread": spread, "spread_goal": f">= {goal}",
            "spread_met": spread["median"] >= goal,
            "wall_s": wall, "wall_goal": f"< {WALL_GOAL_S}",
            "wall_met": wall["median"] < WALL_GOAL_S,
            "smallest": summarize([r["smallest"] for r in ok]),
            "largest": summarize([r["largest"] for r in ok]),
        }
    name = NAME if list(args.jobs) == list(JOBS) else "_".join([NAME, *args.jobs])
    path = write_json(name, {"machine": machine_info(), "seeds": args.seeds, "runs": runs,
                             "summary": verdicts})
    print(f"wrote {path}")
    for job, v in verdicts.items():
        if v.get("failed"):
            print(f"{job}: all runs FAILED")
            continue
        s, w = v["spread"], v["wall_s"]
        print(f"{job} (seeds={args.seeds}; median [min-max]): {v['metric']} smallest "
              f"{v['smallest']['median']:.3f}, largest {v['largest']['median']:.3f}; spread "
              f"{s['median']:+.3f} [{s['min']:+.3f}-{s['max']:+.3f}] (goal >= "
              f"{JOBS[job][2]}: {'met' if v['spread_met'] else 'MISSED'}); wall "
              f"{w['median']:.1f} s [{w['min']:.1f}-{w['max']:.1f}] (goal < {WALL_GOAL_S:.0f} "
              f"s: {'met' if v['wall_met'] else 'MISSED'})")
    return 0 if all(not v.get("failed") for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
