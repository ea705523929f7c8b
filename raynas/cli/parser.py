"""The ``raynas`` argument parser: every command, its options and its --help text.

Each subcommand stores its handler in ``func``; the handlers live in ``job_commands`` (commands
that take a job file) and ``tool_commands`` (tables, predictors, spaces).
"""

from __future__ import annotations

import argparse

from raynas.cli.job_commands import (
    cmd_export,
    cmd_fidelity,
    cmd_run,
    cmd_search,
    cmd_train,
)
from raynas.cli.latency_parser import add_latency_parser
from raynas.cli.tool_commands import (
    cmd_compare,
    cmd_replay,
    cmd_spaces_list,
    cmd_spaces_show,
    cmd_ticket_export,
)
from raynas.cli.tune_command import add_tune_parser

_OVERRIDES_HELP = ("dotted.key=value overrides of the job file, e.g. train.epochs=5 "
                   "search.budget=64 search.searcher=optuna_tpe")


_FIDELITY_HELP = """\
Measure how well the trained supernet judges its subnets: does it rank them as training each
from scratch does? M subnets (fidelity.subnets, default 8) spread over the FLOPs range
(fidelity.spread) are scored twice:

  inherited    with the supernet's weights, after BN recalibration, as the search scores them
  standalone   trained alone from scratch with the job's train recipe (epochs or
               fidelity.epochs, batch size, optimizer, lr schedule, label smoothing, grad
               clip; labels only), one Ray Tune trial each, cached in fidelity.cache_dir
               (default: fidelity-cache beside the output folder), so a rerun trains nothing

and the two rankings of the task's primary metric (e.g. accuracy) on the validation split
are compared:

  kendall_tau    share of subnet pairs both order alike minus the share they order apart,
                 in [-1, 1]: 1 same order, 0 unrelated, -1 reversed
  spearman_rho   correlation of the two rank lists, in [-1, 1]
  top_k_overlap  share of the k best subnets by standalone training that the supernet also
                 puts in its k best (fidelity.top_k, default 3)
  top1_regret    how much worse the supernet's favourite is than the best subnet, both
                 trained from scratch (metric units; 0: it picks the best)
  mean_gap       mean of standalone minus inherited (> 0 on accuracy: the supernet
                 under-rates its subnets)

Writes fidelity/ in the output folder: fidelity.md and fidelity.parquet (one row per
subnet), fidelity.png (standalone vs inherited, coloured by FLOPs, with y = x) and
fidelity.json (the numbers, and the same on the test split); logs them to an MLflow run
'fidelity' under the job's parent run. Without --checkpoint or --from-run, the job's train
stage trains the supernet first. With fidelity.stage: true, `raynas run` measures this
between train and search, and with fidelity.min_kendall_tau stops before the search."""

def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="JOB.yaml", help="job file (see jobs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.add_argument("--output-dir", metavar="DIR",
                   help="where pareto.parquet, pareto.png, the checkpoint and the exported "
                        "subnet go (default: outputs/<job name>)")


def _subnet_source_args(p: argparse.ArgumentParser, verb: str) -> None:
    """Where a command's subnets come from: a search run, or a checkpoint with a front or
    an arch (``export``, ``finetune``)."""
    p.add_argument("--from-run", metavar="RUN_ID", help="MLflow run id of a search stage "
                   "(its Pareto front and checkpoint)")
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory")
    p.add_argument("--pareto", metavar="FILE", help="pareto.parquet from a search")
    p.add_argument("--arch", metavar="JSON|FILE", help=f"{verb} this arch instead of a "
                   "Pareto point (JSON text or a file holding it, such as an exported "
                   "arch.json)")


