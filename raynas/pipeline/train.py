"""The train stage: the supernet trained by Ray Train, its checkpoint kept and tracked."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raynas.checkpoint import load_checkpoint
from raynas.config import resolve_path
from raynas.pipeline.progress import say
from raynas.tracking import MlflowTracker

if TYPE_CHECKING:
    from raynas.pipeline.job import Job


def check_train_inputs(job: Job) -> None:
    """Fail on a wrong ``train.resume_from`` before any run, file or Ray worker exists
    (``Job.train`` and ``Job.run`` call it first, then ``train_stage``)."""
    if job.cfg.train.resume_from:
        load_checkpoint(resolve_path(job.cfg, job.cfg.train.resume_from), expected=job.space,
                        weights=job.cfg.weights.model_dump())


def train_stage(job: Job, parent_id: str | None = None,
                resume: dict[str, Any] | None = None) -> tuple[Path, str | None]:
    """Train the supernet; return the stable checkpoint directory and the run id.

    ``resume``: the job state of an interrupted training (its run and Ray Train run
    name): Ray Train continues it from its latest checkpoint.
    """
    from raynas.training.trainer import train_supernet

    cfg, space = job.cfg, job.space
    resume = resume or {}
    t = cfg.train
    with job.stage_run("train", parent_id, resume.get("run_id")) as run_id:
        if parent_id is None:
            job.log_config()
        ray_name = resume.get("ray_name") or f"train-{run_id or uuid.uuid4().hex}"[:14]
        job.save_state("train", run_id=run_id, ray_name=ray_name, status="running")
        say(f"train: supernet for space {space.name!r} ({space.size():,} "
            f"subnets), {t.epochs} epochs on {t.num_workers} Ray Train workers")
        tracking = ({"uri": job.tracker.uri, "run_id": run_id}
                    if isinstance(job.tracker, MlflowTracker) else None)
        t0 = time.perf_counter()
        with job.ray("train"):
            result = train_supernet(cfg, space, tracking, name=ray_name)
        checkpoint = job.out / "checkpoint"
        if checkpoint.exists():
            shutil.rmtree(checkpoint)
        result.copy_to(checkpoint)
        job.tracker.log_artifacts(checkpoint, "checkpoint")
        job.tracker.set_tags({"raynas.checkpoint": str(checkpoint)})
        job.tracker.log_metrics({"train_wall_s": time.perf_counter() - t0})
        job.save_state("train", status="finished", checkpoint=str(checkpoint))
        say(f"train: done, checkpoint {checkpoint}")
    return checkpoint, run_id
