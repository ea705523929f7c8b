"""The known truth for searcher benchmarks: every subnet of a small space evaluated once
through a trained supernet of the space it is a corner of.

- ``digits_cnn_small`` (2,592 subnets) through the quickstart's ``digits_cnn`` supernet;
  objectives validation accuracy and latency measured on this machine.
- ``vit_tiny_small`` (1,568 subnets) through ``jobs/vit_tiny.yaml``'s supernet; objectives
  validation accuracy and FLOPs (a front that timing noise cannot move; measured latency is
  kept in the table too).

    python benchmarks/_truth.py [--table NAME] [--checkpoint PATH]

Without ``--checkpoint`` it uses ``outputs/<job>/checkpoint`` and trains it first
(``raynas train jobs/<job>.yaml``) if it is missing. The table is written to
``results/<NAME>_truth.parquet``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _common import RESULTS, ROOT

from raynas.config import load_config
from raynas.evaluation.actor import evaluator_args
from raynas.evaluation.evaluator import Evaluator
from raynas.search.results import read_records, write_records
from raynas.search.searchers import Objective
from raynas.space.registry import load_space


@dataclass(frozen=True)
class Truth:
    name: str  # the small space, exhaustively evaluated
    job: str  # the job whose supernet scores it
    objectives: tuple[Objective, ...]

    @property
    def path(self) -> Path:
        return RESULTS / f"{self.name}_truth.parquet"


TABLES = {t.name: t for t in (
    Truth("digits_cnn_small", "quickstart",
          (Objective("accuracy", "max"), Objective("latency_ms", "min"))),
    Truth("vit_tiny_small", "vit_tiny",
          (Objective("accuracy", "max"), Objective("flops", "min"))),
)}


def job_checkpoint(job: str, path: str | None) -> Path:
    if path:
        return Path(path)
    ckpt = ROOT / "outputs" / job / "checkpoint"
    if not (ckpt / "supernet.pt").exists():
        print(f"[bench] training the {job} supernet (raynas train jobs/{job}.yaml)", flush=True)
        subprocess.run([sys.executable, "-m", "raynas", "train", f"jobs/{job}.yaml"],
                       cwd=ROOT, check=True)
    return ckpt


def build_truth(truth: Truth, checkpoint: Path) -> list[dict]:
    cfg = load_config(ROOT / "jobs" / f"{truth.job}.yaml")
    full = load_space(cfg.space)
    small = load_space(truth.name)
    evaluator = Evaluator(**evaluator_args(cfg, checkpoint, full))
    archs = list(small.enumerate())
    records, t0 = [], time.perf_counter()
    for i in range(0, len(archs), 64):
        records.extend(evaluator.evaluate([a.to_dict() for a in archs[i:i + 64]]))
        rate = len(records) / (time.perf_counter() - t0)
        print(f"[bench] truth {len(records)}/{len(archs)} subnets ({rate:.1f}/s)", flush=True)
    write_records(truth.path, records, small)
    return records


def load_truth(truth: Truth, checkpoint: str | None = None, rebuild: bool = False
               ) -> list[dict]:
    if truth.path.exists() and not rebuild:
        return read_records(truth.path)
    return build_truth(truth, job_checkpoint(truth.job, checkpoint))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", choices=sorted(TABLES), default="digits_cnn_small")
    ap.add_argument("--checkpoint")
    args = ap.parse_args()
    truth = TABLES[args.table]
    recs = build_truth(truth, job_checkpoint(truth.job, args.checkpoint))
    print(f"[bench] wrote {truth.path} ({len(recs)} subnets)")
