"""What a study leaves: ``tune.json`` (every trial), ``tune.png`` (the probe metric of every
trial over epochs, the best one in red) and the best trial's numbers on the study's run."""

from __future__ import annotations

import json
from typing import Any

from raynas.search.plot import figure, save


def write_outputs(job, trials: list[dict[str, Any]], best: dict[str, Any], metric: str,
                  mode: str, wall_s: float) -> None:
    out = job.out
    epochs = job.cfg.train.epochs
    summary = {
        "metric": metric, "mode": mode, "epochs": epochs, "wall_s": wall_s,
        "searcher": job.cfg.hpo.searcher, "scheduler": job.cfg.hpo.scheduler.name,
        "epochs_trained": sum(len(t["curve"]) for t in trials),
        "best": {k: best[k] for k in ("trial_id", "config", metric, "run_id")},
        "trials": trials,
    }
    (out / "tune.json").write_text(json.dumps(summary, indent=2, default=str))
    fig, ax = figure()
    for t in trials:
        if not t["curve"]:
            continue
        xs, ys = zip(*t["curve"])
        is_best = t["trial_id"] == best["trial_id"]
        ax.plot(xs, ys, marker="o", ms=3, color="tab:red" if is_best else "grey",
                alpha=1.0 if is_best else 0.5, zorder=3 if is_best else 2,
                label=f"best: trial {t['trial_id']}" if is_best else None)
        if t["status"] == "stopped":
            ax.plot(xs[-1], ys[-1], "x", color="black", ms=6)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} ({mode})")
    ax.set_title(f"{job.cfg.name}: {len(trials)} trials, {job.cfg.hpo.scheduler.name} "
                 "(x: stopped early)")
    ax.legend(loc="best")
    save(fig, out / "tune.png")
    job.tracker.log_metrics({f"best_{metric}": best[metric], "wall_s": wall_s,
                             "trials_completed": sum(t["status"] == "completed"
                                                     for t in trials),
                             "trials_stopped": sum(t["status"] == "stopped" for t in trials),
                             "epochs_trained": summary["epochs_trained"]})
    job.tracker.set_tags({f"raynas.best.{k}": v for k, v in best["config"].items()})
    for name in ("tune.json", "tune.png", "best_job.yaml"):
        job.tracker.log_artifact(out / name)
