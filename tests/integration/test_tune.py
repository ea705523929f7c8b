"""``raynas tune`` end to end: Ray Tune trials that each run a Ray Train supernet training on
the embedded Ray, scheduled by ASHA and by population-based training, tracked in a real
MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from raynas.config import TrainConfig, load_config
from raynas.training.optim import lr_at

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOB = str(ROOT / "jobs" / "tune_quickstart.yaml")
METRIC = "val_accuracy_probes"


def _children(uri: str, experiment: str) -> tuple:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("raynas.stage") == "tune")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children


def _history(client, run, key: str) -> dict[int, float]:
    """Step -> value; a step logged twice (a trial restarted from an earlier checkpoint
    trains that epoch again) keeps its latest value."""
    latest: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run.info.run_id, key):
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    return {step: value for step, (_, value) in latest.items()}


def test_asha_stops_weak_trials_and_the_best_completed_trial_is_written(store, run_cli):
    out = store["cwd"] / "tune-asha"
    # One trial at a time: the seeded TPE draws, the training and so ASHA's decisions are
    # the same on every run. lr spans 100x, so some trials trail at the first rung.
    run_cli(["tune", JOB, "--output-dir", str(out), "name=tune_asha", "train.epochs=3",
             "hpo.trials=4", "hpo.max_concurrent_trials=1",
             "hpo.scheduler.options={grace_period: 1, reduction_factor: 2}",
             "hparams.train.lr={type: float, low: 0.002, high: 0.2, log: true}"],
            # Alone it takes about 140 s; beside the rest of the suite on 2 cores each
            # trial's Ray Train start took 40-60 s, and 420 s ran out in the fourth trial.
            store["cwd"], store["uri"], timeout=1200)
    study = json.loads((out / "tune.json").read_text())
    trials = study["trials"]
    assert len(trials) == 4
    stopped = [t for t in trials if t["status"] == "stopped"]
    completed = [t for t in trials if t["status"] == "completed"]
    assert stopped and completed, trials
    for t in stopped:  # stopped at a rung, before the last epoch, and never trained on
        assert t["epochs_done"] < 3 and [e for e, _ in t["curve"]] == list(
            range(1, t["epochs_done"] + 1))
    assert study["epochs_trained"] < 4 * 3
    best = max(completed, key=lambda t: t[METRIC])
    assert study["best"]["trial_id"] == best["trial_id"]
    assert study["best"][METRIC] == pytest.approx(best["curve"][-1][1])

    # The best job file runs as a job: the best trial's values, the study's sections gone.
    written = load_config(out / "best_job.yaml")
    assert written.train.lr == pytest.approx(best["config"]["train.lr"])
    assert written.train.weight_decay == pytest.approx(best["config"]["train.weight_decay"])
    assert not written.hparams
    assert "hpo" not in yaml.safe_load((out / "best_job.yaml").read_text())

    # Every trial trained under its own folder.
    assert sorted(p.name for p in (out / "ray" / "tune-train").iterdir()) == sorted(
        t["trial_id"] for t in trials)

    client, parent, children = _children(store["uri"], "tune_asha")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics[f"best_{METRIC}"] == pytest.approx(best[METRIC])
    assert parent.data.metrics["trials_stopped"] == len(stopped)
    by_trial = {r.data.tags["raynas.trial"]: r for r in children}
    assert sorted(by_trial) == sorted(t["trial_id"] for t in trials)
    for t in trials:
        run = by_trial[t["trial_id"]]
        assert float(run.data.params["train.lr"]) == pytest.approx(t["config"]["train.lr"])
        curve = _history(client, run, METRIC)
        assert sorted(curve) == [e for e, _ in t["curve"]]  # the curve over epochs
        assert curve[t["epochs_done"]] == pytest.approx(t[METRIC])


def test_pbt_trial_continues_from_a_donor_with_its_own_hyperparameters(store, run_cli):
    out = store["cwd"] / "tune-pbt"
    epochs = 4
    # Two trials side by side: at each epoch the weaker one continues from the stronger
    # one's checkpoint with the stronger one's values x 0.8 or 1.2 (or redrawn).
    run_cli(["tune", JOB, "--output-dir", str(out), "name=tune_pbt", f"train.epochs={epochs}",
             "hpo.trials=2", "hpo.searcher=random", "hpo.scheduler=pbt",
             "hparams.train.weight_decay={type: float, low: 1.0e-5, high: 0.05, log: true}"],
            store["cwd"], store["uri"], timeout=1200)
    trials = json.loads((out / "tune.json").read_text())["trials"]
    assert any(t["restored_at_epochs"] for t in trials), trials  # pbt restarted a trial
    client, parent, children = _children(store["uri"], "tune_pbt")
    # The trials whose values pbt changed: restarted from the other's checkpoint with its
    # values mutated (a restart may also continue a trial's own checkpoint, values unchanged).
    mutated = [r for r in children if len({m.value for m in client.get_metric_history(
        r.info.run_id, "hp.train.weight_decay")}) >= 2]
    assert mutated, [r.data.tags["raynas.trial"] for r in children]
    for run in mutated:
        wd_used = _history(client, run, "weight_decay")  # read from the optimizer's groups
        wd_own = _history(client, run, "hp.train.weight_decay")
        lr_used, lr_own = _history(client, run, "lr"), _history(client, run, "hp.train.lr")
        # Every epoch, before and after each restore from a donor's checkpoint (whose
        # optimizer state held the donor's values), the optimizer trains with this trial's
        # own weight decay...
        assert sorted(wd_used) == sorted(wd_own)
        for e in wd_used:
            assert wd_used[e] == pytest.approx(wd_own[e], rel=1e-9), (e, wd_used, wd_own)
        # ... and its learning rate follows this trial's own base lr through the schedule
        # (one steps-per-epoch fits every epoch, each with its own base).
        fits = [spe for spe in range(1, 200) if all(
            lr_used[e] == pytest.approx(lr_at(TrainConfig(lr=lr_own[e], epochs=epochs,
                                                          warmup_epochs=1), e * spe - 1, spe),
                                        rel=1e-6) for e in lr_used)]
        assert len(fits) == 1, (lr_used, lr_own, fits)
