"""Commands that take a job file: ``run``, ``train``, ``search``, ``export``, ``latency profile``.

Each loads and checks the job (``_load_job``) before any work, so bad input leaves no MLflow
store, run or output directory behind.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from raynas.errors import ConfigError


def _load_job(args: argparse.Namespace) -> Any:
    """The job of ``args.job`` with its overrides and ``--output-dir``, checked up front."""
    from raynas.config import load_config
    from raynas.pipeline import Job

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    job = Job(load_config(args.job, overrides))
    if args.output_dir:
        field, value = "--output-dir", args.output_dir
    else:
        field, value = f"{args.job}: output_dir", job.cfg.output_dir or str(job.out)
    _check_output_dir(job.out, field, value)
    return job


def _check_output_dir(out: Path, field: str, value: str) -> None:
    """ConfigError unless ``out`` is a directory or can be made one.

    The stages make the directory only after the tracking store and a run exist; a path
    that cannot be a directory would fail there, half-way, with a traceback.
    """
    for path in (out, *out.parents):
        if not path.exists():
            continue  # made later, if its first existing ancestor is a directory
        if path.is_dir():
            return
        where = "is an existing file" if path == out else f"lies under the file {str(path)!r}"
        raise ConfigError(f"{field} = {value!r}: {where}; give a directory "
                          "(new or existing)")


def _footer(job: Any, run_id: str | None) -> None:
    uri = job.tracker.uri if hasattr(job.tracker, "uri") else None
    if uri:
        print(f"[raynas] MLflow run {run_id} in {uri}\n"
              f"[raynas] browse: mlflow ui --backend-store-uri {uri}\n"
              f"[raynas]   then open {job.tracker.runs_url()}")


def cmd_run(args: argparse.Namespace) -> int:
    """``raynas run``: train, search and export under one parent run."""
    job = _load_job(args)
    summary = job.run(resume=args.resume)
    print(f"[raynas] done in {summary['wall_s']:.1f} s; outputs in {job.out}")
    _footer(job, summary["parent_run_id"])
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``raynas train``: train the supernet only."""
    job = _load_job(args)
    checkpoint, run_id = job.train()
    print(f"[raynas] next: raynas search {args.job} --from-run {run_id}")
    _footer(job, run_id)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """``raynas search``: search a trained supernet (a checkpoint or a train run)."""
    from raynas.pipeline import checkpoint_from_run

    job = _load_job(args)
    train_id = args.from_run
    checkpoint = (Path(args.checkpoint) if args.checkpoint else
                  checkpoint_from_run(job.tracker, train_id, Path(tempfile.mkdtemp())))
    summary = job.search(checkpoint, train_run_id=train_id)
    print(f"[raynas] next: raynas export {args.job} --from-run {summary.run_id}")
    _footer(job, summary.run_id)
    return 0


