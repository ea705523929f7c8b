"""Shared helpers for the benchmark scripts: machine info, paired timing, summaries, JSON.

Rules followed (see benchmarks/README.md): A and B are timed alternately (A B A B ...)
in one process after a warm-up; every pair gives one ratio B/A; we report the median of the
per-pair ratios with their min and max, and keep the raw numbers in the JSON.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raynas.search.searchers import Objective

ROOT = Path(__file__).resolve().parents[1]
# What the digits benchmarks optimise: the classification task's default objectives.
OBJECTIVES = (Objective("accuracy", "max"), Objective("latency_ms", "min"))
RESULTS = Path(__file__).resolve().parent / "results"


def quickstart(overrides: Sequence[str] = ()):
    """``jobs/quickstart.yaml`` (with ``overrides``) and its space, digits_cnn: what the
    search benchmarks run."""
    from raynas.config import load_config
    from raynas.space import SearchSpace

    cfg = load_config(ROOT / "jobs" / "quickstart.yaml", list(overrides))
    return SearchSpace.load(ROOT / "search_spaces" / "digits_cnn.yaml"), cfg


def raynas_exe() -> list[str]:
    """The ``raynas`` command of this Python's environment (a benchmark runs it as a user
    would, in a subprocess)."""
    exe = Path(sys.executable).parent / "raynas"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("raynas")
    return [found] if found else [sys.executable, "-m", "raynas"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int | None = None) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "loadavg_at_start": list(os.getloadavg()),
    }
    return info


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def summarize(ratios: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "n": len(ratios)}


def fmt(s: dict[str, float], unit: str = "x") -> str:
    return f"median {s['median']:.3f}{unit} [{s['min']:.3f}-{s['max']:.3f}]"


def calibrate(fn: Callable[[], Any], target_s: float, min_calls: int, max_calls: int) -> int:
    """Calls per timed block so that one block lasts about ``target_s``."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        dt = (time.perf_counter_ns() - t0) / 1e9
        if dt >= 0.01 or n >= max_calls:
            break
        n *= 4
    per_call = dt / n
    return int(min(max_calls, max(min_calls, math.ceil(target_s / per_call))))


def time_block(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """(wall, this thread's CPU) seconds per call, averaged over one block of ``calls``.

    Wall time (``perf_counter_ns``) is the figure; the calling thread's CPU time
    (``thread_time_ns``) is kept beside it: with torch.set_num_threads(1) all the work runs
    in this thread, and CPU time does not count the time other processes hold the core.
    """
    c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
    for _ in range(calls):
        fn()
    t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
    return (t1 - t0) / 1e9 / calls, (c1 - c0) / 1e9 / calls


def paired(a: Callable[[], Any], b: Callable[[], Any], *, pairs: int, calls: int,
           warmup_pairs: int = 2) -> dict[str, Any]:
    """Time A then B, ``pairs`` times, each sample a block of ``calls`` calls.

    Returns the raw per-call seconds of each side and the per-pair ratios B/A, for wall
    time (``summary``) and for thread CPU time (``cpu_summary``).
    """
    for _ in range(warmup_pairs):
        time_block(a, calls)
        time_block(b, calls)
    ta, tb, ca, cb = [], [], [], []
    for _ in range(pairs):
        wall, cpu = time_block(a, calls)
        ta.append(wall)
        ca.append(cpu)
        wall, cpu = time_block(b, calls)
        tb.append(wall)
        cb.append(cpu)
    ratios = [y / x for x, y in zip(ta, tb)]
    cpu_ratios = [y / x for x, y in zip(ca, cb)]
    return {"calls_per_block": calls, "a_s_per_call": ta, "b_s_per_call": tb,
            "ratios_b_over_a": ratios, "summary": summarize(ratios),
            "a_cpu_s_per_call": ca, "b_cpu_s_per_call": cb,
            "cpu_ratios_b_over_a": cpu_ratios, "cpu_summary": summarize(cpu_ratios),
            # supplementary, not the figure: each side's fastest block (least disturbed)
            "ratio_of_minima_wall": min(tb) / min(ta),
            "ratio_of_minima_cpu": min(cb) / min(ca)}


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "date": now_iso(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
