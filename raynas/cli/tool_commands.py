"""Commands that work without a job file: ``latency fit``, ``replay``, ``compare``,
``spaces list|show``, ``ticket export``."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from raynas.errors import ConfigError, RaynasError


def _tracker(uri: str | None = None, experiment: str | None = None):
    """The MLflow store a tool command reads or writes: ``uri``, else MLFLOW_TRACKING_URI,
    else sqlite:///mlruns.db in the working directory."""
    import os

    from raynas import pipeline  # looked up there, where the tests replace it
    from raynas.config import DEFAULT_TRACKING_URI

    return pipeline.MlflowTracker(uri or os.environ.get("MLFLOW_TRACKING_URI")
                                  or DEFAULT_TRACKING_URI, experiment)


def cmd_latency_fit(args: argparse.Namespace) -> int:
    """``raynas latency fit``: fit a latency predictor on a measured table."""
    from raynas.pipeline import fit_latency
    from raynas.space.registry import load_space

    if not 0 < args.holdout < 1:
        raise ConfigError(f"--holdout = {args.holdout}: must be between 0 and 1")
    if not 0 <= args.seed <= 2**32 - 1:
        raise ConfigError(f"--seed = {args.seed}: must be between 0 and {2**32 - 1}")
    if not Path(args.table).is_file():
        raise ConfigError(f"TABLE = {args.table!r}: file does not exist")
    space = load_space(args.space)
    tracker = _tracker(experiment=args.experiment)
    fit_latency(args.table, space, tracker, kind=args.kind, out=args.out,
                target=args.target, holdout=args.holdout, seed=args.seed)
    return 0


def _float_list(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{what} = {text!r}: give comma-separated numbers") from None


def cmd_replay(args: argparse.Namespace) -> int:
    """``raynas replay``: rerun searchers against a table of evaluated subnets. Every
    argument is checked before the table is read."""
    import sys

    from raynas.search.registry import create_searcher, searcher_names
    from raynas.search.replay import (
        check_budgets,
        check_reference,
        load_table,
        parse_constraint,
        parse_objective,
        reference_warnings,
        replay,
    )
    from raynas.space.registry import load_space
    from raynas.space.space import yaml_value

    space = load_space(args.space)
    objectives = ([parse_objective(o) for o in args.objective or ()]
                  or _default_objectives(space))
    constraints = [parse_constraint(c) for c in args.constraint]
    budgets = check_budgets([int(b) for b in _float_list(args.budget, "--budget")])
    reference = _float_list(args.reference, "--reference") if args.reference else None
    check_reference(reference, objectives)
    if args.seeds < 1:
        raise ConfigError(f"--seeds = {args.seeds}: must be at least 1")
    if args.batch < 1:
        raise ConfigError(f"--batch = {args.batch}: must be at least 1")
    options: dict = {"population_size": args.population_size}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option = {item!r}: write KEY=VALUE")
        options[key] = yaml_value(value)
    searchers = args.searcher or ["optuna_nsga2", "random"]
    for name in searchers:
        if name not in searcher_names():
            raise ConfigError(f"--searcher = {name!r}: unknown; choose one of "
                              f"{', '.join(searcher_names())}")
        try:  # each searcher's options, checked by building it once
            create_searcher(name, space=space, objectives=objectives, constraints=constraints,
                            seed=0, **options)
        except ConfigError as e:
            raise ConfigError(re.sub(r"^search\.options\.(\S+) = ", r"--option \1=", str(e))) \
                from None
    table = load_table(args.table, space, objectives)
    size = len(table.records)
    if budgets[-1] > size:
        print(f"[raynas] --budget {','.join(str(b) for b in budgets if b > size)}: the table "
              f"holds {size} distinct subnets; reported at {size}", flush=True)
        budgets = sorted({min(b, size) for b in budgets})
    front = table.true_front(constraints)
    print(f"[raynas] replay {args.table}: {size} distinct subnets "
          f"({table.rows} rows, {table.dropped} without objective values), true front "
          f"{len(front)} points", flush=True)
    for line in reference_warnings(table, reference, constraints) if reference else ():
        print(f"raynas: warning: {line}", file=sys.stderr, flush=True)
    reports = []
    for name in searchers:
        report = replay(table, name, budgets, range(args.seeds), constraints, reference,
                        args.batch, args.missing, options)
        reports.append(report)
        print(f"[raynas] {name}: {args.seeds} seeds in {sum(report.wall_s):.1f} s" +
              (f", {sum(report.skipped)} proposed archs not in the table"
               if args.missing == "skip" else ""), flush=True)
    ref = ", ".join(f"{o.name}={v:g}" for o, v in zip(objectives, reports[0].reference))
    print(f"reference point {ref}; true hypervolume {reports[0].true_hypervolume:.6g}")
    print(f"{'SEARCHER':<16}" + "".join(f"{'N=' + str(b):>22}" for b in reports[0].budgets))
    short = False
    for r in reports:
        cells = []
        for b in r.budgets:
            med, lo, hi = r.summary(b)
            mark = "*" if min(r.evaluated) < b else ""  # ran dry before b in some seed
            short = short or bool(mark)
            cells.append(f"{med:.3f} [{lo:.3f}-{hi:.3f}]{mark}")
        print(f"{r.searcher:<16}" + "".join(f"{c:>22}" for c in cells))
    if short:
        print("* the searcher proposed no new subnet before N in some seed (see "
              "'evaluated' with --out): the figure is for fewer subnets")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"table": args.table, "space": space.name,
                                              "objectives": [[o.name, o.direction]
                                                             for o in objectives],
                                              "reports": [r.to_dict() for r in reports]},
                                             indent=2))
        print(f"[raynas] report -> {args.out}")
    return 0


