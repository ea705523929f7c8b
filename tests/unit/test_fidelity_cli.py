"""``raynas fidelity`` on the command line: help, bad input (exit 2, one line, nothing
started) and the threshold's own exit status (3). The end to end run is in
tests/integration/test_fidelity_command.py."""

from __future__ import annotations

import sys

import pytest

from raynas.cli import main
from raynas.fidelity import FidelityBelowThreshold


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, repo_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    job = repo_root / "jobs" / "smoke.yaml"

    def run(*argv):
        capsys.readouterr()
        rc = main(["fidelity", str(job), "--output-dir", str(tmp_path / "out"),
                   *map(str, argv)])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _nothing_started(tmp_path) -> bool:
    ray = sys.modules.get("ray")
    return ((ray is None or not ray.is_initialized())
            and not (tmp_path / "mlruns.db").exists() and not (tmp_path / "out").exists())


def test_help_teaches_the_numbers_and_exit_statuses(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fidelity", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for needle in ("kendall_tau", "spearman_rho", "top_k_overlap", "top1_regret", "mean_gap",
                   "--checkpoint", "--from-run", "fidelity.stage", "exit status", "3 Kendall"):
        assert needle in out, needle


@pytest.mark.parametrize("argv, needles", [
    (["fidelity.spread=[0.7,0.3]"], ["fidelity.spread = [0.7, 0.3]", "low quantile"]),
    (["fidelity.top_k=5", "fidelity.subnets=4"], ["fidelity.top_k = 5", "at most"]),
    (["fidelity.subnets=8", "fidelity.spread=[0.5,0.52]"],
     ["fidelity.subnets = 8", "fidelity.spread = [0.5, 0.52]", "fewer than 8"]),
    (["--checkpoint", "no-such-dir"], ["no-such-dir"]),
])
def test_bad_input_exits_2_before_any_work(cli, tmp_path, argv, needles):
    rc, _, err = cli(*argv)
    assert rc == 2 and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("raynas: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert _nothing_started(tmp_path)


def test_below_threshold_exits_3_with_a_paragraph(cli, monkeypatch):
    def measured_low(*args, **kwargs):
        from raynas.fidelity import check_threshold

        check_threshold(0.1, 0.5, "accuracy")

    monkeypatch.setattr("raynas.pipeline.fidelity.run_fidelity", measured_low)
    rc, _, err = cli("fidelity.min_kendall_tau=0.5")
    assert rc == 3 == FidelityBelowThreshold.exit_status
    assert err.startswith("raynas: stopped: ") and "Traceback" not in err
    assert "0.100" in err and "fidelity.min_kendall_tau = 0.5" in err
