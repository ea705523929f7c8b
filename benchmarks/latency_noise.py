"""Latency you can trust: does a subnet's second timing land within 10% of its first, on a
quiet machine and while a search runs beside the timing?

Two timing protocols, side by side on the same subnets (batch 1, 1 thread, 20 ms each):

- A, one window: ``torch.utils.benchmark.Timer.blocked_autorange(min_run_time=0.02)``, the
  median of its blocks (raynas's protocol before ``latency.windows``);
- B, raynas's ``MeasuredLatency`` as a job sets it by default: 5 windows of 4 ms, blocks of
  about 0.2 ms, the fastest block (``latency.estimator: min``);
- C, the same with 5x the time: ``latency.min_run_time_s=0.1 latency.windows=10`` (what
  the confirmation pass could afford for a front's few subnets).

For each seed, N distinct random ``digits_cnn`` subnets are timed in two passes (A then B for
each subnet, then the second pass in the same order), so the protocols meet the same load.
Reported per protocol: the share of subnets whose second timing is within 10% of the first
(goal for B: >= 0.95 while a search runs), the median and 90th percentile deviation; median
[min-max] over the seeds. The load: none ("quiet"), then a ``raynas search`` of
``jobs/smoke.yaml`` (trained first, 2 epochs) searching beside the timing in a subprocess on
an embedded Ray, started again whenever it finishes ("search"); stopped when the timing
ends.

    python benchmarks/latency_noise.py [--n 100] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, machine_info, raynas_exe, write_json
from torch.utils.benchmark import Timer

from raynas.latency.measure import MeasuredLatency
from raynas.pipeline.latency import distinct_archs
from raynas.space.registry import load_space
from raynas.supernets import build_static

NAME = "latency_noise"
SHAPE = (1, 8, 8)


def single_window(model, x) -> float:
    timer = Timer("m(x)", globals={"m": model, "x": x}, num_threads=1)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        return timer.blocked_autorange(min_run_time=0.02).median * 1e3


def figures(first: list[float], second: list[float]) -> dict[str, float]:
    dev = [abs(b / a - 1.0) for a, b in zip(first, second)]
    return {"agreement": sum(d <= 0.10 for d in dev) / len(dev),
            "median_deviation": statistics.median(dev),
            "p90_deviation": statistics.quantiles(dev, n=10)[8]}


def one_seed(seed: int, n: int) -> dict[str, dict[str, float]]:
    space = load_space("digits_cnn")
    archs = distinct_archs(space, n, seed)
    models = [build_static(space, a).eval() for a in archs]
    x = torch.randn(1, *SHAPE)
    meters = {"A": lambda m: single_window(m, x),
              "B": lambda m: MeasuredLatency().measure_ms(m, SHAPE),
              "C": lambda m: MeasuredLatency(min_run_time_s=0.1, windows=10).measure_ms(
                  m, SHAPE)}
    times = {k: ([], []) for k in meters}
    cost = {k: 0.0 for k in meters}
    for p in range(2):
        for m in models:
            for k, fn in meters.items():
                t0 = time.perf_counter()
                times[k][p].append(fn(m))
                cost[k] += time.perf_counter() - t0
    out = {k: figures(*v) for k, v in times.items()}
    out["seconds_per_subnet"] = {k: v / (2 * n) for k, v in cost.items()}
    return out


def summary(rows: list[dict], proto: str, key: str) -> dict[str, float]:
    values = [r[proto][key] for r in rows]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def start_search(work: Path) -> subprocess.Popen:
    """Train the smoke job, then start a long search of it in the background."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns.db'}"}
    job = str(ROOT / "jobs" / "smoke.yaml")
    subprocess.run([*raynas_exe(), "train", job, "--output-dir", str(work / "out")],
                   cwd=work, env=env, check=True, capture_output=True)
    search = " ".join([*raynas_exe(), "search", job, "--checkpoint",
                       str(work / "out" / "checkpoint"), "--output-dir", str(work / "search"),
                       "search.budget=100000", "search.searcher=random"])
    proc = subprocess.Popen(["bash", "-c", f"while true; do {search}; done"], cwd=work,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(30)  # Ray, the evaluator and the first trials are up
    if proc.poll() is not None:
        raise SystemExit(f"the background search exited early ({proc.returncode})")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for load in ("quiet", "search"):
            proc = start_search(Path(tmp)) if load == "search" else None
            try:
                loadavg = os.getloadavg()[0]
                rows = [one_seed(s, args.n) for s in range(args.seeds)]
                loadavg = (loadavg + os.getloadavg()[0]) / 2
            finally:
                if proc is not None:  # Ctrl-C to the search we started: it stops its Ray
                    os.killpg(proc.pid, signal.SIGINT)
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
            results[load] = {"per_seed": rows, "loadavg": loadavg, **{
                p: {k: summary(rows, p, k) for k in ("agreement", "median_deviation",
                                                     "p90_deviation")} for p in "ABC"}}
            print("[bench] seconds per timing: " + ", ".join(
                f"{p} {statistics.median(r['seconds_per_subnet'][p] for r in rows):.3f}"
                for p in "ABC"), flush=True)
            for p in "ABC":
                s = results[load][p]
                print(f"[bench] {load}: {p} within 10% {s['agreement']['median']:.3f} "
                      f"[{s['agreement']['min']:.3f}-{s['agreement']['max']:.3f}], "
                      f"median deviation {s['median_deviation']['median']:.3f}, p90 "
                      f"{s['p90_deviation']['median']:.3f} (load {loadavg:.1f})", flush=True)
    write_json(NAME, {"machine": machine_info(threads=1), "n": args.n, "seeds": args.seeds,
                      "results": results,
                      "goal": "B: >= 0.95 of subnets' second timing within 10% of the first, "
                              "while a search runs"})


if __name__ == "__main__":
    main()
