"""raynas.cli: bad input exits 2 with one line on stderr; listings and help work.

None of these paths starts Ray. Each test runs in its own working directory; the MLflow
tracker is stubbed out except in the one test about the real tracking store.
"""

from __future__ import annotations

import gzip
import json
import sys

import pyarrow.parquet as pq
import pytest
from cli_helpers import assert_one_error_line, cli_runner

from raynas.cli import main
from raynas.search.results import write_records
from raynas.tracking import NullTracker

SUBCOMMANDS = ["run", "train", "search", "export", "spaces", "latency", "replay", "compare",
               "ticket", "tune", "finetune"]


class _StubTracker(NullTracker):
    """Stands in for MlflowTracker: these paths never log, and a real store costs seconds."""

    def __init__(self, uri: str, experiment: str | None = None):
        self.uri, self.experiment = uri, experiment


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAYNAS_SPACES_DIR", raising=False)
    monkeypatch.setattr("raynas.pipeline.MlflowTracker", _StubTracker)
    return cli_runner(tmp_path, monkeypatch, capsys)


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
    ("train.sampler.name=complexity_aware", "'max' first in train.sampler.options.modes"),
])
def test_out_of_range(cli, quickstart_job, override, needle):
    rc, _, err = cli("run", quickstart_job, override)
    assert_one_error_line(rc, err, needle)


@pytest.mark.parametrize("options, needle", [
    ("{levels: 0}", "train.sampler.options.levels = 0: must be an integer >= 1"),
    ("{modes: [max, uniform]}", "train.sampler.options.modes = ['max', 'uniform']: must list "
     "one mode per subnet (train.num_subnets = 4)"),
    ("{p_bank: 2}", "train.sampler.options.p_bank = 2: must be a number in [0, 1]"),
])
def test_bad_sampler_option_value(cli, quickstart_job, options, needle):
    rc, _, err = cli("run", quickstart_job, "train.distill=none",
                     f"train.sampler={{name: performance_aware, options: {options}}}")
    assert_one_error_line(rc, err, needle)


@pytest.mark.parametrize("overrides, needle", [
    (["train.distill.name=alpha_divergence", "train.distill.options.iw_clip=0"],
     "train.distill.options.iw_clip = 0: must be > 0"),
    (["train.dropout.name=adaptive", "train.dropout.options.p_max=1.5"],
     "train.dropout.options.p_max = 1.5: must be a number in [0, 1)"),
    (["train.dropout.name=adaptive", "train.dropout.options.measure=width"],
     "train.dropout.options.measure = 'width': choose one of params, flops"),
    (["train.dropout=gaussian"], "train.dropout = 'gaussian': unknown dropout policy"),
    (["train.optimizer.name=scaled_adam", "train.optimizer.options.beta2=1.5"],
     "train.optimizer.options.beta2 = 1.5: must be a number >= 0 and < 1"),
    (["train.schedule.name=eden", "train.schedule.options.lr_epochs=0"],
     "train.schedule.options.lr_epochs = 0: must be a number > 0"),
    (["train.schedule=step"], "train.schedule = 'step': unknown learning-rate schedule"),
    (["train.schedule.name=eden", "train.schedule.options.gamma=2"],
     "train.schedule.options.gamma = 2: unknown option"),
])
def test_training_component_values(cli, quickstart_job, overrides, needle):
    rc, _, err = cli("train", quickstart_job, *overrides)
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


# ---- bad input writes nothing --------------------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if bad input reaches a stage (which would start Ray and write outputs)."""
    def reached(self, *args, **kwargs):
        pytest.fail("bad input reached a pipeline stage")

    for stage in ("run", "train", "search", "export", "deploy", "profile_latency"):
        monkeypatch.setattr(f"raynas.pipeline.Job.{stage}", reached)


def _written(tmp_path, *keep):
    """Everything under tmp_path but the given inputs."""
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if p.name not in keep and not any(k in p.parents for k in keep))


