"""``raynas``: the command line.

Bad input exits with status 2 and one line on stderr naming the field, the value and what is
allowed; success exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from raynas.errors import ConfigError, RaynasError

_OVERRIDES_HELP = ("dotted.key=value overrides of the job file, e.g. train.epochs=5 "
                   "search.budget=64 search.searcher=optuna_tpe")


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="JOB.yaml", help="job file (see jobs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.add_argument("--output-dir", metavar="DIR",
                   help="where pareto.parquet, pareto.png, the checkpoint and the exported "
                        "subnet go (default: outputs/<job name>)")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="raynas", formatter_class=fmt,
        description="Train a weight-sharing supernet once on Ray, search its subnets for "
                    "accuracy vs latency, export the winners.",
        epilog="examples:\n"
               "  raynas run jobs/quickstart.yaml                # train -> search -> export\n"
               "  raynas run jobs/quickstart.yaml search.budget=64 train.epochs=5\n"
               "  raynas spaces list\n"
               "  mlflow ui --backend-store-uri sqlite:///mlruns.db   # browse the runs\n\n"
               "Runs are tracked in MLflow: MLFLOW_TRACKING_URI if set, else the job's "
               "tracking.uri,\nelse sqlite:///mlruns.db in the working directory.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run", formatter_class=fmt, help="train, search and export in one tracked job",
        description="Train the supernet (Ray Train), search its subnets (Ray Tune + the "
                    "shared evaluator actor), export the chosen subnet: one MLflow parent "
                    "run with a child run per stage.",
        epilog="examples:\n  raynas run jobs/quickstart.yaml search.latency_budget_ms=0.5\n"
               "  raynas run jobs/quickstart.yaml --resume   # after an interruption\n\n"
               "On a cluster (see README):\n"
               "  ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- "
               "python -m raynas run jobs/quickstart.yaml")
    _job_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the job interrupted in the output directory: reuse a "
                        "finished training, continue an interrupted one from its latest "
                        "checkpoint, restore an interrupted search (Tune experiment and "
                        "searcher state; no subnet evaluated twice), in the same MLflow runs")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "train", formatter_class=fmt, help="train the supernet only",
        description="Train the supernet of the job's space with Ray Train; prints the "
                    "checkpoint directory and the MLflow run id for `raynas search`.",
        epilog="examples:\n  raynas train jobs/quickstart.yaml train.epochs=30\n"
               "  raynas train jobs/quickstart.yaml train.resume_from=outputs/quickstart/"
               "checkpoint train.epochs=40")
    _job_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "search", formatter_class=fmt, help="search a trained supernet",
        description="Search the subnets of a trained supernet through Ray Tune; writes "
                    "pareto.parquet and pareto.png.",
        epilog="examples:\n  raynas search jobs/quickstart.yaml --checkpoint "
               "outputs/quickstart/checkpoint\n"
               "  raynas search jobs/quickstart.yaml --from-run <train run id> "
               "search.searcher=optuna_tpe")
    _job_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory")
    src.add_argument("--from-run", metavar="RUN_ID", help="MLflow run id of a train stage")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "export", formatter_class=fmt, help="export a subnet as a static model",
        description="Export one subnet as a plain torch model (state_dict + arch.json), "
                    "TorchScript and ONNX, each checked against the supernet's output.",
        epilog="examples:\n  raynas export jobs/quickstart.yaml --from-run <search run id>\n"
               "  raynas export jobs/quickstart.yaml --from-run <search run id> --pick 0\n"
               "  raynas export jobs/quickstart.yaml --checkpoint outputs/quickstart/"
               "checkpoint --pareto outputs/quickstart/pareto.parquet\n"
               "  raynas export jobs/quickstart.yaml --checkpoint outputs/quickstart/"
               "checkpoint --arch arch.json")
    _job_args(p)
    p.add_argument("--from-run", metavar="RUN_ID", help="MLflow run id of a search stage "
                   "(its Pareto front and checkpoint)")
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory")
    p.add_argument("--pareto", metavar="FILE", help="pareto.parquet from a search")
    p.add_argument("--arch", metavar="JSON|FILE", help="export this arch instead of a "
                   "Pareto point (JSON text or a file holding it)")
    p.add_argument("--pick", metavar="best|N", help="Pareto point: 'best' (highest "
                   "accuracy within the latency budget) or its index, ordered by latency")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("latency", formatter_class=fmt,
                       help="measure latency datasets, fit latency predictors",
                       description="Latency models for a target device: measured tables, "
                                   "per-op lookup tables and learned predictors.",
                       epilog="examples:\n"
                              "  raynas latency profile jobs/quickstart.yaml --target "
                              "local-cpu --n 500 --lut lut.json\n"
                              "  raynas latency fit outputs/quickstart/latency/local-cpu."
                              "parquet --space digits_cnn")
    latency = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    prof = latency.add_parser(
        "profile", formatter_class=fmt, help="measure N subnets on a target",
        description="Time N distinct random subnets of the job's space on the latency "
                    "target (warm-up, median of repeats, the job's batch size and threads; "
                    "on the Ray node carrying latency.resource when set). Rows go to a "
                    "Parquet table, keyed by (arch, target, batch size, threads, torch "
                    "version); rows already there are reused. The run is tracked in MLflow.",
        epilog="examples:\n"
               "  raynas latency profile jobs/quickstart.yaml --target local-cpu --n 500\n"
               "  raynas latency profile jobs/quickstart.yaml --n 300 --lut lut.json "
               "latency.threads=2\n"
               "  raynas latency profile jobs/quickstart.yaml --target edge --n 200 "
               "latency.resource=target:edge")
    _job_args(prof)
    prof.add_argument("--target", metavar="NAME", help="target device name (sets "
                      "latency.target)")
    prof.add_argument("--n", type=int, default=500, metavar="N",
                      help="distinct subnets to measure (default 500; all of a smaller space)")
    prof.add_argument("--out", metavar="FILE.parquet", help="table to write or extend "
                      "(default latency.table, else outputs/<job>/latency/<target>.parquet)")
    prof.add_argument("--lut", metavar="FILE.json", help="also build a per-op lookup table "
                      "here and check it against the measured subnets")
    prof.set_defaults(func=cmd_latency_profile)
    fit = latency.add_parser(
        "fit", formatter_class=fmt, help="fit a latency predictor on a measured table",
        description="Fit a latency predictor on a table from `raynas latency profile` (or a "
                    "search's latency.table) and report on held-out subnets: RMSE, MAPE, the "
                    "share within 10%% and Kendall tau. Kinds: mlp (HAT's MLP on the arch "
                    "encoding) and flops (a line through FLOPs). Use it in a job with "
                    "latency.model=predictor (or flops) latency.predictor=FILE.",
        epilog="examples:\n"
               "  raynas latency fit outputs/quickstart/latency/local-cpu.parquet --space "
               "digits_cnn\n"
               "  raynas latency fit table.parquet --space digits_cnn --kind flops --out "
               "flops.pt\n"
               "  raynas run jobs/quickstart.yaml latency.model=predictor "
               "latency.predictor=outputs/quickstart/latency/local-cpu.mlp.pt")
    fit.add_argument("table", metavar="TABLE", help="Parquet table of measured latencies")
    fit.add_argument("--space", required=True, metavar="NAME|FILE", help="the table's space")
    fit.add_argument("--kind", choices=("mlp", "flops"), default="mlp")
    fit.add_argument("--target", metavar="NAME", help="the target's rows (needed when the "
                     "table holds several)")
    fit.add_argument("--out", metavar="FILE.pt", help="predictor file (default beside TABLE)")
    fit.add_argument("--holdout", type=float, default=0.2, metavar="F",
                     help="share of subnets held out for the report (default 0.2)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--experiment", default="raynas-latency", metavar="NAME",
                     help="MLflow experiment (default raynas-latency; the tracking URI is "
                          "MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    fit.set_defaults(func=cmd_latency_fit)

    p = sub.add_parser(
        "replay", formatter_class=fmt, help="rerun searchers against recorded evaluations",
        description="Run searchers against a table of evaluated subnets instead of a live "
                    "supernet, and report the hypervolume each reaches after N distinct "
                    "subnets, as a ratio to the table's own true front (median [min-max] "
                    "over seeds).\n\n"
                    "TABLE: Parquet or CSV, one row per subnet, one column per dimension of "
                    "the space\n(categorical values may be strings, per-layer values JSON "
                    "lists like \"[3, 5]\"), one column per\nobjective. A search's "
                    "evaluations.parquet is such a table.",
        epilog="examples:\n"
               "  raynas replay outputs/quickstart/evaluations.parquet --space digits_cnn\n"
               "  raynas replay table.csv --space my_space.yaml --searcher optuna_nsga2 "
               "--searcher random \\\n"
               "      --budget 50,100,200 --seeds 5 --objective accuracy:max "
               "--objective latency_ms:min\n"
               "  raynas replay table.parquet --space digits_cnn --searcher hat_evolution "
               "--option parents_size=8 \\\n"
               "      --constraint latency_ms<=0.5 --missing skip --reference 0,2.0")
    p.add_argument("table", metavar="TABLE", help="Parquet or CSV file of evaluated subnets")
    p.add_argument("--space", required=True, metavar="NAME|FILE",
                   help="the space the table's archs belong to")
    p.add_argument("--searcher", action="append", metavar="NAME",
                   help="searcher to replay (repeat to compare; default: optuna_nsga2 and "
                        "random)")
    p.add_argument("--budget", default="50,100,200", metavar="N[,N...]",
                   help="distinct subnets per replay; each budget is reported (default "
                        "50,100,200)")
    p.add_argument("--seeds", type=int, default=5, metavar="K", help="seeds 0..K-1 (default 5)")
    p.add_argument("--objective", action="append", metavar="NAME:max|min",
                   help="objective column and direction (repeat; default accuracy:max and "
                        "latency_ms:min)")
    p.add_argument("--constraint", action="append", default=[], metavar="METRIC<=LIMIT",
                   help="hard limit: violating subnets never count (repeatable)")
    p.add_argument("--reference", metavar="V[,V...]",
                   help="hypervolume reference point, one value per objective (default: "
                        "each objective's worst value in the table, 10%% of its range beyond)")
    p.add_argument("--missing", choices=("error", "skip"), default="error",
                   help="a proposed arch not in the table: stop with an error (default) or "
                        "skip it (told as failed, not counted against the budget)")
    p.add_argument("--batch", type=int, default=16, metavar="N",
                   help="archs asked before their results are told, as in a live search's "
                        "Tune trial (default 16)")
    p.add_argument("--population-size", type=int, default=32, metavar="N",
                   help="population of NSGA-II and hat_evolution (default 32)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="searcher option (YAML value), like search.options in a job")
    p.add_argument("--out", metavar="FILE.json", help="also write the report as JSON")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("spaces", formatter_class=fmt, help="list or show search spaces",
                       description="Search spaces found in search_spaces/ (or "
                                   "$RAYNAS_SPACES_DIR).",
                       epilog="examples:\n  raynas spaces list\n  raynas spaces show digits_cnn")
    spaces = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    spaces.add_parser(
        "list", help="one line per space", formatter_class=fmt,
        description="One line per space file: name, family, number of subnets, path.",
        epilog="example:\n  raynas spaces list\n  RAYNAS_SPACES_DIR=my_spaces raynas spaces list",
    ).set_defaults(func=cmd_spaces_list)
    show = spaces.add_parser(
        "show", help="dimensions of one space", formatter_class=fmt,
        description="The dimensions of one space, their types and allowed values "
                    "(bounds inclusive).",
        epilog="examples:\n  raynas spaces show digits_cnn\n"
               "  raynas spaces show search_spaces/tiny_cnn.yaml")
    show.add_argument("name", help="space name or path to its YAML file")
    show.set_defaults(func=cmd_spaces_show)
    return parser


def _load_job(args):
    from raynas.config import load_config
    from raynas.pipeline import Job

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    return Job(load_config(args.job, overrides))


def _footer(job, run_id) -> None:
    uri = job.tracker.uri if hasattr(job.tracker, "uri") else None
    if uri:
        print(f"[raynas] MLflow run {run_id} in {uri}\n"
              f"[raynas] browse: mlflow ui --backend-store-uri {uri}")


def cmd_run(args) -> int:
    job = _load_job(args)
    summary = job.run(resume=args.resume)
    print(f"[raynas] done in {summary['wall_s']:.1f} s; outputs in {job.out}")
    _footer(job, summary["parent_run_id"])
    return 0


def cmd_train(args) -> int:
    job = _load_job(args)
    checkpoint, run_id = job.train()
    print(f"[raynas] next: raynas search {args.job} --from-run {run_id}")
    _footer(job, run_id)
    return 0


def cmd_search(args) -> int:
    from raynas.pipeline import checkpoint_from_run

    job = _load_job(args)
    train_id = args.from_run
    checkpoint = (Path(args.checkpoint) if args.checkpoint else
                  checkpoint_from_run(job.tracker, train_id, Path(tempfile.mkdtemp())))
    summary = job.search(checkpoint, train_run_id=train_id)
    print(f"[raynas] next: raynas export {args.job} --from-run {summary.run_id}")
    _footer(job, summary.run_id)
    return 0


def cmd_export(args) -> int:
    from raynas.pipeline import checkpoint_from_run, front_from_run
    from raynas.search.results import read_records

    job = _load_job(args)
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
        front, pick = [{"arch": arch.to_dict(), "accuracy": float("nan"),
                        "latency_ms": float("nan")}], 0
    elif args.pareto:
        if not Path(args.pareto).is_file():
            raise ConfigError(f"--pareto = {args.pareto!r}: file does not exist")
        front = read_records(args.pareto)
    elif args.from_run:
        front = front_from_run(job.tracker, args.from_run, tmp)
    else:
        raise ConfigError("export with --checkpoint needs --pareto FILE or --arch JSON")
    result = job.export(checkpoint, front, pick=pick)
    print(f"[raynas] exported to {result['directory']}")
    return 0


def _read_arch(text: str) -> dict:
    source = text
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"--arch = {text!r}: neither JSON nor an existing file")
        source = path.read_text()
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch: not valid JSON ({exc.msg} at position {exc.pos})") \
            from None
    if isinstance(value, dict) and "arch" in value and isinstance(value["arch"], dict):
        value = value["arch"]  # an exported arch.json works as is
    return value


def cmd_latency_profile(args) -> int:
    if args.target:
        args.overrides = [*args.overrides, f"latency.target={args.target}"]
    if args.n < 1:
        raise ConfigError(f"--n = {args.n}: must be at least 1")
    job = _load_job(args)
    job.profile_latency(args.n, out=args.out, lut=args.lut)
    return 0


def cmd_latency_fit(args) -> int:
    import os

    from raynas.config import DEFAULT_TRACKING_URI
    from raynas.pipeline import MlflowTracker, fit_latency
    from raynas.space.registry import load_space

    if not 0 < args.holdout < 1:
        raise ConfigError(f"--holdout = {args.holdout}: must be between 0 and 1")
    if not Path(args.table).is_file():
        raise ConfigError(f"TABLE = {args.table!r}: file does not exist")
    space = load_space(args.space)
    tracker = MlflowTracker(os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
                            args.experiment)
    fit_latency(args.table, space, tracker, kind=args.kind, out=args.out,
                target=args.target, holdout=args.holdout, seed=args.seed)
    return 0


def _float_list(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{what} = {text!r}: give comma-separated numbers") from None


def cmd_replay(args) -> int:
    import yaml

    from raynas.search.replay import load_table, parse_constraint, parse_objective, replay
    from raynas.space.registry import load_space

    space = load_space(args.space)
    objectives = [parse_objective(o) for o in (args.objective or
                                               ["accuracy:max", "latency_ms:min"])]
    constraints = [parse_constraint(c) for c in args.constraint]
    budgets = [int(b) for b in _float_list(args.budget, "--budget")]
    reference = _float_list(args.reference, "--reference") if args.reference else None
    if args.seeds < 1:
        raise ConfigError(f"--seeds = {args.seeds}: must be at least 1")
    if args.batch < 1:
        raise ConfigError(f"--batch = {args.batch}: must be at least 1")
    options: dict = {"population_size": args.population_size}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option = {item!r}: write KEY=VALUE")
        options[key] = yaml.safe_load(value)
    table = load_table(args.table, space, objectives)
    searchers = args.searcher or ["optuna_nsga2", "random"]
    from raynas.search.registry import searcher_names

    for name in searchers:
        if name not in searcher_names():
            raise ConfigError(f"--searcher = {name!r}: unknown; choose one of "
                              f"{', '.join(searcher_names())}")
    front = table.true_front(constraints)
    print(f"[raynas] replay {args.table}: {len(table.records)} distinct subnets "
          f"({table.rows} rows, {table.dropped} without objective values), true front "
          f"{len(front)} points", flush=True)
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
    for r in reports:
        cells = []
        for b in r.budgets:
            med, lo, hi = r.summary(b)
            cells.append(f"{med:.3f} [{lo:.3f}-{hi:.3f}]")
        print(f"{r.searcher:<16}" + "".join(f"{c:>22}" for c in cells))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"table": args.table, "space": space.name,
                                              "objectives": [[o.name, o.direction]
                                                             for o in objectives],
                                              "reports": [r.to_dict() for r in reports]},
                                             indent=2))
        print(f"[raynas] report -> {args.out}")
    return 0


def cmd_spaces_list(args) -> int:
    from raynas.space import SearchSpace
    from raynas.space.registry import list_spaces, spaces_dir

    paths = list_spaces()
    if not paths:
        print(f"no search spaces found in {spaces_dir()}")
        return 0
    print(f"{'NAME':<20} {'FAMILY':<10} {'SUBNETS':>12}  FILE")
    for path in paths:
        try:
            space = SearchSpace.load(path)
        except RaynasError as exc:
            print(f"{path.stem:<20} {'?':<10} {'invalid':>12}  {path}  ({exc})")
            continue
        size = space.size()
        print(f"{space.name:<20} {space.family:<10} "
              f"{(f'{size:,}' if size else 'infinite'):>12}  {path}")
    return 0


def cmd_spaces_show(args) -> int:
    from raynas.space.registry import load_space

    space = load_space(args.name)
    size = space.size()
    print(f"{space.name}  (family {space.family}, "
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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come after options (`--from-run ID train.epochs=3`): argparse's
    # positional list stops at the first option, so collect the stragglers here.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:  # malformed ones get parse_overrides' one-line error, like those before options
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except RaynasError as exc:
        print(f"raynas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raynas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