def _default_objectives(space) -> list:
    from raynas.pipeline.job import default_objectives
    from raynas.tasks import default_task

    if space.family is None:
        raise ConfigError(f"--objective: space {space.name!r} declares no family, so its "
                          "metric is not known; name each objective, e.g. --objective "
                          "accuracy:max --objective latency_ms:min")
    return list(default_objectives(default_task(space)))


def cmd_spaces_list(args: argparse.Namespace) -> int:
    """``raynas spaces list``: one line per space file."""
    from raynas.space import SearchSpace
    from raynas.space.registry import list_spaces, spaces_dir

    paths = list_spaces()
    if not paths:
        print(f"no search spaces found in {spaces_dir()}")
        return 0
    rows = []
    for path in paths:
        try:
            space = SearchSpace.load(path)
        except RaynasError as exc:
            rows.append((path.stem, "?", "invalid", f"{path}  ({exc})"))
            continue
        size = space.size()
        rows.append((space.name, space.family or "-", f"{size:,}" if size else "infinite",
                     str(path)))
    # Columns as wide as their longest entry: family names and subnet counts vary a lot.
    rows.insert(0, ("NAME", "FAMILY", "SUBNETS", "FILE"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    for name, family, size, file in rows:
        print(f"{name:<{w[0]}}  {family:<{w[1]}}  {size:>{w[2]}}  {file}")
    return 0


def cmd_spaces_show(args: argparse.Namespace) -> int:
    """``raynas spaces show``: the dimensions of one space."""
    from raynas.space.registry import load_space

    space = load_space(args.name)
    size = space.size()
    print(f"{space.name}  (family {space.family or 'none: replay only'}, "
          f"{f'{size:,}' if size else 'infinitely many'} subnets, "
          f"encoding {space.encoding_size} floats, fingerprint {space.fingerprint})")
    if space.description:
        print(space.description)
    if space.model:
        print("model: " + ", ".join(f"{k}={v}" for k, v in space.model.items()))
    print(f"{'DIMENSION':<16} {'TYPE':<10} VALUES (bounds inclusive)")
    for d in space.dims:
        spec = d.spec()
        kind = spec.pop("type")
        if kind == "per_layer":
            text = f"{spec['values']} per layer, {spec['depth']} layers"
        elif kind == "choice":
            text = str(spec["values"])
        else:
            text = f"[{spec['low']}, {spec['high']}]" + (" log" if spec.get("log") else "")
        print(f"{d.name:<16} {kind:<10} {text}")
    return 0


def _ticket_checkpoint(source: str, uri: str | None) -> Path:
    """SOURCE of ``ticket export``: a checkpoint directory (or its ``supernet.pt``), a job's
    output directory (its ``checkpoint/``), or an MLflow run id (its checkpoint)."""
    import re
    import tempfile

    from raynas.checkpoint import FILENAME

    path = Path(source)
    if path.is_file() or (path / FILENAME).is_file():
        return path
    if (path / "checkpoint" / FILENAME).is_file():
        return path / "checkpoint"
    if path.exists():
        raise ConfigError(f"SOURCE = {source!r}: holds no checkpoint ({FILENAME}, or "
                          f"checkpoint/{FILENAME} in a job's output directory)")
    if not re.fullmatch(r"[0-9a-f]{32}", source):
        raise ConfigError(f"SOURCE = {source!r}: neither an existing checkpoint or output "
                          "directory nor an MLflow run id")
    from raynas.pipeline import checkpoint_from_run

    return checkpoint_from_run(_tracker(uri), source, Path(tempfile.mkdtemp()))


def cmd_ticket_export(args: argparse.Namespace) -> int:
    """``raynas ticket export``: a subnet's arch and pruning masks, for ``train.init_ticket``."""
    from raynas.checkpoint import load_checkpoint
    from raynas.cli.job_commands import _read_arch
    from raynas.tickets import make_ticket, save_ticket

    checkpoint = _ticket_checkpoint(args.source, args.tracking_uri)
    if args.arch in ("largest", "smallest"):
        space = load_checkpoint(checkpoint)["space"]
        arch = space.largest() if args.arch == "largest" else space.smallest()
    else:
        arch = _read_arch(args.arch)
    ticket = make_ticket(checkpoint, arch)
    path = save_ticket(ticket, args.out)
    s = ticket["sparsity"]
    print(f"[raynas] ticket -> {path}: space {ticket['space']['name']!r}, epoch "
          f"{ticket['epoch'] + 1}, sparsity {s['sparsity']:.3f} ({int(s['zero_weights'])} of "
          f"{int(s['prunable_weights'])} conv/linear weights of the subnet are 0)")
    print(f"[raynas] next: raynas train JOB.yaml train.init_ticket={path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``raynas compare``: several searches' fronts in one plot and one table."""
    import tempfile

    from raynas.search.compare import compare, load_source, write_outputs

    labels = args.label or []
    if labels and len(labels) != len(args.sources):
        raise ConfigError(f"--label is given {len(labels)} times for {len(args.sources)} "
                          "sources: give one per source, or none")
    tracker, sources = None, []
    for i, source in enumerate(args.sources):
        path = Path(source)
        if not path.exists() and re.fullmatch(r"[0-9a-f]{32}", source):
            tracker = tracker or _tracker(args.tracking_uri)
            path = Path(tempfile.mkdtemp())
            for name in ("evaluations.parquet", "pareto.parquet", "search.json"):
                try:
                    tracker.download_artifacts(source, name, path)
                except Exception:
                    raise ConfigError(f"SOURCE = {source!r}: the run has no {name} artifact; "
                                      "give the run id of a search stage") from None
            label = labels[i] if labels else source[:8]
        elif not path.is_dir():
            raise ConfigError(f"SOURCE = {source!r}: neither a search's output folder nor an "
                              "MLflow run id")
        else:
            label = labels[i] if labels else path.name
        sources.append(load_source(path, label))
    objectives, reference, rows = compare(sources)
    out = Path(args.out)
    write_outputs(sources, objectives, reference, rows, out)
    print((out / "compare.md").read_text(), end="")
    print(f"[raynas] plot {out / 'compare.png'}; table {out / 'compare.parquet'}")
    return 0
