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
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


def test_asha_stops_weak_trials_and_the_best_completed_trial_is_written(store, run_cli):
    out = store["cwd"] / "tune-asha"
    # One trial at a time: the seeded TPE draws, the training and so ASHA's decisions are
    # the same on every run. lr spans 100x, so some trials trail at the first rung.
    run_cli(["tune", JOB, "--output-dir", str(out), "name=tune_asha", "train.epochs=3",
             "hpo.trials=4", "hpo.max_concurrent_trials=1",
             "hpo.scheduler.options={grace_period: 1, reduction_factor: 2}",
             "hparams.train.lr={type: float, low: 0.002, high: 0.2, log: true}"],
            store["cwd"], store["uri"])
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


def _fit_steps_per_epoch(lrs: dict[int, float], lr: float, epochs: int) -> int:
    """The steps per epoch under which ``lrs`` (epoch -> lr at its last step) are the
    warm-up cosine schedule of base ``lr``: found, not assumed."""
    cfg = TrainConfig(lr=lr, epochs=epochs, warmup_epochs=1)
    fits = [spe for spe in range(1, 200)
            if all(v == pytest.approx(lr_at(cfg, e * spe - 1, spe), rel=1e-6)
                   for e, v in lrs.items())]
    assert len(fits) == 1, (lrs, fits)
    return fits[0]


def test_pbt_trial_continues_from_a_donor_with_its_own_hyperparameters(store, run_cli):
    out = store["cwd"] / "tune-pbt"
    epochs = 4
    # Two trials side by side: at each epoch the weaker one continues from the stronger
    # one's checkpoint with the stronger one's values x 0.8 or 1.2 (or redrawn).
    run_cli(["tune", JOB, "--output-dir", str(out), "name=tune_pbt", f"train.epochs={epochs}",
             "hpo.trials=2", "hpo.searcher=random", "hpo.scheduler=pbt",
             "hparams.train.weight_decay={type: float, low: 1.0e-5, high: 0.05, log: true}"],
            store["cwd"], store["uri"])
    trials = json.loads((out / "tune.json").read_text())["trials"]
    exploited = [t for t in trials if t["restored_at_epochs"]]
    assert exploited, trials
    client, parent, children = _children(store["uri"], "tune_pbt")
    by_trial = {r.data.tags["raynas.trial"]: r for r in children}
    for t in exploited:
        run = by_trial[t["trial_id"]]
        first_after = t["restored_at_epochs"][0] + 1
        donor_at = {k: _history(client, r, "hp.train.weight_decay").get(
            t["restored_at_epochs"][0]) for k, r in by_trial.items() if k != t["trial_id"]}
        wd_used = _history(client, run, "weight_decay")  # read from the optimizer's groups
        wd_own = _history(client, run, "hp.train.weight_decay")
        lr_used, lr_own = _history(client, run, "lr"), _history(client, run, "hp.train.lr")
        # After the restore the optimizer trains with this trial's mutated values...
        assert wd_used[first_after] == pytest.approx(wd_own[first_after], rel=1e-9)
        # ... which are not the donor's (the checkpoint's optimizer state held those).
        assert all(wd_own[first_after] != pytest.approx(v, rel=1e-6)
                   for v in donor_at.values() if v is not None)
        # And the learning rate follows this trial's own base lr through the schedule.
        steps = _fit_steps_per_epoch({e: v for e, v in lr_used.items() if e >= first_after},
                                     lr_own[first_after], epochs)
        assert steps > 1
