"""The ``raynas latency`` commands' parsers: profile, fit and noise."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from raynas.cli.job_commands import cmd_latency_noise, cmd_latency_profile
from raynas.cli.tool_commands import cmd_latency_fit


def add_latency_parser(sub, fmt: type[argparse.HelpFormatter],
                       job_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """``raynas latency ACTION`` under the top-level subparsers ``sub``."""
    p = sub.add_parser("latency", formatter_class=fmt,
                       help="measure latency datasets and noise, fit latency predictors",
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
    job_args(prof)
    prof.add_argument("--target", metavar="NAME", help="target device name (sets "
                      "latency.target)")
    prof.add_argument("--n", type=int, default=500, metavar="N",
                      help="distinct subnets to measure (default 500; all of a smaller space)")
    prof.add_argument("--out", metavar="FILE.parquet", help="table to write or extend "
                      "(default latency.table, else outputs/<job>/latency/<target>.parquet)")
    prof.add_argument("--lut", metavar="FILE.json", help="also build a per-op lookup table "
                      "here and check it against the measured subnets")
    prof.set_defaults(func=cmd_latency_profile)
    noise = latency.add_parser(
        "noise", formatter_class=fmt, help="measure the noise floor of latency on a target",
        description="Time N distinct random subnets of the job's space R times each on one\n"
                    "of the job's devices (latency.target, or a latency.targets name) by the\n"
                    "job's timing protocol: latency.min_run_time_s split over latency.windows,\n"
                    "latency.estimator over the windows. One pass over the N subnets, then the\n"
                    "next. Reports how far each repeat lands from the subnet's first timing:\n"
                    "the share of subnets within 10% and the median and 90th percentile\n"
                    "deviation. Run it beside the work the target carries during a search to\n"
                    "see what a search can trust. Writes <output dir>/latency/<target>.noise.\n"
                    "json, which later searches of the job log, and tracks the run in MLflow.",
        epilog="examples:\n"
               "  raynas latency noise jobs/quickstart.yaml\n"
               "  raynas latency noise jobs/quickstart.yaml --n 50 --repeats 3\n"
               "  raynas latency noise jobs/quickstart.yaml latency.windows=1 "
               "latency.estimator=median   # one window, as a single timing")
    job_args(noise)
    noise.add_argument("--target", metavar="NAME", help="the device (default latency.target)")
    noise.add_argument("--n", type=int, default=20, metavar="N",
                       help="distinct subnets to time (default 20; all of a smaller space)")
    noise.add_argument("--repeats", type=int, default=2, metavar="R",
                       help="timings per subnet, at least 2 (default 2)")
    noise.set_defaults(func=cmd_latency_noise)
    fit = latency.add_parser(
        "fit", formatter_class=fmt, help="fit a latency predictor on a measured table",
        description="Fit a latency predictor on a table from `raynas latency profile` (or a "
                    "search's latency.table) and report on held-out subnets: RMSE, MAPE, the "
                    "share within 10% and Kendall tau. Kinds: mlp (HAT's MLP on the arch "
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
