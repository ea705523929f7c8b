"""The hyperparameter commands: ``raynas tune`` (how the job's supernet is trained) and
``raynas finetune`` (a chosen subnet trained on, with its own small study)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

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


def add_tune_parser(sub, job_args, source_args) -> None:
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
    add_finetune_parser(sub, job_args, source_args)


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


_FINETUNE_HELP = """\
Fine-tune a subnet of a trained supernet: its static model starts from the weights it
inherited (BN recalibrated, as the search scored it) and trains on the labels for
finetune.epochs with the job's optimizer and schedule at finetune.lr, optionally distilled
from the supernet's largest subnet (finetune.distill, the KL weight). A small Ray Tune study
chooses the values: finetune.hparams (default: lr, log-uniform in [1e-3, 0.1]) over
finetune.trials trials, suggested by hpo.searcher. With several candidate subnets (--pick
0,2,5 or --pick all) the subnet is a dim of the same space, so the searcher chooses which
subnet to deploy and how to fine-tune it together. With --search-arch the space holds the
architecture dims themselves (arch.<dim>, arch.<dim>.<layer>): each trial's subnet comes
from the shared evaluator actor with its inherited weights and metrics, and one over a
budget (search.latency_budget_ms, search.constraints, --budget) is not trained; Optuna and
Nevergrad are told its violation, and rank it below every subnet within the budgets. With a
search's front (--from-run, --pareto), up to half the trials start from its points within
the budgets, spread over it.
Each trial trains in its own process (1 CPU, or 1 GPU with train.use_gpu), or with
finetune.num_workers > 1 as a Ray Train run of that many data-parallel workers.

The best trial by validation metric is exported to <output_dir>/subnet like `raynas export`
(state dict, TorchScript, ONNX, each checked against the fine-tuned weights); finetune.json
holds every trial and the test metrics before and after, finetune.png the curves. MLflow
gets a 'finetune' run with a child run per trial."""


def add_finetune_parser(sub, job_args, source_args) -> None:
    p = sub.add_parser(
        "finetune", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="fine-tune a chosen subnet (its own small HPO) and export it",
        description=_FINETUNE_HELP,
        epilog="examples:\n"
               "  raynas finetune jobs/quickstart.yaml --from-run <search run id>\n"
               "  raynas finetune jobs/quickstart.yaml --checkpoint outputs/quickstart/"
               "checkpoint --pareto outputs/quickstart/pareto.parquet --pick 0,1,2\n"
               "  raynas finetune jobs/quickstart.yaml --from-run <search run id> "
               "--budget latency_ms<=0.5 --pick all finetune.distill=0.5\n"
               "  raynas finetune jobs/quickstart.yaml --checkpoint outputs/quickstart/"
               "checkpoint --arch outputs/quickstart/subnet/arch.json finetune.trials=8\n"
               "  raynas finetune jobs/quickstart.yaml --from-run <search run id> "
               "--search-arch --budget latency_ms<=0.5 finetune.trials=16")
    job_args(p)
    source_args(p, "fine-tune")
    p.add_argument("--pick", metavar="best|N|N,M,...|all", help="the Pareto points to "
                   "fine-tune, ordered by latency: 'best' (default: export.pick), indices, or "
                   "'all'; more than one makes the subnet a dim of the study")
    p.add_argument("--budget", action="append", default=[], metavar="METRIC<=LIMIT",
                   help="only Pareto points meeting this budget; with --search-arch, only "
                   "subnets meeting it are trained (repeatable)")
    p.add_argument("--search-arch", action="store_true", help="search the space's "
                   "architecture dims together with finetune.hparams, instead of fine-tuning "
                   "Pareto points or --arch (a front given starts the study)")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from raynas.checkpoint import load_checkpoint
    from raynas.cli.job_commands import _footer, _load_job, _read_arch
    from raynas.errors import ConfigError
    from raynas.pipeline import checkpoint_from_run, front_from_run
    from raynas.pipeline.finetune import finetune_stage
    from raynas.pipeline.job import record_metrics
    from raynas.search.replay import parse_constraint
    from raynas.search.results import read_records

    job = _load_job(args)
    budgets = [parse_constraint(b, "--budget", record_metrics(job.task, job.cfg.latency))
               for b in args.budget]
    if args.search_arch and (args.arch or args.pick):
        raise ConfigError("--search-arch searches the space for the subnet; --arch and "
                          "--pick name it or choose among Pareto points: give one or the "
                          "other")
    if args.arch and (args.pick or budgets or args.pareto):
        raise ConfigError("--arch names the subnet itself; --pick, --budget and --pareto "
                          "choose among Pareto points: give one or the other")
    if not args.from_run and not args.checkpoint:
        raise ConfigError("finetune needs --from-run RUN_ID, or --checkpoint DIR with "
                          "--pareto FILE, --arch JSON or --search-arch")
    if args.checkpoint and not (args.arch or args.pareto or args.search_arch):
        raise ConfigError("finetune with --checkpoint needs --pareto FILE, --arch JSON or "
                          "--search-arch")
    tmp = Path(tempfile.mkdtemp())
    if args.arch:
        points = [{"arch": job.space.validate(_read_arch(args.arch)).to_dict()}]
    elif args.search_arch and not (args.pareto or args.from_run):
        points = []
    else:
        if args.pareto and not Path(args.pareto).is_file():
            raise ConfigError(f"--pareto = {args.pareto!r}: file does not exist")
        front = (read_records(args.pareto) if args.pareto
                 else front_from_run(job.tracker, args.from_run, tmp))
        # --search-arch starts from the front's points within the budgets.
        points = front if args.search_arch else _picked(
            front, args.pick or job.cfg.export.pick, job, budgets)
    checkpoint = (Path(args.checkpoint) if args.checkpoint
                  else checkpoint_from_run(job.tracker, args.from_run, tmp))
    # Before any run or folder: a corrupt or foreign checkpoint fails here.
    load_checkpoint(checkpoint, expected=job.space, weights=job.cfg.weights.model_dump())
    outcome = finetune_stage(job, checkpoint, points, search_arch=args.search_arch,
                             budgets=budgets if args.search_arch else ())
    s = outcome.summary
    p = job.task.primary.name
    print(f"[raynas] finetune: {len(outcome.trials)} trials in {outcome.wall_s:.1f} s; "
          f"subnet {s['arch_key']}: test {p} {s['before'][f'test_{p}']:.4f} before, "
          f"{s['after'][f'test_{p}']:.4f} after -> {s['export']['directory']}")
    _footer(job, outcome.run_id)
    return 0


def _picked(front, pick, job, budgets) -> list[dict]:
    """The Pareto points ``--pick`` names (after ``--budget``): 'best', 'all' or indices."""
    from raynas.errors import ConfigError
    from raynas.pipeline.export import choose, within_budgets

    pick = str(pick)
    if pick in ("best", "all"):
        best = choose(front, "best", job.objectives, budgets)  # an empty front: its error
        return within_budgets(front, budgets) if pick == "all" else [best]
    try:
        indices = [int(i) for i in pick.split(",")]
    except ValueError:
        raise ConfigError(f"--pick = {pick!r}: use 'best', 'all', an index or indices "
                          "separated by commas (0,2,5)") from None
    return [choose(front, i, job.objectives, budgets) for i in indices]
