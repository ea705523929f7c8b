"""The quickstart end to end, as a user runs it: wall time and what it produces.

For each seed k (0..K-1), from a fresh temporary working directory:

    MLFLOW_TRACKING_URI=sqlite:///<tmp>/mlruns.db \\
        raynas run jobs/quickstart.yaml --output-dir <tmp>/out seed=<k> [overrides]

timed with ``time.perf_counter`` around the subprocess (wall time; goal < 180 s). Then, read
back through the MLflow client and the output directory:

- test accuracy of the exported subnet: metric ``test_accuracy`` of the run named "export"
  (goal >= 0.95), cross-checked against ``<out>/subnet/export.json`` and the Pareto front;
- Pareto front size: rows of ``<out>/pareto.parquet`` (goal >= 5);
- the front's latency span, max / min ``latency_ms`` (goal >= 2x).

Quality figures are reported as median [min-max] over the seeds, never the best seed. The
absolute wall time moves with the machine's load: the load average is recorded with it.

    python benchmarks/quickstart.py [--seeds 1] [--override train.epochs=2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_info, raynas_exe, summarize, write_json

NAME = "quickstart"
GOALS = {  # figure: (comparison, threshold)
    "wall_s": ("<", 180.0),
    "test_accuracy": (">=", 0.95),
    "front_size": (">=", 5),
    "latency_span": (">=", 2.0),
}


def _met(figure: str, value: float) -> bool:
    op, goal = GOALS[figure]
    return value < goal if op == "<" else value >= goal


def _leftovers(sid: int) -> list[str]:
    """Processes still alive in the session the raynas run was started in."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,comm="], capture_output=True, text=True)
    rows = [line.split(None, 2) for line in out.stdout.splitlines()]
    return [f"{r[0]} {r[2]}" for r in rows if len(r) == 3 and r[1] == str(sid)]


def run_once(seed: int, overrides: list[str], timeout_s: float, keep: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"raynas-quickstart-s{seed}-"))
    out = tmp / "out"
    uri = f"sqlite:///{tmp}/mlruns.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [*raynas_exe(), "run", str(ROOT / "jobs" / "quickstart.yaml"),
           "--output-dir", str(out), f"seed={seed}", *overrides]
    log_path = tmp / "run.log"
    load_before = list(os.getloadavg())
    with log_path.open("w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # our own child's process group only
            rc = proc.wait()
        wall = time.perf_counter() - t0
    load_after = list(os.getloadavg())
    left = _leftovers(proc.pid)
    result: dict = {"seed": seed, "command": " ".join(cmd), "cwd": str(tmp), "rc": rc,
                    "wall_s": wall, "loadavg_before": load_before, "loadavg_after": load_after,
                    "leftover_processes": left}
    if rc != 0:
        tail = log_path.read_text()[-3000:]
        print(f"seed {seed}: raynas exited {rc} after {wall:.1f} s; log tail:\n{tail}",
              file=sys.stderr)
        result["log_tail"] = tail
        return result
    result.update(read_back(uri, out))
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def read_back(uri: str, out: Path) -> dict:
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("quickstart")
    assert exp is not None, "no MLflow experiment named 'quickstart'"
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert {"quickstart", "train", "search", "export"} <= set(runs), sorted(runs)
    export_run, search_run = runs["export"], runs["search"]
    test_acc = float(export_run.data.metrics["test_accuracy"])

    export_json = json.loads((out / "subnet" / "export.json").read_text())
    front = pq.read_table(out / "pareto.parquet").to_pylist()
    lat = [float(r["latency_ms"]) for r in front]
    keys = [r["arch_key"] for r in front]
    assert export_json["arch_key"] in keys, "exported subnet is not on the Pareto front"
    assert export_run.data.params.get("arch_key") == export_json["arch_key"]
    on_front = front[keys.index(export_json["arch_key"])]
    return {
        "test_accuracy": test_acc,
        "val_accuracy": float(export_run.data.metrics["val_accuracy"]),
        "test_accuracy_on_front_record": float(on_front["test_accuracy"]),
        "front_size": len(front),
        "latency_min_ms": min(lat), "latency_max_ms": max(lat),
        "latency_span": max(lat) / min(lat),
        "exported_arch_key": export_json["arch_key"],
        "export_max_abs_diff": export_json["max_abs_diff"],
        "exported_latency_ms": float(export_run.data.metrics["latency_ms"]),
        "search_metrics": {k: search_run.data.metrics.get(k) for k in (
            "evaluated", "unique_subnets", "front_size", "search_wall_s", "subnets_per_s",
            "hypervolume", "front_latency_span")},
        "job_wall_s_logged": runs["quickstart"].data.metrics.get("job_wall_s"),
        "stage_wall_s_from_mlflow": {
            name: (r.info.end_time - r.info.start_time) / 1e3
            for name, r in runs.items() if r.info.end_time and r.info.start_time},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1, help="run seeds 0..K-1 (default 1)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to `raynas run` (repeatable), e.g. train.epochs=2")
    ap.add_argument("--timeout", type=float, default=900, help="per-run limit in seconds")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = ap.parse_args()
    overrides = [o for group in args.override for o in group.split()]

    machine = machine_info()
    runs = []
    for seed in range(args.seeds):
        r = run_once(seed, overrides, args.timeout, args.keep)
        runs.append(r)
        if r["rc"] == 0:
            print(f"seed {seed}: wall {r['wall_s']:.1f} s, test accuracy "
                  f"{r['test_accuracy']:.4f}, front {r['front_size']} points, latency "
                  f"{r['latency_min_ms']:.3f}-{r['latency_max_ms']:.3f} ms "
                  f"(span {r['latency_span']:.2f}x), load {r['loadavg_before'][0]:.1f}->"
                  f"{r['loadavg_after'][0]:.1f}", flush=True)
        if r["leftover_processes"]:
            print(f"seed {seed}: processes left running: {r['leftover_processes']}",
                  file=sys.stderr)

    ok = [r for r in runs if r["rc"] == 0]
    summary = {f: summarize([r[f] for r in ok]) for f in GOALS} if ok else {}
    verdict = {f: {"goal": f"{op} {g}", "median": summary[f]["median"],
                   "met": _met(f, summary[f]["median"])}
               for f, (op, g) in GOALS.items() if f in summary}
    path = write_json(NAME, {
        "machine": machine, "seeds": args.seeds, "overrides": overrides,
        "default_job": not overrides, "runs": runs, "failed_runs": len(runs) - len(ok),
        "summary": summary, "goals": verdict,
    })
    print(f"wrote {path}")
    if not ok:
        print(f"quickstart: all {len(runs)} runs FAILED (see {path})")
        return 1

    def part(f: str, label: str, spec: str, unit: str = "") -> str:
        s = summary[f]
        op, g = GOALS[f]
        return (f"{label} {s['median']:{spec}}{unit} [{s['min']:{spec}}-{s['max']:{spec}}] "
                f"(goal {op} {g}{unit}: {'met' if _met(f, s['median']) else 'MISSED'})")

    tag = "" if not overrides else f" overrides {' '.join(overrides)};"
    failed = f"; {len(runs) - len(ok)} runs FAILED" if len(ok) < len(runs) else ""
    print(f"quickstart (seeds={args.seeds};{tag} median [min-max]): "
          + "; ".join([part("wall_s", "wall", ".1f", " s"),
                       part("test_accuracy", "test acc", ".3f"),
                       part("front_size", "front", ".0f"),
                       part("latency_span", "latency span", ".2f", "x")]) + failed)
    return 0 if len(ok) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
