"""The FLOPs-driven samplers end to end: a tiny supernet trained by Ray Train with two workers,
each on its own shard, logged to a real MLflow store. Every worker must draw the same subnets
at every step (the loop compares a digest of the draws across workers each epoch), which for
BestUp and performance-aware sampling holds only if the losses they choose by are averaged
over the workers."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raynas.checkpoint import load_checkpoint

pytestmark = pytest.mark.integration
XDIST_EACH_TEST = True  # independent jobs: each may run beside another (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]


def _train(store, run_cli, stage_runs, name: str, *overrides: str
           ) -> tuple[dict, dict, Path]:
    out = store["cwd"] / f"{name}-out"
    run_cli(["train", str(ROOT / "jobs" / "smoke.yaml"), "--output-dir", str(out),
             f"name={name}", "train.epochs=2", *overrides], store["cwd"], store["uri"])
    run = stage_runs(store["uri"], name)["train"]
    client = MlflowClient(tracking_uri=store["uri"])
    history = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)]
               for k in run.data.metrics}
    return run.data.metrics, history, out


def test_bestup_workers_agree_and_pick_better_than_chance(store, run_cli, stage_runs):
    last, history, _ = _train(store, run_cli, stage_runs, "s-bestup", "train.sampler.name=bestup",
                              "train.sampler.options.table_size=200", "train.grad_cosine=true")
    assert history["sampler.workers_agree"] == [1.0, 1.0]
    assert all(g > 0 for g in history["sampler.pick_gain"])  # the argmin beat the mean
    assert len(history["grad_cosine"]) == 2 and -1 <= last["grad_cosine"] <= 1


def test_complexity_aware_walks_levels_on_every_worker(store, run_cli, stage_runs):
    last, history, out = _train(
        store, run_cli, stage_runs, "s-complexity", "train.sampler.name=complexity_aware",
        "train.sampler.options.levels=3", "train.sampler.options.table_size=30",
        "train.distill=none")
    assert history["sampler.workers_agree"] == [1.0, 1.0]
    assert "grad_cosine" not in last  # off by default
    steps = [sum(history[f"sampler.level{i}_steps"][e] for i in range(3)) for e in range(2)]
    assert steps[0] == steps[1] > 0  # one level per step
    targets = [last[f"sampler.level{i}_target_flops"] for i in range(3)]
    assert targets == sorted(targets) and targets[0] < targets[-1]
    state = load_checkpoint(out / "checkpoint")["sampler"]
    assert state["level"] == last["sampler.level"]


def test_performance_aware_banks_agree_and_are_checkpointed(store, run_cli, stage_runs):
    last, history, out = _train(
        store, run_cli, stage_runs, "s-perf",
        "train.sampler={name: performance_aware, options: {levels: 2, "
        "table_size: 30, bank_size: 4, modes: [max, uniform, uniform, min]}}")
    assert history["sampler.workers_agree"] == [1.0, 1.0]
    assert history["sampler.p_bank"] == pytest.approx([0.2, 0.35])  # every half of 2 epochs
    state = load_checkpoint(out / "checkpoint")["sampler"]
    sizes = [len(b) for b in state["banks"]]
    assert sizes == [last[f"sampler.level{i}_bank_size"] for i in range(2)] and sum(sizes) > 0
    assert all(s < 0 for bank in state["banks"] for _, s in bank)  # score = -loss
