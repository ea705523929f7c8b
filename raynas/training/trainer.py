"""Driver side of supernet training: a ``TorchTrainer`` around ``train_loop_per_worker``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raynas.config import JobConfig, resolve_path
from raynas.space import SearchSpace


@dataclass(frozen=True)
class TrainResult:
    checkpoint_dir: Path
    metrics: dict[str, Any]


def train_supernet(cfg: JobConfig, space: SearchSpace,
                   tracking: dict[str, str] | None = None) -> TrainResult:
    """Train the supernet of ``space`` with Ray Train (Ray must be initialised).

    Checkpoints land under ``<output_dir>/ray/``; a worker failure restarts the group from
    the latest checkpoint up to ``train.max_failures`` times.
    """
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    from raynas.training.loop import train_loop_per_worker

    t = cfg.train
    data = cfg.data.model_dump()
    if data.get("path"):
        data["path"] = str(resolve_path(cfg, data["path"]).resolve())
    loop_config = {
        "space": space.to_dict(),
        "train": t.model_dump(),
        "data": data,
        "seed": cfg.seed,
        "tracking": tracking,
        "resume_from": str(resolve_path(cfg, t.resume_from).resolve()) if t.resume_from
        else None,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(
            name="train",
            storage_path=str(cfg.out_dir / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=t.max_failures),
            # Keep the console to one progress line per epoch.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return TrainResult(Path(result.checkpoint.path), dict(result.metrics or {}))
