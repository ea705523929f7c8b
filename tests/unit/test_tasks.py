"""The task contract (raynas.tasks): the tagging task and its datasets, metrics over padded
batches, distillation masks, registries and the job's choice of task and objectives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from raynas.config import DataConfig, build_config
from raynas.errors import ConfigError
from raynas.space import SearchSpace
from raynas.tasks import TASKS, build_task, load_task_data, make_loader
from raynas.tasks.tagging import IGNORE, peak_tags
from raynas.training.losses import kd_kl

MODEL = {"vocab_size": 16, "num_classes": 3, "max_len": 12}


@pytest.fixture(scope="module")
def task():
    return TASKS.create("tagging", model=MODEL)


@pytest.fixture(scope="module")
def data(task):
    return load_task_data(task, DataConfig(name="generated_tagging", options={"n": 300}
                                           ).model_dump())


def test_peak_tags():
    assert peak_tags(np.array([1, 3, 2, 2, 5])).tolist() == [1, 2, 0, 0, 2]
    assert peak_tags(np.array([4])).tolist() == [2]  # above the 0s outside


def test_generated_tagging_has_the_stated_structure(data):
    tr = data.train.tensors
    assert tr["tokens"].shape[1] == MODEL["max_len"]
    assert len(data.train) + len(data.val) + len(data.test) == 300
    for tokens, length, tags in zip(tr["tokens"], tr["lengths"], tr["tags"]):
        n = int(length)
        assert 4 <= n <= MODEL["max_len"]
        assert (tokens[n:] == 0).all() and (tags[n:] == IGNORE).all()  # padding
        seq = tokens[:n].numpy()
        assert (seq >= 1).all() and (seq < MODEL["vocab_size"]).all()
        assert (np.abs(np.diff(seq)) <= 2).all()  # a random walk with steps -2..2
        assert tags[:n].tolist() == peak_tags(seq).tolist()
    # seeded: the same split twice, another seed another one
    again = load_task_data(build_task_for(MODEL), DataConfig(
        name="generated_tagging", options={"n": 300}).model_dump())
    assert torch.equal(again.test.tensors["tokens"], data.test.tensors["tokens"])


def build_task_for(model):
    return TASKS.create("tagging", model=model)


def test_metrics_ignore_padding(task):
    tokens = torch.tensor([[3, 4, 0, 0], [5, 6, 7, 0]])
    tags = torch.tensor([[0, 2, IGNORE, IGNORE], [0, 0, 2, IGNORE]])
    out = torch.full((2, 4, 3), -5.0)
    out[..., 0] = 5.0  # predicts tag 0 everywhere, padding included
    batch = {"tokens": tokens, "lengths": torch.tensor([2, 3]), "tags": tags}
    class Fixed(torch.nn.Module):
        def forward(self, tokens, lengths):
            return out

    m = task.evaluate(Fixed(), [batch])
    assert m["token_accuracy"] == pytest.approx(3 / 5)  # 5 real tokens, 3 tagged 0
    expected = F.cross_entropy(out[tags != IGNORE], tags[tags != IGNORE])
    assert m["loss"] == pytest.approx(float(expected), rel=1e-6)
    assert task.loss(out, batch).item() == pytest.approx(float(expected), rel=1e-6)


def test_distillation_averages_over_real_tokens_only(task):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    batch = {"tags": torch.tensor([[0, 1, IGNORE, IGNORE], [1, 1, 1, IGNORE]])}
    mask = task.distill_mask(batch)
    target = task.distill_target(teacher)
    got = kd_kl(student, target, mask)
    per = (target * (target.log() - F.log_softmax(student, -1))).sum(-1)
    assert got.item() == pytest.approx(float(per[mask].mean()), rel=1e-5)
    # padding positions change nothing
    student2 = student.clone()
    student2[~mask] = 100.0
    assert kd_kl(student2, target, mask).item() == pytest.approx(got.item(), rel=1e-6)


def test_parquet_tagging(tmp_path, task):
    rows = {"tokens": [[1, 2, 3], [4, 5], [6, 7, 8, 9]] * 10,
            "tags": [[0, 1, 2], [1, 0], [0, 0, 1, 2]] * 10}
    pq.write_table(pa.table(rows), tmp_path / "t.parquet")
    d = load_task_data(task, DataConfig(name="parquet_tagging", path=str(tmp_path / "t.parquet"),
                                        val_fraction=0.2, test_fraction=0.2).model_dump())
    all_lengths = torch.cat([s.tensors["lengths"] for s in (d.train, d.val, d.test)])
    assert sorted(all_lengths.tolist()) == sorted([3, 2, 4] * 10)
    b = next(iter(make_loader(d.train, 4)))
    assert set(b) == {"tokens", "lengths", "tags"} and b["tokens"].shape == (4, 12)
    long = {"tokens": [list(range(1, 14))], "tags": [[0] * 13]}
    pq.write_table(pa.table(long), tmp_path / "long.parquet")
    with pytest.raises(ConfigError, match="row 0 has 13 tokens and 13 tags; each row needs "
                                          "1..12"):
        load_task_data(task, DataConfig(name="parquet_tagging",
                                        path=str(tmp_path / "long.parquet")).model_dump())
    with pytest.raises(ConfigError, match="data.options.tags_column = 'labels': not a column"):
        load_task_data(task, DataConfig(name="parquet_tagging", path=str(tmp_path / "t.parquet"),
                                        options={"tags_column": "labels"}).model_dump())


def test_build_task_checks_the_family(repo_root):
    cnn = SearchSpace.load(repo_root / "search_spaces" / "tiny_cnn.yaml")
    seq = SearchSpace.load(repo_root / "search_spaces" / "tiny_seq_conv.yaml")
    assert build_task(cnn).name == "classification"
    assert build_task(seq).name == "tagging"
    with pytest.raises(ConfigError, match="task.name = 'tagging': family 'cnn' takes "
                                          "classification"):
        build_task(cnn, {"name": "tagging"})
    with pytest.raises(ConfigError, match="task.name = 'speech': unknown task; choose one of "
                                          "classification, masked_lm, speech_recognition, tagging"):
        build_task(cnn, {"name": "speech"})
    with pytest.raises(ConfigError, match="task.options.x = 1: unknown option"):
        build_task(cnn, {"name": "classification", "options": {"x": 1}})


def test_search_objectives_come_from_the_task():
    from raynas.pipeline.job import Job

    job = Job(build_config({"name": "t", "space": "tiny_seq_conv",
                            "data": {"name": "generated_tagging"}}))
    assert [(o.name, o.direction) for o in job.objectives] == [("token_accuracy", "max"),
                                                               ("latency_ms", "min")]
    job = Job(build_config({"name": "t", "space": "tiny_cnn", "search": {"objectives": [
        {"name": "loss", "goal": "min"}, {"name": "params", "goal": "min"}]}}))
    assert [(o.name, o.direction) for o in job.objectives] == [("loss", "min"),
                                                               ("params", "min")]
    with pytest.raises(ConfigError, match=r"search.objectives\[0\].name = 'bleu': not a metric "
                                          "of task 'classification'; choose from accuracy, "
                                          "loss, latency_ms"):
        Job(build_config({"name": "t", "space": "tiny_cnn",
                          "search": {"objectives": [{"name": "bleu", "goal": "max"}]}}))


@pytest.mark.parametrize("name", sorted(TASKS.names()))
def test_sample_sums_are_metric_sums_per_sample(name, repo_root):
    """The vectorised per-sample sums (search halving's units) equal ``metric_sums`` of each
    sample alone (the base class's slicing), and add up to the batch's."""
    from raynas.tasks.base import Task

    spaces = [SearchSpace.load(p) for p in sorted((repo_root / "search_spaces").glob("*.yaml"))]
    space = next(s for s in spaces if s.family and build_task(s).name == name)
    task = build_task(space)
    g = torch.Generator().manual_seed(0)
    batch = task.example_inputs(6, seed=1)
    if name == "tagging":
        t, classes = batch["tokens"].shape[1], space.model["num_classes"]
        batch["lengths"] = torch.tensor([t, 4, 7, t, 5, 9])
        batch["tags"] = torch.randint(0, classes, (6, t), generator=g)
        batch["tags"][torch.arange(t)[None] >= batch["lengths"][:, None]] = IGNORE
        out = torch.randn(6, t, classes, generator=g)
    elif name == "masked_lm":  # about 3 in 10 positions predicted, the rest ignored
        t = batch["tokens"].shape[1]
        batch["targets"] = torch.where(torch.rand(6, t, generator=g) < 0.3, batch["tokens"],
                                       IGNORE)
        out = torch.randn(6, t, space.model["vocab_size"], generator=g)
    elif name == "translation":  # targets of varied lengths, -100 after each
        t = batch["prev_tokens"].shape[1]
        lengths = torch.tensor([t, 3, 8, 1, t - 2, 5])
        batch["targets"] = torch.where(torch.arange(t)[None] < lengths[:, None],
                                       batch["prev_tokens"].roll(-1, 1), IGNORE)
        out = torch.randn(6, t, space.model["vocab_size"], generator=g)
    elif name == "speech_recognition":  # transcripts of 1-4 units, CTC over the frames
        from raynas.nn.conformer import subsampled_lengths

        t = int(subsampled_lengths(batch["feats"].shape[1]))
        batch["label_lengths"] = torch.tensor([4, 1, 3, 2, 4, 1])
        batch["labels"] = torch.randint(1, space.model["vocab_size"], (6, 4), generator=g)
        out = torch.randn(6, t, space.model["vocab_size"], generator=g)
    else:
        batch["labels"] = torch.randint(0, space.model["num_classes"], (6,), generator=g)
        out = torch.randn(6, space.model["num_classes"], generator=g)
    fast, slow = task.sample_sums(out, batch), Task.sample_sums(task, out, batch)
    whole = task.metric_sums(out, batch)
    assert set(fast) == set(slow) == set(whole)
    for k in fast:
        torch.testing.assert_close(fast[k][0], slow[k][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast[k][1], slow[k][1])
        assert float(fast[k][0].sum()) == pytest.approx(whole[k][0], rel=1e-5)
        assert float(fast[k][1].sum()) == pytest.approx(whole[k][1])


def test_search_constraints_bound_any_recorded_metric():
    from raynas.pipeline.job import Job
    from raynas.search.searchers import Constraint

    job = Job(build_config({"name": "t", "space": "tiny_cnn", "search": {
        "latency_budget_ms": 0.5, "constraints": ["params<=2e4", "loss <= 0.3"]}}))
    assert job.constraints == (Constraint("latency_ms", 0.5), Constraint("params", 2e4),
                               Constraint("loss", 0.3))
    one = Job(build_config({"name": "t", "space": "tiny_cnn",
                            "search": {"constraints": "params<=2e4"}}))  # a lone budget
    assert one.constraints == (Constraint("params", 2e4),) and str(one.constraints[0]) == \
        "params<=20000"
    for bad, needle in [
            ("parms<=2e4", r"search.constraints\[0\] = 'parms<=2e4': 'parms' is not a metric "
                           r"a subnet's record holds; choose from accuracy, loss, latency_ms"),
            ("accuracy<=0.9", r"accuracy is maximised, and a budget caps a metric from above; "
                              r"budget one of loss, latency_ms, flops, params"),
            ("params<2e4", r"write METRIC<=LIMIT"), ("params<=inf", r"finite number")]:
        with pytest.raises(ConfigError, match=needle):
            Job(build_config({"name": "t", "space": "tiny_cnn",
                              "search": {"constraints": [bad]}}))
