"""raynas.config: job files, dotted overrides, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from raynas.config import (
    DEFAULT_TRACKING_URI,
    JobConfig,
    TrainConfig,
    build_config,
    load_config,
    parse_overrides,
    resolve_path,
)
from raynas.errors import ConfigError

BASE = {"name": "job", "space": "tiny_cnn"}


def _err(overrides=None, doc=None) -> str:
    with pytest.raises(ConfigError) as e:
        build_config(doc if doc is not None else BASE, "job.yaml", overrides)
    msg = str(e.value)
    assert msg.startswith("job.yaml: ") or msg.startswith("override ")
    assert "\n" not in msg
    return msg


class TestDefaults:
    def test_minimal_doc_gets_every_default(self):
        cfg = build_config(BASE)
        assert cfg.seed == 0 and cfg.output_dir is None
        assert cfg.train.epochs == 20 and cfg.train.optimizer.name == "sgd"
        assert cfg.train.sampler.name == "sandwich" and cfg.train.num_subnets == 4
        assert cfg.data.name == "digits" and cfg.data.val_fraction == 0.15
        assert cfg.search.searcher == "optuna_nsga2" and cfg.search.budget == 200
        assert cfg.search.evaluator.calib_batches == 2
        assert cfg.latency.target == "local-cpu" and cfg.latency.batch_size == 1
        assert cfg.export.pick == "best" and cfg.export.formats == ("torchscript", "onnx")
        assert cfg.experiment_name == "job"
        assert cfg.out_dir == (Path("outputs") / "job").resolve()

    def test_quickstart_loads(self, quickstart_job):
        cfg = load_config(quickstart_job)
        assert cfg.name == "quickstart" and cfg.space == "digits_cnn"
        assert cfg.search.budget == 192 and cfg.train.epochs == 20
        assert cfg.search.latency_budget_ms is None
        assert Path(cfg.base_dir) == quickstart_job.parent.resolve()

    def test_frozen(self):
        cfg = build_config(BASE)
        with pytest.raises(ValidationError):
            cfg.train.epochs = 5

    def test_missing_required(self):
        m = _err(doc={"name": "job"})
        assert "space: required key is missing" in m

    def test_bad_name(self):
        m = _err(doc={"name": "has space", "space": "x"})
        assert "name = 'has space'" in m


class TestOverrides:
    def test_parse(self):
        assert parse_overrides(["train.epochs=3", "train.lr=0.5", "seed=4",
                                "tracking.uri=sqlite:///a=b.db"]) == {
            "train": {"epochs": 3, "lr": 0.5}, "seed": 4,
            "tracking": {"uri": "sqlite:///a=b.db"}}

    def test_yaml_typed_values(self):
        cfg = build_config(BASE, overrides=[
            "train.epochs=3", "train.use_gpu=true", "search.latency_budget_ms=0.5",
            "export.formats=[onnx]", "export.pick=2", "train.grad_clip=null",
            "search.evaluator.calib_batches=4", "train.optimizer=adamw", "name=other",
        ])
        assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
        assert cfg.train.use_gpu is True
        assert cfg.search.latency_budget_ms == 0.5
        assert cfg.export.formats == ("onnx",)
        assert cfg.export.pick == 2
        assert cfg.train.grad_clip is None
        assert cfg.search.evaluator.calib_batches == 4
        assert cfg.train.optimizer.name == "adamw" and cfg.train.optimizer.options == {}
        assert cfg.name == "other"
        # untouched siblings keep their defaults
        assert cfg.train.lr == 0.05 and cfg.search.evaluator.calib_batch_size == 256

    def test_override_beats_file(self, quickstart_job):
        cfg = load_config(quickstart_job, ["search.budget=8", "train.epochs=1"])
        assert cfg.search.budget == 8 and cfg.train.epochs == 1
        assert cfg.search.searcher == "optuna_nsga2"  # from the file, not overridden

    def test_malformed(self):
        with pytest.raises(ConfigError) as e:
            parse_overrides(["train.epochs"])
        assert "'train.epochs'" in str(e.value) and "dotted.key=value" in str(e.value)

    def test_set_twice(self):
        with pytest.raises(ConfigError, match="set twice"):
            parse_overrides(["train=5", "train.epochs=3"])


class TestErrors:
    def test_unknown_key_lists_allowed(self):
        m = _err(["train.epochz=3"])
        assert "train.epochz" in m and "unknown key" in m
        for k in ("epochs", "batch_size", "lr", "sampler", "num_subnets"):
            assert k in m

    def test_unknown_top_level_key(self):
        m = _err(["bogus=1"])
        assert "bogus: unknown key" in m
        allowed = m.split("allowed keys here:")[1]
        for k in ("name", "space", "train", "search", "export"):
            assert k in allowed
        assert "base_dir" not in allowed  # internal, not a user key

    def test_unknown_nested_key(self):
        m = _err(["search.evaluator.batches=1"])
        assert "search.evaluator.batches" in m and "calib_batches" in m

    def test_wrong_type(self):
        m = _err(["train.epochs=abc"])
        assert "train.epochs = 'abc'" in m and "integer" in m

    def test_section_not_a_mapping(self):
        assert "train = 5" in _err(["train=5"])

    @pytest.mark.parametrize("override, field, hint", [
        ("search.budget=0", "search.budget = 0", "greater than or equal to 1"),
        ("data.val_fraction=0.7", "data.val_fraction = 0.7", "less than 0.5"),
        ("train.label_smoothing=1", "train.label_smoothing = 1", "less than 1"),
        ("train.lr=0", "train.lr = 0", "greater than 0"),
        ("train.num_subnets=17", "train.num_subnets = 17", "less than or equal to 16"),
    ])
    def test_out_of_range(self, override, field, hint):
        m = _err([override])
        assert field in m and hint in m

    def test_bad_literal(self):
        m = _err(["train.sampler=greedy"])
        assert "train.sampler = 'greedy'" in m and "sandwich" in m and "uniform" in m
        m = _err(["export.formats=[torchscript, tflite]"])
        assert "export.formats" in m and "'tflite'" in m

    def test_pick(self):
        assert build_config(BASE, overrides=["export.pick=0"]).export.pick == 0
        m = _err(["export.pick=first"])
        assert "export.pick = 'first'" in m and "'best'" in m
        m = _err(["export.pick=-1"])
        assert "export.pick = -1" in m

    def test_unknown_searcher(self):
        m = _err(["search.searcher=cmaes"])
        assert "search.searcher = 'cmaes'" in m
        for name in ("optuna_nsga2", "optuna_tpe", "random"):
            assert name in m

    def test_parquet_needs_path(self):
        m = _err(["data.name=parquet"])
        assert "data.path" in m and "parquet" in m
        cfg = build_config(BASE, overrides=["data.name=parquet", "data.path=x.parquet"])
        assert cfg.data.path == "x.parquet"

    def test_fractions_sum(self):
        m = _err(["data.val_fraction=0.45", "data.test_fraction=0.4"])
        assert "data.val_fraction + data.test_fraction" in m and "0.8" in m

    def test_load_errors(self, tmp_path):
        with pytest.raises(ConfigError, match="does not exist"):
            load_config(tmp_path / "nope.yaml")
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: [unclosed\n")
        with pytest.raises(ConfigError) as e:
            load_config(bad)
        assert "not valid YAML" in str(e.value) and "\n" not in str(e.value)
        bad.write_text("- a\n- b\n")
        with pytest.raises(ConfigError, match="must be a YAML mapping"):
            load_config(bad)
        bad.write_text("name: j\nspace: s\ntrain:\n  epocs: 3\n")
        with pytest.raises(ConfigError) as e:
            load_config(bad)
        assert str(e.value).startswith(str(bad)) and "train.epocs" in str(e.value)


class TestTracking:
    def test_env_wins(self, monkeypatch):
        cfg = build_config({**BASE, "tracking": {"uri": "sqlite:///job.db"}})
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
        assert cfg.tracking_uri == "http://127.0.0.1:5000"
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        assert cfg.tracking_uri == "sqlite:///job.db"
        assert build_config(BASE).tracking_uri == DEFAULT_TRACKING_URI

    def test_experiment_name(self):
        cfg = build_config({**BASE, "tracking": {"experiment": "exp"}})
        assert cfg.experiment_name == "exp"


def test_resolved_is_json(tmp_path):
    cfg = build_config(BASE, overrides=["export.formats=[onnx]", "export.pick=1"],
                       base_dir=tmp_path)
    doc = json.loads(json.dumps(cfg.resolved()))
    assert doc["train"]["epochs"] == 20 and doc["export"]["formats"] == ["onnx"]
    assert doc["base_dir"] == str(tmp_path.resolve())
    again = build_config(doc, base_dir=tmp_path)
    assert again == cfg
    assert isinstance(again, JobConfig)


def test_resolve_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job_dir = tmp_path / "jobs"
    job_dir.mkdir()
    (job_dir / "data.parquet").write_text("")
    cfg = build_config(BASE, base_dir=job_dir)
    assert resolve_path(cfg, "data.parquet") == job_dir / "data.parquet"
    (tmp_path / "here.parquet").write_text("")
    assert resolve_path(cfg, "here.parquet") == Path("here.parquet")
    assert resolve_path(cfg, "/abs/x") == Path("/abs/x")


def test_train_config_standalone():
    assert TrainConfig().epochs == 20
    with pytest.raises(ValidationError):
        TrainConfig(bogus=1)


def test_scientific_numbers_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 reads ``1e-4`` as a string; users mean a number, in a job file or an
    override."""
    job = tmp_path / "job.yaml"
    job.write_text("name: j\nspace: digits_cnn\ntrain: {lr: 1e-3}\n")
    cfg = load_config(job, ["train.weight_decay=5e-5"])
    assert cfg.train.lr == 1e-3 and cfg.train.weight_decay == 5e-5
