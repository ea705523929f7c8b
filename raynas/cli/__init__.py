"""``raynas``: the command line.

Bad input exits with status 2 and one line on stderr naming the field, the value and what is
allowed; success exits 0; a fidelity check below its threshold (``fidelity.min_kendall_tau``)
exits 3 with a paragraph saying what was measured and what to try. The parser and its --help
texts are in ``parser``; the commands in ``job_commands`` (those that take a job file) and
``tool_commands`` (the others).
"""

from __future__ import annotations

import sys

from raynas.cli.parser import build_parser
from raynas.errors import RaynasError

__all__ = ["build_parser", "entry", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run one ``raynas`` command (``argv`` defaults to ``sys.argv[1:]``); return its exit
    status: 0 on success, 2 for bad input, 3 when a fidelity check is below its threshold,
    130 when interrupted, 141 when the reader of its output has gone."""
    parser = build_parser()
    # Overrides may come after options (`--from-run ID train.epochs=3`): argparse's
    # positional list stops at the first option, so collect the stragglers here.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:  # malformed ones get parse_overrides' one-line error, like those before options
        args.overrides = [*args.overrides, *extra]
    try:
        rc = args.func(args)
        sys.stdout.flush()  # here, where a reader that has gone is handled below
        return rc
    except RaynasError as exc:
        # An error may carry its own status (FidelityBelowThreshold: 3); bad input is 2.
        status = getattr(exc, "exit_status", 2)
        print(f"raynas: {'error' if status == 2 else 'stopped'}: {exc}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print("raynas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `raynas spaces list | head`: the reader has gone; so do we
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 141  # as a process ended by SIGPIPE


def entry() -> None:
    """The ``raynas`` command and ``python -m raynas``: ``main``, then exit with its status.

    When Ctrl-C or a placement timeout left a thread blocked in Ray (see
    ``runtime.run_in_thread``), everything is already written and closed, but Python's own
    shutdown could crash under that thread and turn status 2 or 130 into a SIGSEGV; the
    process then ends at once with its status instead."""
    import os

    from raynas.runtime import threads_left_in_ray

    status = main()
    if threads_left_in_ray():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
