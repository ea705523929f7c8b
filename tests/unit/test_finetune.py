"""raynas.hpo.finetune: the fine-tuning loop (pure torch) and the finetune section's checks;
``raynas finetune``'s bad input (exit 2, nothing written)."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import assert_one_error_line, cli_runner

from raynas.config import TrainConfig, load_config
from raynas.errors import ConfigError
from raynas.hpo.finetune import finetune, parse_finetune_hparams
from raynas.search.results import write_records
from raynas.supernets import build_static
from raynas.tasks import make_loader
from raynas.tracking import NullTracker

TRAIN = TrainConfig(batch_size=64).model_dump(mode="json")
BASE = {"epochs": 2, "lr": 0.05, "weight_decay": 0.0, "distill": 0.0, "temperature": 1.0}


def _model(space, seed=0):
    torch.manual_seed(seed)
    return build_static(space, space.largest())


def _val(task, data):
    return list(make_loader(data.val, 256))


def test_finetuning_trains_at_the_given_learning_rate(tiny_space, digits_data):
    """From the same weights, lr 0.05 lifts validation accuracy far above where it starts;
    lr 1e-6 leaves it where it was: the trial's learning rate is the one used."""
    task, data = digits_data
    val = _val(task, data)
    before = task.evaluate(_model(tiny_space), val)["accuracy"]
    moved, still = _model(tiny_space), _model(tiny_space)
    history = finetune(moved, task, data.train, val, TRAIN, BASE)
    finetune(still, task, data.train, val, TRAIN, {**BASE, "lr": 1e-6})
    assert [r["epoch"] for r in history] == [0, 1]  # values["epochs"] epochs, reported each
    assert history[-1]["val_accuracy"] == pytest.approx(task.evaluate(moved, val)["accuracy"])
    assert history[-1]["val_accuracy"] > before + 0.3, (before, history)
    assert abs(task.evaluate(still, val)["accuracy"] - before) < 0.03


def test_distillation_follows_the_teacher(tiny_space, digits_data):
    """With distill = 1 the student learns the teacher's predictions (here a random net's,
    unrelated to the labels); with 0 it learns the labels and agrees with the teacher far
    less."""
    task, data = digits_data
    val = _val(task, data)
    teacher = _model(tiny_space, seed=7).eval()

    def agreement(model):
        model.eval()
        with torch.no_grad():
            hits = [(model(*task.inputs(b)).argmax(-1) == teacher(*task.inputs(b)).argmax(-1))
                    .float() for b in val]
        return float(torch.cat(hits).mean())

    kd, labels = _model(tiny_space), _model(tiny_space)
    finetune(kd, task, data.train, val, TRAIN, {**BASE, "distill": 1.0, "epochs": 3},
             teacher=teacher)
    finetune(labels, task, data.train, val, TRAIN, {**BASE, "epochs": 3}, teacher=teacher)
    assert agreement(kd) > agreement(labels) + 0.3, (agreement(kd), agreement(labels))
    with pytest.raises(ConfigError, match="teacher"):
        finetune(_model(tiny_space), task, data.train, val, TRAIN, {**BASE, "distill": 0.5})


def test_weight_decay_and_temperature_are_the_trials_own(tiny_space, digits_data):
    """weight_decay shrinks the conv / linear weights (not the BN ones); a distillation
    temperature other than 1 gives other weights than 1 does."""
    task, data = digits_data
    val = _val(task, data)

    def tuned(teacher=None, **values):
        model = _model(tiny_space)
        finetune(model, task, data.train, val, TRAIN, {**BASE, "epochs": 1, **values},
                 teacher=teacher)
        return torch.cat([p.detach().flatten() for p in model.parameters() if p.dim() > 1])

    plain, decayed = tuned(), tuned(weight_decay=0.5)
    assert decayed.norm() < 0.8 * plain.norm(), (decayed.norm(), plain.norm())
    teacher = _model(tiny_space, seed=7).eval()
    warm = tuned(teacher, distill=1.0, temperature=4.0)
    assert not torch.allclose(warm, tuned(teacher, distill=1.0), atol=1e-4)


