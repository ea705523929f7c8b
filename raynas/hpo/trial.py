"""One trial of ``raynas tune``: a Ray Train supernet training run inside a Ray Tune trial.

The trial builds its job (the study's job with the trial's hyperparameters), starts the
training (``train_supernet``, a ``TorchTrainer``) in a thread, and relays each epoch's report
to Tune: the Train controller's ``TuneRelay`` callback puts the rank-0 metrics and the
checkpoint on a one-slot queue, and the trial reports both with ``tune.report``. Tune then
holds every trial's latest checkpoint, which is what its schedulers need: ASHA stops a trial
at its report (the trial's actor ends, and the training it owns with it), and population-
based training restarts a trial from a stronger trial's checkpoint with mutated
hyperparameters. A restarted trial starts a fresh Train run from that checkpoint; the train
loop restores the weights and optimizer moments and keeps this trial's own hyperparameters
(``raynas.training.optim.restore_optimizer``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.train import UserCallback

# The metric a study's scheduler counts epochs with (Tune's own iteration count restarts
# with each trial restart; the epoch comes from the checkpoint).
EPOCHS = "epochs_done"
# The node ids of a trial's Ray Train workers, reported with each attempt's first epoch.
NODES = "train_nodes"


class TuneRelay(UserCallback):
    """In the Train controller: hand each report (rank 0's metrics and the checkpoint) to the
    trial. ``put`` waits while the trial has not taken the previous one."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if metrics:
            self.queue.put((dict(metrics[0]), checkpoint))


def relay_reports(fit: Callable[[list[UserCallback]], Any],
                  handle: Callable[[dict[str, Any], Any], None], name: str) -> None:
    """Run ``fit(callbacks)`` (a Ray Train run, given a ``TuneRelay`` to add to its
    callbacks) in a thread named ``name``, and call ``handle(metrics, checkpoint)`` in this
    thread for each report it relays (rank 0's metrics, the run's ``ray.train.Checkpoint`` or
    None), in order, until the run ends; then raise the run's error, if any, here."""
    from ray.util.queue import Empty, Queue

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    box: dict[str, BaseException] = {}
    done = threading.Event()

    def run() -> None:
        try:
            fit([TuneRelay(queue)])
        except BaseException as exc:  # raised in the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    while True:
        try:
            metrics, checkpoint = queue.get(timeout=0.5)
        except Empty:
            if done.is_set() and queue.empty():
                break
            continue
        handle(metrics, checkpoint)
    if "error" in box:
        raise box["error"]


def hpo_trial(config: dict[str, Any], *, job_doc: dict[str, Any], base_dir: str,
              probes: list[dict[str, Any]], storage: str) -> None:
    """The Tune function trainable: ``config`` maps dotted job keys to this trial's values;
    ``job_doc`` is the study's resolved job (``raynas.hpo.space.trial_doc``), ``storage``
    where the trials' Train runs go (a folder each)."""
    import ray.tune

    from raynas.checkpoint import load_checkpoint
    from raynas.config import _merge, build_config
    from raynas.hpo.space import nested
    from raynas.space.registry import load_space
    from raynas.training.trainer import train_supernet

    # Tune logs every checkpoint it stores at INFO; the study prints one line per epoch.
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    trial_id = ray.tune.get_context().get_trial_id()
    doc = _merge(job_doc, nested(config))
    restored = ray.tune.get_checkpoint()
    keep = tempfile.mkdtemp(prefix=f"raynas-{trial_id}-")
    done_at_restore = None
    if restored is not None:  # a pbt exploit, or a study resumed: continue from it
        directory = restored.to_directory(keep)
        done_at_restore = load_checkpoint(directory)["epoch"] + 1
        if done_at_restore >= doc["train"]["epochs"]:  # a finished donor: nothing to train
            shutil.rmtree(keep, ignore_errors=True)
            return
        doc = _merge(doc, {"train": {"resume_from": directory}})
    # Each trial's Train runs under its own folder: no trial overwrites another's.
    doc = _merge(doc, {"ray": {"storage_path": f"{storage}/{trial_id}"}})
    cfg = build_config(doc, f"trial {trial_id}", base_dir=base_dir)
    space = load_space(cfg.space, base=Path(cfg.base_dir))

    def fit(callbacks: list[UserCallback]) -> None:
        train_supernet(cfg, space, name=f"run-{uuid.uuid4().hex[:8]}", probes=probes,
                       callbacks=callbacks)

    def relay(metrics: dict[str, Any], checkpoint) -> None:
        nonlocal done_at_restore
        nodes = metrics.get("nodes")  # where the Train workers run, with each attempt's first
        metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        metrics[EPOCHS] = int(metrics["epoch"]) + 1
        if nodes:
            metrics[NODES] = ",".join(nodes)
        if done_at_restore is not None:  # the first report after a restore says so
            metrics["restored_at_epoch"], done_at_restore = done_at_restore, None
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint(checkpoint.path,
                                                                checkpoint.filesystem))

    try:
        relay_reports(fit, relay, "raynas-trial-train")
    finally:
        shutil.rmtree(keep, ignore_errors=True)
