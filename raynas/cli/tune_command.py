"""``raynas tune``: hyperparameter search over how the job's supernet is trained."""

from __future__ import annotations

import argparse

_HELP = """\
Search the job's hparams: section with Ray Tune. Each trial trains the job's supernet with
Ray Train (train.num_workers workers, GPUs with train.use_gpu) using the trial's values;
every epoch it reports the mean validation metric of a fixed probe set of subnets (the
largest, the smallest and hpo.probes - 2 spread over FLOPs), which the scheduler acts on:

  fifo   every trial trains all train.epochs
  asha   weaker trials stop early (options: grace_period, reduction_factor, brackets)
  pbt    at every perturbation_interval epochs the weaker trials continue from a stronger
         trial's checkpoint with mutated hyperparameters (the optimizer keeps the trial's
         own learning rate and weight decay, and the donor's moments)

hpo.searcher suggests the values: optuna_tpe, nevergrad (hpo.options: {optimizer: NGOpt})
or random (the only one pbt takes). hparams keys are dotted job keys under train, data,
weights, task or seed, each a dim as in a space file, bounds inclusive:

  hparams:
    train.lr: {type: float, low: 0.01, high: 0.3, log: true}
    train.weight_decay: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    train.num_subnets: {type: int, low: 2, high: 4}
    train.distill.name: {type: choice, values: [kl, alpha_divergence]}

Writes tune.json (every trial: values, status, curve), tune.png (the curves) and
best_job.yaml (the best completed trial's job, for `raynas run`) in the output folder;
MLflow gets a 'tune' run with a child run per trial."""


def add_tune_parser(sub, job_args) -> None:
    p = sub.add_parser(
        "tune", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="search how the supernet is trained (Ray Tune: ASHA, PBT)", description=_HELP,
        epilog="examples:\n  raynas tune jobs/tune_quickstart.yaml\n"
               "  raynas tune jobs/tune_quickstart.yaml hpo.scheduler=pbt hpo.searcher=random\n"
               "  raynas tune jobs/tune_quickstart.yaml --resume   # after an interruption")
    job_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the study interrupted in the output directory (Ray Tune "
                        "restores its trials from their latest checkpoints; the same MLflow "
                        "runs)")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from raynas.cli.job_commands import _footer, _load_job
    from raynas.hpo.study import run_study

    job = _load_job(args)
    try:
        outcome = run_study(job, resume=args.resume)
    except KeyboardInterrupt:
        print("[raynas] tune: interrupted; the same command with --resume continues the "
              "study from its trials' latest checkpoints", flush=True)
        raise
    best = outcome.best
    values = ", ".join(f"{k}={v!r}" for k, v in best["config"].items())
    stopped = sum(t["status"] == "stopped" for t in outcome.trials)
    failed = sum(t["status"] == "failed" for t in outcome.trials)
    print(f"[raynas] tune: {len(outcome.trials)} trials ({stopped} stopped early"
          f"{f', {failed} failed' if failed else ''}) in "
          f"{outcome.wall_s:.1f} s; best: trial {best['trial_id']} ({values})\n"
          f"[raynas] next: raynas run {job.out / 'best_job.yaml'}")
    _footer(job, outcome.run_id)
    return 0
