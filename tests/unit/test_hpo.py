"""``raynas tune``'s pieces without Ray: the hparams section, the trials' job documents, the
probe set, the schedulers' and searchers' settings, and its bad-input errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, cli_runner

from raynas.config import build_config, load_config
from raynas.errors import ConfigError
from raynas.hpo.probes import probe_archs
from raynas.hpo.space import best_job_doc, parse_hparams, trial_doc, tune_space
from raynas.space.dims import Choice, FloatRange, IntRange
from raynas.space.registry import load_space
from raynas.training.flops_table import counted_flops

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "tune_quickstart.yaml"


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    return cli_runner(tmp_path, monkeypatch, capsys)


def _cfg(*overrides: str):
    return load_config(JOB, list(overrides))


def test_dotted_and_nested_hparams_read_alike():
    nested = _cfg("hparams.train.num_subnets={type: int, low: 2, high: 4}",
                  "hparams.train.distill.name={type: choice, values: [kl, none]}")
    dims = {d.name: d for d in parse_hparams(nested)}
    assert dims["train.lr"] == FloatRange("train.lr", 0.003, 0.3, True)
    assert dims["train.num_subnets"] == IntRange("train.num_subnets", 2, 4)
    assert dims["train.distill.name"] == Choice("train.distill.name", ("kl", "none"))


@pytest.mark.parametrize("override, needles", [
    ("hparams.search.budget={type: int, low: 1, high: 3}",
     ["hparams.search.budget", "train, data, weights, task, seed"]),
    ("hparams.train.lr={type: float, low: -1, high: 0.3}",
     ["hparams.train.lr", "-1.0", "train.lr", "greater than 0"]),
    ("hparams.train.num_subnets={type: int, low: 0, high: 3}",
     ["hparams.train.num_subnets", "0", "greater than or equal to 1"]),
    ("hparams.train.distill.name={type: choice, values: [kl, nope]}",
     ["hparams.train.distill.name", "'nope'", "alpha_divergence, kl, none"]),
    ("hparams.train.lr={type: floaty}", ["hparams.train.lr.type", "'floaty'"]),
    ("hparams.train.lr={type: float, low: 0.3, high: 0.1}", ["hparams.train.lr.high"]),
], ids=["section", "low", "int-low", "choice", "type", "order"])
def test_a_bad_hparam_is_named_with_its_value(override, needles):
    with pytest.raises(ConfigError) as err:
        _cfg(override)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_a_trial_document_keeps_the_component_an_option_belongs_to():
    cfg = _cfg("train.distill={name: kl, options: {temperature: 2.0}}")
    doc = trial_doc(cfg, {"train.distill.options.temperature": 4.0, "train.lr": 0.01})
    trial = build_config(doc, "trial", base_dir=cfg.base_dir)
    assert trial.train.distill.name == "kl"
    assert trial.train.distill.options == {"temperature": 4.0}
    assert trial.train.lr == 0.01
    assert not trial.hparams and "hpo" not in doc


def test_the_best_job_file_is_a_job_with_the_values_and_absolute_paths(tmp_path):
    space = tmp_path / "my_space.yaml"
    space.write_text((ROOT / "search_spaces" / "digits_cnn.yaml").read_text())
    job = tmp_path / "job.yaml"
    job.write_text(JOB.read_text().replace("space: digits_cnn", "space: my_space.yaml")
                   + "output_dir: out\n")
    cfg = load_config(job)
    doc = best_job_doc(cfg, {"train.lr": 0.02, "train.weight_decay": 1e-4})
    assert doc["space"] == str(space.resolve()) and "output_dir" not in doc
    best = build_config(doc, "best", base_dir="/")  # another folder: the paths still hold
    assert (best.train.lr, best.train.weight_decay) == (0.02, 1e-4)


def test_probes_are_the_extremes_and_a_spread_over_flops():
    space = load_space("digits_cnn")
    flops = counted_flops(space)
    probes = [space.validate(a) for a in probe_archs(space, 6, seed=3)]
    assert probes[:2] == [space.largest(), space.smallest()]
    assert len(set(probes)) == 6
    inner = [flops(a) for a in probes[2:]]
    assert inner == sorted(inner)
    assert flops(probes[1]) < inner[0] and inner[-1] < flops(probes[0])
    # Spread, not bunched: the inner ones span most of a sample's FLOPs range.
    rng = random.Random(0)
    sample = sorted(flops(space.sample(rng)) for _ in range(200))
    assert inner[-1] - inner[0] > 0.4 * (sample[-10] - sample[10])
    assert probe_archs(space, 6, seed=3) == probe_archs(space, 6, seed=3)


def test_int_hparams_keep_their_inclusive_upper_bound():
    space = tune_space([IntRange("train.num_subnets", 2, 4)])["train.num_subnets"]
    assert {space.sample() for _ in range(200)} == {2, 3, 4}


def test_pbt_perturbations_stay_inside_their_dims():
    from raynas.hpo.study import clamp

    dims = [FloatRange("train.lr", 0.01, 0.1), IntRange("train.num_subnets", 2, 4)]
    assert clamp({"train.lr": 0.12, "train.num_subnets": 5}, dims) == {
        "train.lr": 0.1, "train.num_subnets": 4}
    assert clamp({"train.lr": 0.008, "train.num_subnets": 1}, dims) == {
        "train.lr": 0.01, "train.num_subnets": 2}


@pytest.mark.parametrize("overrides, needles", [
    (["hpo.scheduler=pbt"], ["hpo.searcher = 'optuna_tpe'", "random"]),
    (["hpo.scheduler={name: asha, options: {grace: 1}}"],
     ["hpo.scheduler.options.grace", "grace_period, reduction_factor"]),
    (["hpo.scheduler={name: hyperband}"], ["hpo.scheduler = 'hyperband'", "fifo, asha, pbt"]),
    (["hpo.scheduler={name: asha, options: {reduction_factor: 1}}"],
     ["hpo.scheduler.options", "reduction_factor"]),
    (["hpo.searcher=nevergrad", "hpo.options={optimizer: NoSuchOpt}"],
     ["hpo.options", "NoSuchOpt", "NGOpt"]),
    (["hpo.searcher=random", "hpo.options={seed: 1}"], ["hpo.options", "no options"]),
], ids=["pbt-tpe", "asha-option", "scheduler", "asha-value", "nevergrad", "random"])
def test_tune_refuses_bad_study_settings_before_any_work(cli, tmp_path, overrides, needles):
    rc, _, err = cli("tune", JOB, *overrides)
    assert_one_error_line(rc, err, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_tune_needs_hparams(cli, tmp_path):
    rc, _, err = cli("tune", ROOT / "jobs" / "quickstart.yaml")
    assert_one_error_line(rc, err, "hparams: empty", "train.lr")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("searcher", ["optuna_tpe", "nevergrad", "random"])
def test_each_searcher_suggests_values_inside_the_dims_and_is_seeded(searcher):
    from raynas.hpo.study import build_searcher

    def suggestions(seed: int) -> list[dict]:
        cfg = _cfg(f"hpo.searcher={searcher}", f"seed={seed}",
                   "hparams.train.num_subnets={type: int, low: 2, high: 4}",
                   "hparams.train.distill.name={type: choice, values: [kl, none]}")
        dims = parse_hparams(cfg)
        alg = build_searcher(cfg, "val_accuracy_probes", "max")
        if searcher == "random":  # Tune's variant generator: trials from the space
            from ray.tune.experiment import Experiment

            alg.add_configurations([Experiment("s", lambda c: None, num_samples=6,
                                               config=tune_space(dims))])
            return [alg.next_trial().config for _ in range(6)]
        assert alg.set_search_properties("val_accuracy_probes", "max", tune_space(dims))
        out = []
        for i in range(6):
            config = alg.suggest(f"t{i}")
            alg.on_trial_complete(f"t{i}", {"val_accuracy_probes": 0.5 + 0.01 * i})
            out.append(config)
        return out

    first = suggestions(0)
    for config in first:
        assert 0.003 <= config["train.lr"] <= 0.3
        assert 1e-5 <= config["train.weight_decay"] <= 1e-2
        assert config["train.num_subnets"] in (2, 3, 4)
        assert config["train.distill.name"] in ("kl", "none")
    assert len({c["train.lr"] for c in first}) >= 3  # draws, not one point (NGOpt repeats)
    if searcher != "nevergrad":  # nevergrad's own seeding is its parametrization's
        assert suggestions(0) == first
        assert suggestions(1) != first


def test_a_trial_run_made_before_a_ctrl_c_is_reopened_not_doubled(tmp_path):
    """The study created the trial's MLflow run, then Ctrl-C came before the job state
    noted it: the resumed study finds the run by its tags and logs into it."""
    from types import SimpleNamespace

    from raynas.hpo.study import _Tracking
    from raynas.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    parent = MlflowTracker(uri, "tune")
    parent_id = parent.start_run("tune")
    job = SimpleNamespace(tracker=parent, cfg=SimpleNamespace(name="j", experiment_name="tune"))
    trial = SimpleNamespace(trial_id="abc123", config={"train.lr": 0.01})
    first = _Tracking("k", job, parent_id, {}, "m", 3, lambda: None)
    made = first._tracker(trial).run_id  # the run exists; the state never heard of it

    noted: list[dict] = []
    runs: dict[str, str] = {}
    second = _Tracking("k", job, parent_id, runs, "m", 3, lambda: noted.append(dict(runs)))
    assert second._tracker(trial).run_id == made
    assert runs == {"abc123": made} and noted == [{"abc123": made}]
    other = SimpleNamespace(trial_id="def456", config={"train.lr": 0.1})
    assert second._tracker(other).run_id not in (None, made)  # a new trial: a new run
    children = parent.client.search_runs([parent.experiment_id],
                                         f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.data.tags["raynas.trial"] for r in children) == ["abc123", "def456"]
    assert parent.run_info(made)["params"] == {"train.lr": "0.01"}
