"""raynas.hpo.finetune_train: a subnet's fine-tuning as a Ray Train run of data-parallel
workers (``finetune.num_workers`` > 1) on a real local Ray, its reports relayed to the
caller; and what such a fine-tuning trial asks Ray for."""

from __future__ import annotations

import math

import pytest
import ray
import ray.train
import torch

from raynas.config import DataConfig, TrainConfig, load_config
from raynas.hpo.finetune_train import (
    DIGESTS,
    MODEL,
    finetune_request,
    finetune_with_ray_train,
    state_digest,
)
from raynas.supernets import build_static
from raynas.tasks import make_loader

TRAIN = TrainConfig(batch_size=32, cpus_per_worker=1).model_dump(mode="json")
VALUES = {"epochs": 2, "lr": 0.1, "weight_decay": 0.0, "distill": 0.0, "temperature": 1.0}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _model(space):
    torch.manual_seed(0)
    return build_static(space, space.largest())


def _run(space, values, storage, reports):
    """Fine-tune the tiny space's largest subnet (seeded random weights) on 2 workers;
    ``reports`` gets each relayed ``(metrics, state dict in the checkpoint or None)``."""
    def report(metrics, checkpoint_dir):
        state = None
        if checkpoint_dir is not None:
            state = torch.load(f"{checkpoint_dir}/{MODEL}", weights_only=True)
        reports.append((metrics, state))

    finetune_with_ray_train(
        space=space.to_dict(), arch=space.largest().to_dict(),
        state=_model(space).state_dict(), teacher=None, task=None,
        data=DataConfig().model_dump(), train=TRAIN, values=values, seed=0, num_workers=2,
        storage_path=str(storage), report=report)


@pytest.mark.integration
def test_two_workers_train_one_model_on_half_the_steps_each(local_ray, tiny_space, digits_data,
                                                            tmp_path):
    """Two data-parallel workers: every epoch is relayed (rank 0's report, world size 2, both
    workers on this node), each rank takes half the steps one worker takes over the whole
    training set, both ranks end with the same weights and BatchNorm statistics, bit for
    bit, and the checkpoint at the last epoch is that model, fine-tuned: far above its
    random start. Measured: 0.100 before, 0.948 after (seeds 0 and 1), training loss 1.49
    then 0.70; in one process with batches of 64 (the two ranks' 32 each): 1.48, 0.69 and
    0.967."""
    task, data = digits_data
    val = list(make_loader(data.val, 256))
    before = task.evaluate(_model(tiny_space), val)["accuracy"]
    reports: list = []
    _run(tiny_space, VALUES, tmp_path, reports)
    assert [m["epochs_done"] for m, _ in reports] == [1, 2]
    assert [s is not None for _, s in reports] == [False, True]  # the model at the last only
    one_worker = len(data.train) // TRAIN["batch_size"]  # drop_last: 36 steps of 32
    for metrics, _ in reports:
        assert metrics["world_size"] == 2
        assert metrics["train_nodes"].split(",") == [ray.get_runtime_context().get_node_id()] * 2
        assert metrics["steps"] == len(data.train) // 2 // TRAIN["batch_size"] == one_worker // 2
        assert math.isfinite(metrics["loss_train"])
        digests = metrics[DIGESTS].split(",")
        assert len(digests) == 2 and digests[0] == digests[1], digests
    assert reports[1][0]["loss_train"] < reports[0][0]["loss_train"] - 0.3
    final, state = reports[-1]
    model = build_static(tiny_space, tiny_space.largest())
    model.load_state_dict(state)
    assert state_digest(model) == final[DIGESTS].split(",")[0]
    after = task.evaluate(model, val)["accuracy"]
    assert after == pytest.approx(final["val_accuracy"])
    # 0.5 above the start (135 of 269 validation samples more): an untrained model stays at
    # chance (0.100 after these two epochs at batches of 128 and lr 0.1, in one process).
    assert after > before + 0.5, (before, after)


@pytest.mark.integration
def test_a_diverging_worker_fails_the_call(local_ray, tiny_space, tmp_path):
    """An lr of 1e30 makes the loss NaN in the first epoch (as on one worker): the run fails
    in the caller, with no report before it, as Ray Train's TrainingFailedError whose last
    line (what a Tune trial's error shows) is the workers' FloatingPointError."""
    reports: list = []
    with pytest.raises(ray.train.TrainingFailedError) as err:
        _run(tiny_space, {**VALUES, "epochs": 1, "lr": 1e30}, tmp_path, reports)
    assert reports == []
    assert str(err.value).strip().splitlines()[-1].startswith(
        "FloatingPointError: fine-tuning diverged at epoch 1 (lr 1e+30)"), str(err.value)


def test_a_trial_asks_for_its_worker_group(quickstart_job):
    """num_workers 1: the trial's 1 CPU; more: the Train worker group's bundles (a GPU each
    with use_gpu), placed by train.placement_strategy."""
    one = finetune_request(load_config(quickstart_job))
    assert one.bundles == ({"CPU": 1.0, "GPU": 0.0},) and one.strategy == "PACK"
    group = finetune_request(load_config(quickstart_job, [
        "finetune.num_workers=3", "train.cpus_per_worker=2", "train.use_gpu=true",
        "train.placement_strategy=SPREAD"]))
    assert group.bundles == ({"CPU": 2.0, "GPU": 1.0},) * 3 and group.strategy == "SPREAD"
    assert group.total() == {"CPU": 6.0, "GPU": 3.0}
    assert "finetune.num_workers = 3" in group.what and "finetune.num_workers" in group.hint