def test_zero_weights_stay_zero(tiny_space, digits_data):
    """A pruned ticket's zeros survive fine-tuning; the other weights train."""
    task, data = digits_data
    model = _model(tiny_space)
    weight = next(p for p in model.parameters() if p.dim() == 4)
    with torch.no_grad():
        weight.view(-1)[::2] = 0.0
    start = weight.detach().clone()
    finetune(model, task, data.train, _val(task, data), TRAIN, {**BASE, "epochs": 1})
    assert torch.all(weight.view(-1)[::2] == 0)
    assert not torch.allclose(weight.view(-1)[1::2], start.view(-1)[1::2])


def test_the_finetune_section_is_checked(quickstart_job):
    dims = parse_finetune_hparams(load_config(quickstart_job, [
        "finetune.hparams={epochs: {type: int, low: 1, high: 4}, distill: {type: choice, "
        "values: [0.0, 0.5]}}"]))
    assert [d.name for d in dims] == ["epochs", "distill"]
    assert parse_finetune_hparams(load_config(quickstart_job, ["finetune.hparams={}"])) == ()
    for override, needle in [
        ("finetune.hparams.momentum={type: float, low: 0.1, high: 0.9}",
         "finetune.hparams.momentum: not a finetune key"),
        ("finetune.hparams.distill={type: float, low: 0.5, high: 2}",
         "finetune.hparams.distill: the value 2"),
        ("finetune.hparams.lr={type: float, low: 0.1}", "finetune.hparams.lr"),
        ("finetune.epochs=0", "finetune.epochs"),
    ]:
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
            load_config(quickstart_job, [override])


class _StubTracker(NullTracker):
    def __init__(self, uri: str, experiment: str | None = None):
        self.uri, self.experiment = uri, experiment


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("raynas.pipeline.MlflowTracker", _StubTracker)

    def reached(*args, **kwargs):
        pytest.fail("bad input reached the finetune stage")

    monkeypatch.setattr("raynas.pipeline.finetune.finetune_stage", reached)
    return cli_runner(tmp_path, monkeypatch, capsys)


def test_bad_finetune_input_exits_2_before_any_work(cli, quickstart_job, digits_checkpoint,
                                                    digits_space, tmp_path):
    front = write_records(tmp_path / "pareto.parquet", [
        {"arch": digits_space.sample(i).to_dict(), "accuracy": 0.5 + i / 10,
         "latency_ms": 1.0 + i} for i in range(3)], digits_space)
    out = tmp_path / "out"
    args = ("finetune", quickstart_job, "--output-dir", out)
    rc, _, err = cli(*args)
    assert_one_error_line(rc, err, "--from-run", "--checkpoint")
    rc, _, err = cli(*args, "--checkpoint", digits_checkpoint)
    assert_one_error_line(rc, err, "--pareto", "--arch")
    source = ("--checkpoint", digits_checkpoint, "--pareto", front)
    rc, _, err = cli(*args, *source, "--pick", "0,x")
    assert_one_error_line(rc, err, "--pick = '0,x'", "'all'")
    rc, _, err = cli(*args, *source, "--pick", "0,7")
    assert_one_error_line(rc, err, "= 7", "3 points")
    rc, _, err = cli(*args, *source, "--budget", "latency_ms<=0.5", "--pick", "all")
    assert_one_error_line(rc, err, "no Pareto point meets it")
    rc, _, err = cli(*args, "--checkpoint", digits_checkpoint, "--arch", '{"a": 1}',
                     "--pick", "0")
    assert_one_error_line(rc, err, "--arch", "--pick")
    rc, _, err = cli(*args, *source, "finetune.hparams.lr={type: float, low: -1, high: 1}")
    assert_one_error_line(rc, err, "finetune.hparams.lr")
    rc, _, err = cli(*args, *source, "--search-arch", "--pick", "0")
    assert_one_error_line(rc, err, "--search-arch", "--pick")
    rc, _, err = cli(*args, "--checkpoint", digits_checkpoint, "--search-arch",
                     "--budget", "accuracy<=0.5")
    assert_one_error_line(rc, err, "--budget = 'accuracy<=0.5'", "maximised")
    rc, _, err = cli(*args, "--checkpoint", digits_checkpoint, "--search-arch",
                     "finetune.num_workers=0")
    assert_one_error_line(rc, err, "finetune.num_workers")
    assert not out.exists()
