"""Driver side of supernet training: a ``TorchTrainer`` around ``train_loop_per_worker``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from raynas.config import JobConfig, resolve_path
from raynas.runtime import Request, environ, run_in_thread
from raynas.space import SearchSpace

# How often Ray Train's controller polls the workers (its default is 2 s). A worker's
# ``report`` waits until the controller has taken its previous one, so every epoch lasted at
# least one poll: on the small jobs of a search space's exploration (sub-second epochs) that
# wait was most of the training time. A user's RAY_TRAIN_HEALTH_CHECK_INTERVAL_S wins.
POLL_INTERVAL_S = 0.2
_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # read by fit() for the controller it starts


def _controller_poll(seconds: float) -> contextlib.AbstractContextManager[None]:
    return environ({}, {_POLL_ENV: str(seconds)})


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Any  # ray.train.Checkpoint: a directory on the storage path (maybe remote)
    metrics: dict[str, Any]

    def copy_to(self, directory: Path) -> Path:
        """Fetch the final checkpoint into a local directory (from any storage)."""
        return Path(self.checkpoint.to_directory(str(directory)))


class EpochLogger(UserCallback):
    """Logs each epoch's metrics (rank 0's report) into the train run.

    It runs in Ray Train's controller, which Ray places on the driver's node: the MLflow
    server can stay bound to 127.0.0.1 there while the workers train on other nodes. The
    workers' node ids become the run's ``raynas.train_nodes`` tag; a restart after a worker
    failure logs ``resumed_at_epoch``.
    """

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._tracker = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        from raynas.tracking import MlflowTracker

        if not metrics:
            return
        if self._tracker is None:
            self._tracker = MlflowTracker.attach(self.uri, self.run_id)
        first = dict(metrics[0])
        epoch = int(first.pop("epoch"))
        nodes = first.pop("nodes", None)
        if nodes:
            self._tracker.set_tags({"raynas.train_nodes": ",".join(nodes)})
        self._tracker.log_metrics({k: v for k, v in first.items()
                                   if isinstance(v, int | float)}, step=epoch)



def train_request(cfg: JobConfig) -> Request:
    """What the Ray Train worker group asks Ray for (as in ``train_supernet``'s
    ScalingConfig: a GPU per worker with ``use_gpu``), to refuse it up front when it can
    never be placed."""
    t = cfg.train
    bundle = {"CPU": t.cpus_per_worker, "GPU": 1.0 if t.use_gpu else 0.0}
    return Request(
        f"train.num_workers = {t.num_workers} x train.cpus_per_worker = {t.cpus_per_worker:g}"
        + (" (+1 GPU each, train.use_gpu)" if t.use_gpu else ""),
        tuple(dict(bundle) for _ in range(t.num_workers)), t.placement_strategy,
        "lower train.num_workers or train.cpus_per_worker, or give Ray more (ray.num_cpus, "
        "or a cluster with ray.address)")


def train_supernet(cfg: JobConfig, space: SearchSpace,
                   tracking: dict[str, str] | None = None, name: str = "train",
                   probes: list[dict[str, Any]] | None = None,
                   callbacks: list[UserCallback] = ()) -> TrainResult:
    """Train the supernet of ``space`` with Ray Train (Ray must be initialised).

    Checkpoints land under ``<storage_path>/<name>/``. A worker failure restarts the group
    from the latest checkpoint, up to ``train.max_failures`` times; running again with the
    same ``name`` and storage continues that run from its latest checkpoint (Ray Train
    restores it), which is how ``raynas run --resume`` picks up an interrupted training.
    ``probes``: archs whose mean validation metric each epoch reports
    (``val_<metric>_probes``); ``callbacks``: more Ray Train callbacks (``raynas tune``'s
    relay to its Tune trial).
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
        "task": cfg.task.model_dump() if cfg.task else None,
        "train": t.model_dump(),
        "weights": cfg.weights.model_dump(),
        "data": data,
        "seed": cfg.seed,
        "resume_from": str(resolve_path(cfg, t.resume_from).resolve()) if t.resume_from
        else None,
        # The file's bytes, so workers on any node of a cluster read the same ticket.
        "ticket": resolve_path(cfg, t.init_ticket).read_bytes() if t.init_ticket else None,
        "probes": probes,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker},
                                     placement_strategy=t.placement_strategy),
        run_config=RunConfig(
            name=name,
            storage_path=cfg.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=t.max_failures),
            # Keep the console to one progress line per epoch.
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=([EpochLogger(**tracking)] if tracking else []) + list(callbacks),
        ),
    )
    # fit() in a worker thread: this one stays free for Ctrl-C and for the placement
    # watch's timeout (see run_in_thread).
    with _controller_poll(POLL_INTERVAL_S):
        result = run_in_thread(trainer.fit, "train")
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return TrainResult(result.checkpoint, dict(result.metrics or {}))