# Named ids and a fixed gzip mtime: every xdist worker must collect the same test ids.
@pytest.mark.parametrize("content", [
    b"\x00\xff\xfe\xfd binary",
    gzip.compress(b"name: quickstart\nspace: digits_cnn\n", mtime=0),
], ids=["binary", "gzip"])
def test_binary_job_file(cli, tmp_path, no_work, content):
    job = tmp_path / "job.yaml"
    job.write_bytes(content)
    rc, _, err = cli("run", job)
    assert_one_error_line(rc, err, "job file", str(job), "UTF-8")
    assert _written(tmp_path) == ["job.yaml"]


def test_binary_arch_file(cli, quickstart_job, digits_checkpoint, tmp_path, no_work):
    path = tmp_path / "arch.json"
    path.write_bytes(gzip.compress(b'{"s1_depth": 1}'))
    rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint,
                     "--arch", path)
    assert_one_error_line(rc, err, f"--arch = {str(path)!r}", "UTF-8")


@pytest.mark.parametrize("command", ["run", "train", "export"])
def test_output_dir_is_a_file(cli, quickstart_job, digits_checkpoint, digits_space, tmp_path,
                              no_work, command):
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    extra = (["--checkpoint", digits_checkpoint, "--arch",
              json.dumps(digits_space.smallest().to_dict())] if command == "export" else [])
    rc, _, err = cli(command, quickstart_job, *extra, "--output-dir", taken, "train.epochs=1")
    assert_one_error_line(rc, err, f"--output-dir = {str(taken)!r}", "existing file",
                          "directory")
    assert taken.read_text() == "mine"
    assert _written(tmp_path) == ["taken.txt"]
    # a directory to be made under a file cannot be made either
    rc, _, err = cli(command, quickstart_job, *extra, "--output-dir", taken / "sub")
    assert_one_error_line(rc, err, "--output-dir", f"under the file {str(taken)!r}")
    assert _written(tmp_path) == ["taken.txt"]


