"""The command line in-process, for unit tests of what users see: exit status, one error
line, no traceback, no Ray started."""

from __future__ import annotations

import sys

from raynas.cli import main


def cli_runner(tmp_path, monkeypatch, capsys):
    """``run(*argv) -> (exit status, stdout, stderr)``: raynas' ``main`` from ``tmp_path`` as
    the working directory, with its own MLflow sqlite store there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")

    def run(*argv):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def assert_one_error_line(rc, err, *needles):
    """Exit status 2 and one ``raynas: error:`` line holding every needle, no traceback, no
    Ray started."""
    assert rc == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("raynas: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
