"""The known truth for searcher benchmarks: every subnet of ``digits_cnn_small`` evaluated
once through a trained ``digits_cnn`` supernet (the quickstart's), with measured latency.

    python benchmarks/_truth.py [--checkpoint PATH] [--out benchmarks/results/PATH.parquet]

Without ``--checkpoint`` it uses ``outputs/quickstart/checkpoint`` and trains it first
(``raynas train jobs/quickstart.yaml``) if it is missing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, ROOT

from raynas.config import load_config
from raynas.evaluation.actor import evaluator_args
from raynas.evaluation.evaluator import Evaluator
from raynas.search.results import read_records, write_records
from raynas.space.registry import load_space

TRUTH = RESULTS / "digits_cnn_small_truth.parquet"


def quickstart_checkpoint(path: str | None) -> Path:
    if path:
        return Path(path)
    ckpt = ROOT / "outputs" / "quickstart" / "checkpoint"
    if not (ckpt / "supernet.pt").exists():
        print("[bench] training the quickstart supernet (raynas train jobs/quickstart.yaml)",
              flush=True)
        subprocess.run([sys.executable, "-m", "raynas", "train", "jobs/quickstart.yaml"],
                       cwd=ROOT, check=True)
    return ckpt


def build_truth(checkpoint: Path, out: Path = TRUTH) -> list[dict]:
    cfg = load_config(ROOT / "jobs" / "quickstart.yaml")
    full = load_space("digits_cnn")
    small = load_space("digits_cnn_small")
    evaluator = Evaluator(**evaluator_args(cfg, checkpoint, full))
    archs = list(small.enumerate())
    records, t0 = [], time.perf_counter()
    for i in range(0, len(archs), 64):
        records.extend(evaluator.evaluate([a.to_dict() for a in archs[i:i + 64]]))
        rate = len(records) / (time.perf_counter() - t0)
        print(f"[bench] truth {len(records)}/{len(archs)} subnets ({rate:.1f}/s)", flush=True)
    write_records(out, records, small)
    return records


def load_truth(checkpoint: str | None = None, rebuild: bool = False) -> list[dict]:
    if TRUTH.exists() and not rebuild:
        return read_records(TRUTH)
    return build_truth(quickstart_checkpoint(checkpoint))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    args = ap.parse_args()
    recs = build_truth(quickstart_checkpoint(args.checkpoint))
    print(f"[bench] wrote {TRUTH} ({len(recs)} subnets)")