@pytest.fixture
def corrupt_checkpoint(tmp_path, monkeypatch, capsys):
    """A checkpoint folder whose supernet.pt is garbage, in a fresh working directory with the
    real (default sqlite) tracker: a store made before the checkpoint is read is the defect
    looked for."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "supernet.pt").write_bytes(b"\x00garbage\xff" * 64)
    capsys.readouterr()
    return ckpt


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy, inside MLflow
def test_export_corrupt_checkpoint_writes_nothing(tmp_path, capsys, quickstart_job,
                                                  digits_space, corrupt_checkpoint):
    ckpt = corrupt_checkpoint
    rc = main(["export", str(quickstart_job), "--checkpoint", str(ckpt), "--output-dir",
               str(tmp_path / "out"), "--arch", json.dumps(digits_space.smallest().to_dict())])
    assert_one_error_line(rc, capsys.readouterr().err, "checkpoint", "supernet.pt",
                          "cannot be read")
    assert not (tmp_path / "mlruns.db").exists()
    assert not (tmp_path / "out").exists()
    assert _written(tmp_path, ckpt) == ["ckpt"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy, inside MLflow
@pytest.mark.parametrize("command", ["run", "train"])
def test_a_corrupt_resume_from_checkpoint_writes_nothing(tmp_path, capsys, quickstart_job,
                                                         command, corrupt_checkpoint):
    ckpt = corrupt_checkpoint
    rc = main([command, str(quickstart_job), f"train.resume_from={ckpt}", "--output-dir",
               str(tmp_path / "out")])
    assert_one_error_line(rc, capsys.readouterr().err, "checkpoint", "supernet.pt",
                          "cannot be read")
    assert _written(tmp_path, ckpt) == ["ckpt"]  # no MLflow store, no output folder


@pytest.mark.parametrize("override, needle", [
    ("seed=-1", "seed = -1: Input should be greater than or equal to 0"),
    (f"seed={2**32}", f"seed = {2**32}: Input should be less than or equal to {2**32 - 1}"),
    ("data.seed=-1", "data.seed = -1"),
    (f"data.seed={2**32}", f"data.seed = {2**32}"),
])
def test_seed_out_of_range(cli, quickstart_job, tmp_path, no_work, override, needle):
    rc, _, err = cli("run", quickstart_job, override)
    assert_one_error_line(rc, err, needle)
    assert _written(tmp_path) == []


@pytest.mark.parametrize("override", ["seed=0", f"seed={2**32 - 1}", f"data.seed={2**32 - 1}"])
def test_seed_bounds_are_inclusive(quickstart_job, override):
    from raynas.config import load_config

    cfg = load_config(quickstart_job, [override])
    assert int(override.split("=")[1]) in (cfg.seed, cfg.data.seed)


# ---- listings and help -------------------------------------------------------------------------
def test_spaces_list(cli):
    rc, out, err = cli("spaces", "list")
    assert rc == 0 and err == ""
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "74,088" in lines["digits_cnn"] and "cnn" in lines["digits_cnn"]
    assert "144" in lines["tiny_cnn"]
    # Columns line up however long a family name or a subnet count is.
    files = {line.index("/") for line in out.splitlines()[1:]}
    assert len(files) == 1 and "9,081,213,419,520,000" in lines["vit_elasticvit"]


def test_a_reader_that_goes_away_ends_the_listing_quietly():
    # `raynas spaces list | head -1`: the pipe closes before raynas has written it all.
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "raynas", "spaces", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == "", err


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
                                  ["latency", "profile"], ["latency", "fit"],
                                  ["latency", "noise"]])
def test_help_actions(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "example" in capsys.readouterr().out


@pytest.mark.parametrize("args, needles", [
    (["--repeats", "1"], ["--repeats = 1", "at least 2"]),
    (["--n", "0"], ["--n = 0", "at least 1"]),
    (["--target", "phone"], ["'phone' is not a device of this job", "local-cpu"]),
    (["latency.windows=0"], ["latency.windows = 0"]),
])
def test_latency_noise_errors(cli, quickstart_job, args, needles, tmp_path):
    rc, _, err = cli("latency", "noise", quickstart_job, "--output-dir", str(tmp_path / "o"),
                     *args)
    assert_one_error_line(rc, err, *needles)
    assert not (tmp_path / "o" / "latency").exists()


def test_export_budget_errors(cli, quickstart_job, digits_checkpoint, pareto_file, no_work,
                              tmp_path):
    """A budget that is malformed, names no recorded metric, or that no Pareto point meets
    fails before anything is written; so does one beside --arch."""
    args = ("export", quickstart_job, "--checkpoint", digits_checkpoint, "--pareto",
            pareto_file, "--output-dir", tmp_path / "out")
    rc, _, err = cli(*args, "--budget", "params<2e4")
    assert_one_error_line(rc, err, "--budget = 'params<2e4'", "METRIC<=LIMIT")
    rc, _, err = cli(*args, "--budget", "size<=3")
    assert_one_error_line(rc, err, "'size' is not a metric", "flops, params")
    rc, _, err = cli(*args, "--budget", "latency_ms<=0.5")
    assert_one_error_line(rc, err, "budget 'latency_ms<=0.5'", "no Pareto point meets it",
                          "smallest latency_ms is 1")
    rc, _, err = cli("export", quickstart_job, "--checkpoint", digits_checkpoint, "--arch",
                     '{"a": 1}', "--budget", "params<=1e6")
    assert_one_error_line(rc, err, "--budget", "--arch")
    assert not (tmp_path / "out").exists()


def test_export_budgets_errors(cli, quickstart_job, digits_checkpoint, pareto_file, no_work,
                               tmp_path):
    """Deploy many: every limit is checked against the front before any export starts."""
    args = ("export", quickstart_job, "--checkpoint", digits_checkpoint, "--pareto",
            pareto_file, "--output-dir", tmp_path / "out")
    rc, _, err = cli(*args, "--budgets", "5,0.5")  # plain limits: latency in ms
    assert_one_error_line(rc, err, "budget 'latency_ms<=0.5'", "no Pareto point meets it")
    rc, _, err = cli(*args, "--budgets", "params<=1e4,1e4")
    assert_one_error_line(rc, err, "--budgets = 'params<=1e4,1e4'", "given twice")
    rc, _, err = cli(*args, "--budgets", "2,3", "--pick", "0")
    assert_one_error_line(rc, err, "--pick", "--budgets")
    rc, _, err = cli(*args, "--budgets", "accuracy<=0.9")
    assert_one_error_line(rc, err, "--budgets = 'accuracy<=0.9'", "maximised")
    assert not (tmp_path / "out").exists()


def _search_dir(path, space, points, searcher):
    """A search output folder: evaluations.parquet (= its front here), pareto.parquet and
    search.json."""
    records = [{"arch": space.sample(i).to_dict(), "accuracy": a, "latency_ms": t}
               for i, (a, t) in enumerate(points)]
    write_records(path / "evaluations.parquet", records, space)
    write_records(path / "pareto.parquet", records, space)
    (path / "search.json").write_text(json.dumps(
        {"objectives": [["accuracy", "max"], ["latency_ms", "min"]], "searcher": searcher}))
    return path


def test_compare_puts_fronts_against_one_reference(cli, tmp_path, digits_space):
    """Hypervolume shares against the pooled front, checked by hand: front A (0.9 at 1 ms,
    0.5 at 0.5 ms) dominates front B (0.8 at 1 ms). The reference is raynas's rule over the
    pooled front: accuracy 0.5 - 0.04 = 0.46, latency 1 + 0.05 = 1.05."""
    a = _search_dir(tmp_path / "a", digits_space, [(0.9, 1.0), (0.5, 0.5)], "nsga2")
    b = _search_dir(tmp_path / "b", digits_space, [(0.8, 1.0)], "random")
    rc, out, err = cli("compare", a, b, "--label", "A", "--label", "B", "--out",
                       tmp_path / "cmp")
    assert rc == 0, err
    rows = {r["source"]: r for r in pq.read_table(tmp_path / "cmp" / "compare.parquet")
            .to_pylist()}
    area_a = (0.9 - 0.46) * (1.05 - 1.0) + (0.5 - 0.46) * (1.0 - 0.5)
    area_b = (0.8 - 0.46) * (1.05 - 1.0)
    assert rows["A"]["hypervolume"] == pytest.approx(area_a)
    assert rows["A"]["share"] == pytest.approx(1.0)
    assert rows["B"]["share"] == pytest.approx(area_b / area_a)
    assert rows["B"]["best_accuracy"] == 0.8 and rows["A"]["front_size"] == 2
    assert "| B | random | 1 | 1 |" in out and (tmp_path / "cmp" / "compare.png").is_file()


def test_compare_errors(cli, tmp_path, digits_space):
    a = _search_dir(tmp_path / "a", digits_space, [(0.9, 1.0)], "nsga2")
    rc, _, err = cli("compare", a, tmp_path / "none")
    assert_one_error_line(rc, err, "SOURCE = ", "none", "neither a search's output folder")
    (tmp_path / "empty").mkdir()
    rc, _, err = cli("compare", a, tmp_path / "empty")
    assert_one_error_line(rc, err, "empty", "holds no evaluations.parquet, pareto.parquet, "
                          "search.json")
    rc, _, err = cli("compare", a, a, "--label", "only-one")
    assert_one_error_line(rc, err, "--label is given 1 times for 2 sources")


def test_export_targets_errors(cli, quickstart_job, digits_checkpoint, pareto_file, no_work,
                               tmp_path):
    """--targets names devices of the job, and needs the search's front on each device."""
    args = ("export", quickstart_job, "--checkpoint", digits_checkpoint, "--pareto",
            pareto_file, "--output-dir", tmp_path / "out")
    rc, _, err = cli(*args, "--targets", "edge")
    assert_one_error_line(rc, err, "'edge' is not a device of this job", "local-cpu")
    rc, _, err = cli(*args, "--budgets", "5", "--targets", "edge")
    assert_one_error_line(rc, err, "'edge' is not a device of this job", "local-cpu")
    rc, _, err = cli(*args, "--budgets", "5", "--targets", "local-cpu,edge",
                     "latency.targets=[{name: edge}]")
    assert_one_error_line(rc, err, "no front on 'edge' (no pareto_edge.parquet)",
                          "latency.targets")
    assert not (tmp_path / "out").exists()
