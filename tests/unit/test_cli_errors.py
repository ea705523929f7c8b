"""raynas.cli: bad input exits 2 with one line on stderr; listings and help work.

None of these paths starts Ray. Each test runs in its own working directory; the MLflow
tracker is stubbed out except in the one test about the real tracking store.
"""

from __future__ import annotations

import json
import sys

import pytest

from raynas.cli import main
from raynas.search.results import write_records
from raynas.tracking import NullTracker

SUBCOMMANDS = ["run", "train", "search", "export", "spaces", "latency", "replay"]


class _StubTracker(NullTracker):
    """Stands in for MlflowTracker: these paths never log, and a real store costs seconds."""

    def __init__(self, uri: str, experiment: str | None = None):
        self.uri, self.experiment = uri, experiment


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.delenv("RAYNAS_SPACES_DIR", raising=False)
    monkeypatch.setattr("raynas.pipeline.MlflowTracker", _StubTracker)

    def run(*argv):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _ray_not_started():
    ray = sys.modules.get("ray")
    return ray is None or not ray.is_initialized()


def assert_one_error_line(rc, err, *needles):
    assert rc == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("raynas: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert _ray_not_started()


# ---- job file and overrides --------------------------------------------------------------------
def test_missing_job_file(cli):
    rc, _, err = cli("run", "nope.yaml")
    assert_one_error_line(rc, err, "job file 'nope.yaml' does not exist")


def test_unknown_override_key(cli, quickstart_job):
    rc, _, err = cli("run", quickstart_job, "train.epochz=3")
    assert_one_error_line(rc, err, "train.epochz", "unknown key", "epochs")


def test_wrong_type(cli, quickstart_job):
    rc, _, err = cli("train", quickstart_job, "train.epochs=abc")
    assert_one_error_line(rc, err, "train.epochs = 'abc'")


@pytest.mark.parametrize("override, needle", [
    ("search.budget=0", "search.budget = 0"),
    ("data.val_fraction=0.7", "data.val_fraction = 0.7"),
    ("search.searcher=cmaes", "search.searcher = 'cmaes'"),
])
def test_out_of_range(cli, quickstart_job, override, needle):
    rc, _, err = cli("run", quickstart_job, override)
    assert_one_error_line(rc, err, needle)


def test_malformed_override(cli, quickstart_job):
    rc, _, err = cli("run", quickstart_job, "search.budget", "train.epochs=1")
    assert_one_error_line(rc, err, "'search.budget'", "dotted.key=value")


def test_override_after_options(cli, quickstart_job, tiny_checkpoint):
    rc, _, err = cli("search", quickstart_job, "--checkpoint", tiny_checkpoint,
                     "train.epochz=3")
    assert_one_error_line(rc, err, "train.epochz", "unknown key")


def test_malformed_override_after_options(cli, quickstart_job, tiny_checkpoint):
    try:
        rc, _, err = cli("search", quickstart_job, "--checkpoint", tiny_checkpoint,
                         "search.budget")
    except SystemExit as exc:
        rc, err = exc.code, "<SystemExit raised from main()>"
    assert_one_error_line(rc, err, "'search.budget'", "dotted.key=value")


def test_unknown_space(cli, quickstart_job):
    rc, _, err = cli("run", quickstart_job, "space=no_such_space")
    assert_one_error_line(rc, err, "space = 'no_such_space'", "digits_cnn")


def test_bad_yaml_job(cli, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: x\nspace: [unclosed\n")
    rc, _, err = cli("run", job)
    assert_one_error_line(rc, err, "not valid YAML")


def test_missing_data_file(cli, quickstart_job):
    rc, _, err = cli("run", quickstart_job, "data.name=parquet", "data.path=missing.parquet")
    assert_one_error_line(rc, err, "data.path = 'missing.parquet'")


# ---- stages given bad artifacts ----------------------------------------------------------------
def test_export_arch_outside_space(cli, quickstart_job, digits_checkpoint, digits_space):
    arch = {**digits_space.largest().to_dict(), "s1_width": 20}
    rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint,
                     "--arch", json.dumps(arch))
    assert_one_error_line(rc, err, "'s1_width' = 20", "[16, 24, 32]")


def test_export_arch_file_outside_space(cli, quickstart_job, digits_checkpoint, digits_space,
                                        tmp_path):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"arch": {**digits_space.smallest().to_dict(),
                                         "s2_kernel": [4]}}))
    rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint,
                     "--arch", path)
    assert_one_error_line(rc, err, "s2_kernel[0] = 4")


def test_export_arch_not_json(cli, quickstart_job, digits_checkpoint):
    rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint,
                     "--arch", "{not json")
    assert_one_error_line(rc, err, "--arch", "not valid JSON")
    rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint,
                     "--arch", "no_such_file.json")
    assert_one_error_line(rc, err, "--arch = 'no_such_file.json'")