def cmd_fidelity(args: argparse.Namespace) -> int:
    """``raynas fidelity``: rank agreement of the supernet with standalone training."""
    from raynas.pipeline import checkpoint_from_run
    from raynas.pipeline.fidelity import check_gate, run_fidelity

    job = _load_job(args)
    checkpoint = None
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    elif args.from_run:
        checkpoint = checkpoint_from_run(job.tracker, args.from_run, Path(tempfile.mkdtemp()))
    outcome = run_fidelity(job, checkpoint, train_run_id=args.from_run)
    print((outcome.directory / "fidelity.md").read_text(), end="")
    _footer(job, outcome.run_id)
    check_gate(job, outcome)  # after the report: exit status 3 below the threshold
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``raynas export``: export one subnet (a Pareto point or a given arch)."""
    from raynas.checkpoint import load_checkpoint
    from raynas.latency.targets import device_budgets, device_latency
    from raynas.pipeline import checkpoint_from_run, front_from_run
    from raynas.pipeline.deploy import parse_budgets
    from raynas.pipeline.export import within_budgets
    from raynas.pipeline.job import record_metrics
    from raynas.search.replay import parse_constraint
    from raynas.search.results import read_records

    job = _load_job(args)
    known = record_metrics(job.task, job.cfg.latency)
    budgets = [parse_constraint(b, "--budget", known) for b in args.budget]
    sweep = parse_budgets(args.budgets, known) if args.budgets else []
    if args.arch and (budgets or sweep):
        raise ConfigError("--budget and --budgets pick among Pareto points; --arch names the "
                          "subnet itself: give one or the other")
    targets = [t.strip() for t in args.targets.split(",")] if args.targets else []
    for t in targets:
        device_latency(job.cfg.latency, t)  # a device the job does not list: an error
    if sweep and args.pick is not None:
        raise ConfigError("--pick chooses one Pareto point; --budgets picks the best under "
                          "each budget: give one or the other")
    if not args.from_run and not args.checkpoint:
        raise ConfigError("export needs --from-run RUN_ID, or --checkpoint DIR with "
                          "--pareto FILE or --arch JSON")
    tmp = Path(tempfile.mkdtemp())
    checkpoint = (Path(args.checkpoint) if args.checkpoint
                  else checkpoint_from_run(job.tracker, args.from_run, tmp))
    pick = args.pick
    if pick is not None and pick != "best":
        try:
            pick = int(pick)
        except ValueError:
            raise ConfigError(f"--pick = {pick!r}: use 'best' or an integer index") from None
    if args.arch:
        arch = job.space.validate(_read_arch(args.arch))
        front, pick = [{"arch": arch.to_dict(), "latency_ms": float("nan")}], 0
    elif args.pareto:
        if not Path(args.pareto).is_file():
            raise ConfigError(f"--pareto = {args.pareto!r}: file does not exist")
        front = read_records(args.pareto)
    elif args.from_run:
        front = front_from_run(job.tracker, args.from_run, tmp)
    else:
        raise ConfigError("export with --checkpoint needs --pareto FILE or --arch JSON")
    fronts = {t: _device_front(job, t, front, args, tmp) for t in targets} or {None: front}
    for target, points in fronts.items():  # a budget no point meets: an error before work
        for b in sweep or [None]:
            within_budgets(points, device_budgets([*budgets, *([b] if b else [])],
                                                  job.cfg.latency, target))
    # Job.export opens its MLflow run and output directory before the evaluator reads the
    # checkpoint: a corrupt or foreign one must fail here, before anything is written.
    load_checkpoint(checkpoint, expected=job.space, weights=job.cfg.weights.model_dump())
    if sweep or targets:
        job.deploy(checkpoint, fronts, sweep, budgets, model_name=args.register,
                   pick="best" if pick is None else pick)
        print(f"[raynas] exported {len(sweep or [None]) * len(fronts)} subnets to "
              f"{job.out / 'deploy'}")
        return 0
    result = job.export(checkpoint, front, pick=pick, budgets=budgets,
                        register=(args.register, None, {}) if args.register else None)
    print(f"[raynas] exported to {result['directory']}")
    return 0


def _device_front(job, target: str, front: list[dict], args: argparse.Namespace,
                  tmp: Path) -> list[dict]:
    """The Pareto front on device ``target``: the search's own for the job's target, else
    the ``pareto_<device>.parquet`` a search with ``latency.targets`` wrote (a run's
    ``devices/`` artifact, or beside ``--pareto``)."""
    from raynas.search.results import read_records

    if target == job.cfg.latency.target:
        return front
    name = f"pareto_{target}.parquet"
    if args.from_run and not args.pareto:
        try:
            return read_records(job.tracker.download_artifacts(args.from_run,
                                                               f"devices/{name}", tmp))
        except Exception:
            pass
    elif args.pareto and Path(args.pareto).with_name(name).is_file():
        return read_records(Path(args.pareto).with_name(name))
    raise ConfigError(f"--targets: the search has no front on {target!r} (no {name}); "
                      f"search with latency.targets naming it")


def _read_arch(text: str) -> dict:
    source = text
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"--arch = {text!r}: neither JSON nor an existing file")
        try:
            source = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--arch = {text!r}: not a JSON text file (byte at offset "
                              f"{exc.start} is not UTF-8)") from None
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch: not valid JSON ({exc.msg} at position {exc.pos})") \
            from None
    if isinstance(value, dict) and "arch" in value and isinstance(value["arch"], dict):
        value = value["arch"]  # an exported arch.json works as is
    return value


def cmd_latency_profile(args: argparse.Namespace) -> int:
    """``raynas latency profile``: measure N subnets of the job's space on its target."""
    if args.target:
        args.overrides = [*args.overrides, f"latency.target={args.target}"]
    if args.n < 1:
        raise ConfigError(f"--n = {args.n}: must be at least 1")
    job = _load_job(args)
    job.profile_latency(args.n, out=args.out, lut=args.lut)
    return 0


def cmd_latency_noise(args: argparse.Namespace) -> int:
    """``raynas latency noise``: the noise floor of measured latency on a job's device."""
    if args.n < 1:
        raise ConfigError(f"--n = {args.n}: must be at least 1")
    if args.repeats < 2:
        raise ConfigError(f"--repeats = {args.repeats}: must be at least 2 (a first timing "
                          "and one to compare with it)")
    job = _load_job(args)
    from raynas.pipeline.latency import latency_noise

    latency_noise(job, args.n, args.repeats, args.target)
    return 0
