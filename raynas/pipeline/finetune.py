"""The finetune stage: chosen subnets trained on from the weights they inherited, by a small
Ray Tune study, and the best one exported like ``raynas export`` does.

The study's space is ``finetune.hparams`` and, with several candidate subnets, the subnet
itself (``arch``), or with ``--search-arch`` the space's own architecture dims (``arch.*``,
within the budgets): the searcher (``hpo.searcher``) sees one space. Each trial fine-tunes
on one CPU (one GPU with ``train.use_gpu``), or as a Ray Train run of
``finetune.num_workers`` workers, and reports the validation metrics every epoch; the best
trial by the task's primary validation metric is exported, checked against its own
fine-tuned weights, and compared with the same subnet before fine-tuning on the test split.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raynas.errors import RaynasError
from raynas.pipeline.progress import say

if TYPE_CHECKING:
    from raynas.pipeline.job import Job
    from raynas.search.searchers import Constraint

NAME = "finetune"  # the Tune experiment's folder under the storage path


@dataclass
class FinetuneOutcome:
    trials: list[dict[str, Any]]
    best: dict[str, Any]
    summary: dict[str, Any]
    run_id: str | None
    wall_s: float


def finetune_stage(job: Job, checkpoint, points: list[dict[str, Any]],
                   parent_id: str | None = None, budgets: Sequence[Constraint] = (),
                   search_arch: bool = False) -> FinetuneOutcome:
    """Fine-tune the subnets of ``points`` (records with an ``arch``; one or more), or with
    ``search_arch`` the subnets the study draws from the space itself, within the job's
    search budgets and ``budgets``, its first trials the ``points`` (a search's Pareto
    front, ordered by latency) that meet them; export the best trial's model to
    ``<output_dir>/subnet``."""
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import BasicVariantGenerator

    from raynas.evaluation.actor import (
        create_evaluator_actor,
        evaluator_args,
        stop_evaluator_actor,
    )
    from raynas.evaluation.evaluator import Evaluator
    from raynas.hpo.finetune import ARCH, KEYS, finetune_trial, parse_finetune_hparams
    from raynas.hpo.space import ARCH_PREFIX, arch_of, arch_tune_space, inside, tune_space
    from raynas.hpo.study import _LIVE, _Tracking, build_searcher

    cfg, space, task = job.cfg, job.space, job.task
    ft = cfg.finetune
    dims = parse_finetune_hparams(cfg)
    searching = search_arch  # the subnet is dims of the study's space
    archs, starts = {}, []
    metric, mode = f"val_{task.primary.name}", task.primary.goal
    param_space = tune_space(dims)
    if searching:  # the points, if any, are where the study starts
        param_space.update(arch_tune_space(space))
        budgets = list({str(b): b for b in (*job.constraints, *budgets)}.values())
        starts = _starts(space, points, budgets, ft.trials // 2,
                         {d.name: inside(d, getattr(ft, d.name)) for d in dims})
    else:
        for p in points:
            arch = space.validate(p["arch"])
            archs.setdefault(arch.key, arch)
        if len(archs) > 1:
            param_space[ARCH] = tune.choice(list(archs))
    trials = ft.trials if param_space else 1
    teach = ft.distill > 0 or any(d.name == "distill" for d in dims)
    args = {**evaluator_args(cfg, checkpoint, space), "objectives": ()}  # the whole val split
    gpu = cfg.train.use_gpu
    defaults = {k: getattr(ft, k) for k in KEYS}
    t0 = time.perf_counter()
    with job.stage_run("finetune", parent_id) as run_id:
        if parent_id is None:
            job.log_config()
        evaluator = Evaluator(**args)
        candidates, before = {}, {}
        for key, arch in archs.items():  # BN recalibrated as for the search
            static = evaluator.prepare(arch)
            before[key] = evaluator.score(arch, static)
            candidates[key] = {"arch": arch.to_dict(),
                               "state": {k: v.cpu() for k, v in static.state_dict().items()}}
        teacher = None
        if teach:
            big = space.largest()
            teacher = {"arch": big.to_dict(), "state": evaluator.prepare(big).cpu().state_dict()}
        job.tracker.log_params({"finetune.candidates": "the space's" if searching
                                else ", ".join(archs), "finetune.metric": metric,
                                "finetune.budgets": ", ".join(map(str, budgets)) or "none"})
        shown = [k for k in param_space if not k.startswith(ARCH_PREFIX)]
        say(f"finetune: {trials} trial{'s' * (trials > 1)} over "
            + (f"the space's {len(space.dims)} architecture dims"
               + "".join(f", {k}" for k in shown)
               + (f" within {', '.join(map(str, budgets))}" if budgets else "")
               + (f", the first {len(starts)} the search's Pareto points within them"
                  if starts else "")
               if searching else
               f"{', '.join(param_space) or 'no hyperparameter'} ({len(archs)} candidate "
               f"subnet{'s' * (len(archs) > 1)})")
            + f"; {cfg.hpo.searcher if param_space else 'the finetune defaults'}, judged by "
            f"{metric}" + ("" if searching else "; before: " + ", ".join(
                f"{k} {before[k][task.primary.name]:.4f}" for k in archs)))
        if param_space:
            searcher = build_searcher(cfg.model_copy(update={"hpo": cfg.hpo.model_copy(
                update={"trials": trials})}), metric, mode, starts or None)
        else:
            searcher = BasicVariantGenerator(random_state=cfg.seed)
        key = f"{cfg.storage_path}/{NAME}"
        runs: dict[str, str] = {}
        tracking = _LIVE[key] = _Tracking(key, job, run_id, runs, metric, ft.epochs,
                                          lambda: None, stage="finetune")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        with job.ray("finetune", *(("search",) if searching else ())):
            # Drawn subnets come from the shared evaluator actor: their inherited weights and
            # their metrics (the budgets' judge), once per subnet for every trial.
            actor = create_evaluator_actor(cfg, checkpoint, space) if searching else None
            trainable = tune.with_resources(tune.with_parameters(
                finetune_trial, space=space.to_dict(), candidates=candidates,
                teacher=teacher, defaults=defaults, train=cfg.train.model_dump(mode="json"),
                data=args["data"], task=args["task"], seed=cfg.seed,
                device="cuda" if gpu else "cpu", evaluator=actor,
                budgets=[(b.metric, b.limit) for b in budgets], workers=ft.num_workers,
                storage=f"{cfg.storage_path}/{NAME}-train"),
                # A trial that starts a Ray Train run only relays: its workers ask for the
                # CPUs (GPUs); Tune needs some resource in a request, so one byte of memory.
                {"cpu": 1, "gpu": 1 if gpu else 0} if ft.num_workers == 1 else
                {"cpu": 0, "memory": 1})
            tuner = tune.Tuner(
                trainable, param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=searcher, num_samples=trials,
                    max_concurrent_trials=cfg.hpo.max_concurrent_trials,
                    trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
                run_config=tune.RunConfig(name=NAME, storage_path=cfg.storage_path, verbose=0,
                                          callbacks=[tracking, JsonLoggerCallback()]))
            try:
                grid = tuner.fit()
                only = next(iter(archs), None)
                rows = _trials(grid, metric, runs, (lambda c: arch_of(space, c).key)
                               if searching else (lambda c: c.get(ARCH, only)))
                if searching:  # every drawn subnet, scored before fine-tuning (cached)
                    drawn = {t["arch_key"]: arch_of(space, t["config"]) for t in rows}
                    records = ray.get(actor.evaluate.remote([a.to_dict()
                                                             for a in drawn.values()]))
                    archs.update(drawn)
                    before.update(zip(drawn, records))
            finally:
                _LIVE.pop(key, None)
                if actor is not None:
                    stop_evaluator_actor(actor)
        done = [t for t in rows if t["status"] == "completed"]
        over = sum(t["status"] == "infeasible" for t in rows)
        if not done and over == len(rows):
            raise RaynasError(
                f"finetune --search-arch: all {over} subnets drawn broke the budgets "
                f"{', '.join(map(str, budgets))}, so none was trained; raise "
                "finetune.trials, loosen the budgets, or fine-tune the search's Pareto "
                "points within them (--pick all --budget ...)")
        if not done:
            errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error]
            raise RuntimeError(
                "no fine-tuning trial completed"
                + (f"; {over} of {len(rows)} drew a subnet over the budgets "
                   f"{', '.join(map(str, budgets))} (not trained)" if over else "")
                + (f"; first error: {errors[0]}" if errors else ""))
        best = (max if mode == "max" else min)(done, key=lambda t: t[metric])
        arch = archs[best["arch_key"]]
        model = _built(space, arch, best["checkpoint"])
        summary = _export(job, evaluator, model, arch, before[arch.key], best, rows, metric,
                          mode, before, time.perf_counter() - t0, budgets)
    return FinetuneOutcome(rows, best, summary, run_id, summary["wall_s"])


def _starts(space, front, budgets, most: int, values: dict[str, Any]) -> list[dict]:
    """Up to ``most`` points of ``front`` that meet the ``budgets`` (a budget on a metric
    the front lacks is the trials' to judge), spread over it, as whole configs of the
    study: their arch and the finetune ``values``."""
    from raynas.hpo.space import arch_point

    fit, seen = [], set()
    for p in front or ():
        arch = space.validate(p["arch"])
        if arch.key not in seen and all(b.metric not in p or float(p[b.metric]) <= b.limit
                                        for b in budgets):
            seen.add(arch.key)
            fit.append(arch)
    k = min(len(fit), most)
    chosen = [fit[round(i * (len(fit) - 1) / max(k - 1, 1))] for i in range(k)]
    return [{**values, **arch_point(space, a)} for a in chosen]


def _built(space, arch, checkpoint: str):
    """The best trial's fine-tuned model, from its Tune checkpoint (on the CPU)."""
    import torch

    from raynas.supernets import build_static

    model = build_static(space, arch)
    model.load_state_dict(torch.load(f"{checkpoint}/model.pt", map_location="cpu",
                                     weights_only=True))
    return model.eval()


def _trials(grid, metric: str, runs: dict[str, str],
            arch_key: Callable[[dict], str]) -> list[dict[str, Any]]:
    """Every trial: its config and subnet, its status (``completed``, ``failed``, or
    ``infeasible``: its subnet broke a budget and was not trained), its curve."""
    from raynas.hpo.constrained import violations
    from raynas.hpo.finetune import EPOCHS, FEASIBLE

    out = []
    for result in grid:
        last = result.metrics or {}
        over = last.get(FEASIBLE) == 0
        history = result.metrics_dataframe
        curve = ([] if over or history is None or metric not in history else
                 [(int(e), float(v)) for e, v in zip(history[EPOCHS], history[metric])])
        config = dict(result.config or {})
        trial_id = result.path.rsplit("trial_", 1)[-1]
        status = ("infeasible" if over else "completed" if result.checkpoint
                  and not result.error else "failed")
        out.append({"trial_id": trial_id, "config": config, "arch_key": arch_key(config),
                    "status": status, metric: curve[-1][1] if curve else None,
                    "curve": curve, "run_id": runs.get(trial_id),
                    "checkpoint": result.checkpoint.path if result.checkpoint else None,
                    **({"violations": excess} if (excess := violations(last)) else {}),
                    **({"error": str(result.error).strip().splitlines()[-1]}
                       if result.error else {})})
    return out


def _export(job: Job, evaluator, model, arch, before: dict[str, Any], best: dict[str, Any],
            rows: list[dict[str, Any]], metric: str, mode: str, all_before: dict[str, dict],
            wall_s: float, budgets: Sequence[Constraint] = ()) -> dict[str, Any]:
    """Score the best trial's model on both splits, export it, write ``finetune.json`` and
    ``finetune.png``, and log them."""
    import torch

    from raynas.export.serialize import export_metadata, export_subnet
    from raynas.hpo.space import ARCH_PREFIX
    from raynas.hpo.study import _short

    cfg, task = job.cfg, job.task
    names = [m.name for m in task.metrics]
    # The fine-tuning values (a drawn subnet's arch.* values are its arch, logged as such).
    values = {k: v for k, v in best["config"].items() if not k.startswith(ARCH_PREFIX)}
    model.to(evaluator.device)
    val = task.evaluate(model, evaluator.val_batches, evaluator.device)
    test = task.evaluate(model, evaluator.test_batches, evaluator.device)
    result = export_subnet(evaluator.supernet, model, job.space, arch,
                           evaluator.example_batch(256), job.out / "subnet",
                           cfg.export.formats, cfg.export.atol, task=task, reference=model)
    after = {**{f"val_{k}": val[k] for k in names}, **{f"test_{k}": test[k] for k in names}}
    inherited = {**{f"val_{k}": before[k] for k in names},
                 **{f"test_{k}": before[f"test_{k}"] for k in names}}
    summary = {
        "metric": metric, "mode": mode, "wall_s": wall_s, "arch_key": arch.key,
        "arch": arch.to_dict(), "best": {k: best[k] for k in ("trial_id", "config", metric,
                                                               "run_id")},
        "before": inherited, "after": after,
        "latency_ms": before["latency_ms"], "flops": before["flops"],
        "params": before["params"], "budgets": [str(b) for b in budgets],
        "infeasible": sum(t["status"] == "infeasible" for t in rows),
        # Each subnet the study tried, before fine-tuning.
        "candidates": {k: {c: r[c] for c in ("arch", *names, *(f"test_{m}" for m in names),
                                             "latency_ms", "flops", "params")}
                       for k, r in all_before.items()},
        "trials": rows, "export": export_metadata(result),
    }
    (job.out / "finetune.json").write_text(json.dumps(summary, indent=2, default=str))
    _plot(job, rows, best, metric, all_before)
    tracker = job.tracker
    tracker.log_params({"arch_key": arch.key, "arch": arch.to_json(),
                        **{f"best.{k}": v for k, v in values.items()}})
    tracker.log_metrics({**after, **{f"{k}_before": v for k, v in inherited.items()},
                         "latency_ms": before["latency_ms"], "flops": before["flops"],
                         "params": before["params"], "wall_s": wall_s,
                         **{f"max_abs_diff_{k}": v for k, v in result.checks.items()}})
    tracker.log_artifacts(result.directory, "subnet")
    for name in ("finetune.json", "finetune.png"):
        tracker.log_artifact(job.out / name)
    if "torchscript" in result.files:
        ins = task.input_names
        example = evaluator.example_batch(1)
        tracker.log_model(torch.jit.load(str(result.directory / result.files["torchscript"])),
                          "exported_subnet", example[ins[0]].numpy() if len(ins) == 1 else None)
    p = task.primary.name
    gained = val[p] - before[p] if task.primary.goal == "max" else before[p] - val[p]
    if gained <= 0:
        say(f"finetune: note: no trial beat the inherited weights on validation ({metric} "
            f"{before[p]:.4f} before, {val[p]:.4f} for the best trial); the best trial is "
            "exported all the same, and `raynas export` exports the inherited weights")
    say(f"finetune: subnet {arch.key} -> {result.directory}  test {p} "
        f"{inherited[f'test_{p}']:.4f} -> {after[f'test_{p}']:.4f} (val "
        f"{inherited[f'val_{p}']:.4f} -> {after[f'val_{p}']:.4f}); trial {best['trial_id']} "
        f"({', '.join(f'{k}={_short(v)}' for k, v in values.items()) or 'defaults'}); "
        f"formats {', '.join(result.files)} match it (max |diff| "
        f"{max(result.checks.values()):.2g})")
    return summary


def _plot(job: Job, rows, best, metric: str, before: dict[str, dict]) -> None:
    """The validation metric of every trial over its epochs (the best in red), each
    candidate's value before fine-tuning at epoch 0."""
    from raynas.search.plot import figure, save

    name = metric.removeprefix("val_")
    fig, ax = figure()
    for t in rows:
        if not t["curve"]:
            continue
        xs, ys = zip(*[(0, before[t["arch_key"]][name]), *t["curve"]])
        is_best = t["trial_id"] == best["trial_id"]
        ax.plot(xs, ys, marker="o", ms=3, color="tab:red" if is_best else "grey",
                alpha=1.0 if is_best else 0.5, zorder=3 if is_best else 2,
                label=f"best: trial {t['trial_id']}" if is_best else None)
    ax.set_xlabel("fine-tuning epoch (0: the weights inherited from the supernet)")
    ax.set_ylabel(metric)
    ax.set_title(f"{job.cfg.name}: fine-tuning, {len(rows)} trials")
    ax.legend(loc="best")
    save(fig, job.out / "finetune.png")