def test_export_arch_nan(cli, quickstart_job, digits_checkpoint, digits_space):
    text = json.dumps({**digits_space.smallest().to_dict(), "s1_depth": float("nan")})
    assert "NaN" in text
    try:
        rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint,
                         "--arch", text)
    except ValueError:  # escapes main(): what a user sees as a traceback
        pytest.fail("ValueError escaped raynas.cli.main")
    assert_one_error_line(rc, err, "s1_depth")


def test_search_checkpoint_from_other_space(cli, quickstart_job, tiny_checkpoint):
    rc, _, err = cli("search", quickstart_job, "--checkpoint", tiny_checkpoint)
    assert_one_error_line(rc, err, "'tiny_cnn'", "'digits_cnn'", str(tiny_checkpoint))


def test_search_missing_checkpoint(cli, quickstart_job, tmp_path):
    rc, _, err = cli("search", quickstart_job, "--checkpoint", tmp_path / "none")
    assert_one_error_line(rc, err, "supernet.pt")


@pytest.fixture
def pareto_file(tmp_path, digits_space):
    records = [{"arch": digits_space.sample(i).to_dict(), "accuracy": 0.5 + i / 10,
                "latency_ms": 1.0 + i} for i in range(3)]
    return write_records(tmp_path / "pareto.parquet", records, digits_space)


def test_export_pick_out_of_range(cli, quickstart_job, digits_checkpoint, pareto_file):
    rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint,
                     "--pareto", pareto_file, "--pick", "99")
    assert_one_error_line(rc, err, "export.pick = 99", "3 points", "0..2")


def test_export_pick_not_an_index(cli, quickstart_job, digits_checkpoint, pareto_file):
    rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint,
                     "--pareto", pareto_file, "--pick", "first")
    assert_one_error_line(rc, err, "--pick = 'first'")


def test_export_needs_a_source(cli, quickstart_job, digits_checkpoint, tmp_path):
    rc, _, err = cli("export", quickstart_job)
    assert_one_error_line(rc, err, "--from-run", "--checkpoint")
    rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint)
    assert_one_error_line(rc, err, "--pareto", "--arch")
    rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint,
                     "--pareto", tmp_path / "none.parquet")
    assert_one_error_line(rc, err, "--pareto = ", "does not exist")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy, inside MLflow
def test_bad_arch_on_fresh_tracking_store(tmp_path, monkeypatch, capsys, quickstart_job,
                                          digits_checkpoint, digits_space):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh.db'}")
    capsys.readouterr()
    arch = {**digits_space.largest().to_dict(), "s1_depth": 9}
    rc = main(["export", str(quickstart_job), "--checkpoint", str(digits_checkpoint),
               "--arch", json.dumps(arch)])
    assert_one_error_line(rc, capsys.readouterr().err, "s1_depth", "9")
    assert not (tmp_path / "fresh.db").exists()  # bad input creates no tracking store


# ---- listings and help -------------------------------------------------------------------------
def test_spaces_list(cli):
    rc, out, err = cli("spaces", "list")
    assert rc == 0 and err == ""
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "74,088" in lines["digits_cnn"] and "cnn" in lines["digits_cnn"]
    assert "144" in lines["tiny_cnn"]


def test_spaces_list_flags_invalid_file(cli, tmp_path, monkeypatch):
    (tmp_path / "ok.yaml").write_text("name: ok\nfamily: cnn\ndims:\n"
                                      "  d: {type: int, low: 1, high: 4}\n")
    (tmp_path / "broken.yaml").write_text("name: broken\nfamily: cnn\ndims: {}\n")
    monkeypatch.setenv("RAYNAS_SPACES_DIR", str(tmp_path))
    rc, out, _ = cli("spaces", "list")
    assert rc == 0
    assert "invalid" in out and "dims" in out and "broken" in out
    assert any(line.startswith("ok ") and " 4 " in line for line in out.splitlines())


def test_spaces_show(cli, digits_space):
    rc, out, err = cli("spaces", "show", "digits_cnn")
    assert rc == 0 and err == ""
    assert "74,088" in out and digits_space.fingerprint in out
    for name in digits_space.names:
        assert name in out
    assert "[1, 3]" in out and "[16, 24, 32]" in out
    assert "[3, 5] per layer, s1_depth layers" in out


def test_spaces_show_unknown(cli):
    rc, _, err = cli("spaces", "show", "nope")
    assert_one_error_line(rc, err, "space = 'nope'")


@pytest.mark.parametrize("argv", [[], *([c] for c in SUBCOMMANDS)])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out
    assert out.startswith("usage: raynas")


@pytest.mark.parametrize("argv", [["spaces", "list"], ["spaces", "show"],
                                  ["latency", "profile"], ["latency", "fit"]])
def test_help_actions(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "example" in capsys.readouterr().out