def build_parser() -> argparse.ArgumentParser:
    """The ``raynas`` parser; ``parse_args`` gives a namespace whose ``func`` runs the
    command and returns its exit status."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="raynas", formatter_class=fmt,
        description="Train a weight-sharing supernet once on Ray, search its subnets for "
                    "quality vs latency, export the winners.",
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

    add_tune_parser(sub, _job_args, _subnet_source_args)

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
        "fidelity", formatter_class=fmt,
        help="does the supernet rank subnets as training them from scratch does?",
        description=_FIDELITY_HELP,
        epilog="examples:\n"
               "  raynas fidelity jobs/quickstart.yaml --checkpoint outputs/quickstart/"
               "checkpoint\n"
               "  raynas fidelity jobs/quickstart.yaml --from-run <train run id> "
               "fidelity.subnets=12\n"
               "  raynas fidelity jobs/smoke.yaml fidelity.min_kendall_tau=0.5 "
               "fidelity.epochs=5\n"
               "  raynas run jobs/quickstart.yaml fidelity.stage=true "
               "fidelity.min_kendall_tau=0.3\n\n"
               "exit status: 0 measured (and at or above fidelity.min_kendall_tau when set);"
               "\n  2 bad input (one line naming the field); 3 Kendall tau below "
               "fidelity.min_kendall_tau\n  (or undefined); the report is written in every "
               "case but 2.")
    _job_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="DIR", help="a trained supernet's checkpoint "
                     "directory (default: train one first)")
    src.add_argument("--from-run", metavar="RUN_ID", help="MLflow run id of a train stage")
    p.set_defaults(func=cmd_fidelity)

    p = sub.add_parser(
        "export", formatter_class=fmt, help="export a subnet as a static model",
        description="Export one subnet as a plain torch model (state_dict + arch.json), "
                    "TorchScript and ONNX, each checked against the supernet's output.",
        epilog="examples:\n  raynas export jobs/quickstart.yaml --from-run <search run id>\n"
               "  raynas export jobs/quickstart.yaml --from-run <search run id> --pick 0\n"
               "  raynas export jobs/quickstart.yaml --from-run <search run id> "
               "--budget params<=20000\n"
               "  raynas export jobs/quickstart.yaml --from-run <search run id> "
               "--budgets params<=10000,20000,40000\n"
               "  raynas export jobs/quickstart.yaml --checkpoint outputs/quickstart/"
               "checkpoint --pareto outputs/quickstart/pareto.parquet\n"
               "  raynas export jobs/quickstart.yaml --checkpoint outputs/quickstart/"
               "checkpoint --arch arch.json")
    _job_args(p)
    _subnet_source_args(p, "export")
    p.add_argument("--pick", metavar="best|N", help="Pareto point: 'best' (highest "
                   "value of the first search objective within the budgets) or its index, "
                   "ordered by latency")
    p.add_argument("--budget", action="append", default=[], metavar="METRIC<=LIMIT",
                   help="pick among the Pareto points meeting this budget (repeatable: all "
                   "must hold); any metric a record holds: params<=2e6, flops<=5e6, "
                   "latency_ms<=0.5, loss<=0.3")
    p.add_argument("--budgets", metavar="METRIC<=LIMIT,LIMIT,...", help="deploy many: "
                   "one export per limit (the best Pareto point within it, and within every "
                   "--budget), into deploy/<budget>/, each a version of one registered MLflow "
                   "model aliased by its budget, with a summary in deploy/deploy.md and "
                   "deploy.parquet; plain numbers are latency in ms (0.3,0.5,1.0)")
    p.add_argument("--targets", metavar="DEVICE,DEVICE", help="export for each of these "
                   "devices (the job's latency.target and latency.targets names; the search "
                   "must have timed subnets on them), from that device's front, a latency "
                   "budget bounding its latency, re-timed there: with --budgets, into "
                   "deploy/<device>/<budget>/; without, the --pick within every --budget, "
                   "into deploy/<device>/")
    p.add_argument("--register", metavar="NAME", help="register the exported model in "
                   "MLflow's model registry under NAME (with --budgets: default the job's name)")
    p.set_defaults(func=cmd_export)

    add_latency_parser(sub, fmt, _job_args)

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
                   help="objective column and direction (repeat; default: the space's task "
                        "metric, e.g. accuracy:max, and latency_ms:min)")
    p.add_argument("--constraint", action="append", default=[], metavar="METRIC<=LIMIT",
                   help="hard limit: violating subnets never count (repeatable)")
    p.add_argument("--reference", metavar="V[,V...]",
                   help="hypervolume reference point, one value per objective (default: "
                        "the worst value of each objective on the table's true front, 10%% "
                        "of the front's range beyond: the rule a search uses too); warned "
                        "of when it shuts out front points or lies far beyond the front")
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

    p = sub.add_parser(
        "compare", formatter_class=fmt, help="several searches' fronts in one plot and table",
        description="The Pareto fronts of several searches (searchers, weight schemes, "
                    "devices) in one plot and one table. Every hypervolume is taken against "
                    "one reference point, placed by raynas's rule over all the fronts "
                    "together; 'share' is a front's hypervolume over the pooled front's.",
        epilog="examples:\n  raynas compare outputs/nsga2 outputs/tpe\n"
               "  raynas compare <search run id> <search run id> --label nsga2 --label tpe "
               "--out outputs/compare")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="a search's output folder "
                   "(evaluations.parquet, pareto.parquet, search.json) or a search stage's "
                   "MLflow run id")
    p.add_argument("--label", action="append", metavar="NAME", help="name of each source "
                   "in the plot and table, in order (default: folder name or short run id)")
    p.add_argument("--out", default="outputs/compare", metavar="DIR", help="where compare.png, "
                   "compare.md and compare.parquet go (default outputs/compare)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow store of run ids (default "
                   "MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ticket", formatter_class=fmt,
                       help="export a pruned subnet (arch + masks) to retrain elsewhere",
                       description="Tickets (SuperTickets): a subnet's arch and the pruning "
                                   "masks a supernet trained with train.prune found for it.",
                       epilog="examples:\n"
                              "  raynas ticket export outputs/pruned --arch largest -o "
                              "ticket.pt\n"
                              "  raynas train jobs/smoke.yaml train.init_ticket=ticket.pt")
    ticket = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    exp = ticket.add_parser(
        "export", formatter_class=fmt, help="write a ticket file",
        description="Write the ticket of one subnet: its arch, the supernet's pruning masks "
                    "(weights and BN channels) and the space's definition and fingerprint. A "
                    "job with train.init_ticket=FILE trains that arch alone from fresh "
                    "weights with the masks fixed (its space must be the same).",
        epilog="examples:\n"
               "  raynas ticket export outputs/pruned --arch largest -o ticket.pt\n"
               "  raynas ticket export outputs/pruned/checkpoint --arch outputs/pruned/subnet/"
               "arch.json -o ticket.pt\n"
               "  raynas ticket export <train run id> --arch '{\"s1_depth\": 2, ...}' -o "
               "ticket.pt")
    exp.add_argument("source", metavar="SOURCE", help="checkpoint directory, a job's output "
                     "directory (its checkpoint/), or the MLflow run id of a train stage")
    exp.add_argument("--arch", required=True, metavar="JSON|FILE|largest|smallest",
                     help="the subnet: JSON text, a file holding it (an exported arch.json "
                          "works), or largest / smallest")
    exp.add_argument("-o", "--out", required=True, metavar="FILE.pt", help="ticket file")
    exp.add_argument("--tracking-uri", metavar="URI", help="MLflow store of a run id (default "
                     "MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    exp.set_defaults(func=cmd_ticket_export)

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
