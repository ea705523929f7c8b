"""Families other than the digits CNN, end to end on the embedded Ray and a real MLflow
store: the vision families on cluttered digits (``jobs/resnet20_pool_tiny.yaml``,
``jobs/vit_tiny.yaml``, as users run them), the tagging family (token sequences with lengths,
a non-image task) and a user's family registered through a Python entry point, which the Ray
Train workers and the evaluator actor find as the driver does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from raynas.export.serialize import load_subnet

pytestmark = pytest.mark.integration
XDIST_EACH_TEST = True  # four independent jobs: each may run beside another (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tests" / "plugin"


def _runs(uri: str, experiment: str) -> dict[str, list]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    by_stage: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id]):
        by_stage.setdefault(run.data.tags.get("raynas.stage"), []).append(run)
    return by_stage


# resnet20_pool_tiny at 8 of its 15 epochs (95-104 s alone instead of 136 s): the extremes
# already rank apart (largest minus smallest 0.15 on seeds 0 and 1, test accuracy 0.65-0.67).
# vit_tiny at under a third of its training (6 of 10 epochs on half the renderings, 16 of 32
# subnets: 128 s alone): a model that short learns (test accuracy 0.31-0.35 over seeds 0-2,
# chance 0.1; at 4 epochs 0.25-0.30, too near the bound below to hold every time) but does
# not yet rank its extremes apart (largest minus smallest 0.01-0.10), so only the resnet job
# is held to that here; the vit job's quality is for benchmarks/training_strategies.py.
VISION = {
    "resnet20_pool_tiny": {"overrides": ["train.epochs=8"], "ranks_apart": True,
                           "min_test_accuracy": 0.5},
    "vit_tiny": {"overrides": ["train.epochs=6", "data.options.copies=4", "search.budget=16"],
                 "ranks_apart": False, "min_test_accuracy": 0.2},
}


@pytest.mark.parametrize("job", sorted(VISION))
def test_vision_job_learns_and_exports_what_onnx_runs_alike(store, run_cli, job):
    spec = VISION[job]
    out = store["cwd"] / f"{job}-out"
    run_cli(["run", str(ROOT / "jobs" / f"{job}.yaml"), "--output-dir", str(out),
             *spec["overrides"]], store["cwd"], store["uri"])
    records = pq.read_table(out / "evaluations.parquet").to_pylist()
    by_flops = sorted(records, key=lambda r: r["flops"])
    small, large = by_flops[0], by_flops[-1]
    assert large["flops"] > 2.5 * small["flops"]
    if spec["ranks_apart"]:
        # Cluttered digits separate the subnets: the most expensive one scored beats the
        # cheapest by points, not noise (the benchmark measures ~10+ points on the extremes
        # over 3 seeds; a single run's margin is held to half of that).
        assert large["accuracy"] > small["accuracy"] + 0.05, (small, large)
    (export,) = _runs(store["uri"], job)["export"]
    # Chance is 0.1 and a position-bound baseline (nearest centroid) stays near it.
    assert export.data.metrics["test_accuracy"] > spec["min_test_accuracy"]
    assert export.data.metrics["max_abs_diff_onnx"] < 1e-4
    model = load_subnet(out / "subnet")
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "subnet" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x)
    (got,) = session.run(None, {"images": x.numpy()})
    assert np.allclose(got, want.numpy(), atol=1e-4)


def test_tagging_job_trains_searches_and_exports(store, run_cli):
    out = store["cwd"] / "tagging-out"
    proc = run_cli(["run", str(ROOT / "jobs" / "tagging_smoke.yaml"), "--output-dir",
                    str(out)], store["cwd"], store["uri"])
    assert "val token_accuracy largest" in proc.stdout  # the task's metric, not accuracy

    records = pq.read_table(out / "evaluations.parquet").to_pylist()
    assert len(records) == 16
    assert {"token_accuracy", "test_token_accuracy", "loss", "latency_ms"} <= set(records[0])
    assert "accuracy" not in records[0]

    # Better than always answering the most common tag (about 0.45 of tokens), by a margin
    # only context can give: a kernel of 1 sees no neighbour and stays near 0.57.
    export = json.loads((out / "subnet" / "arch.json").read_text())
    assert export["inputs"] == ["tokens", "lengths"]
    search = _runs(store["uri"], "tagging_smoke")
    (exp_run,) = search["export"]
    assert exp_run.data.metrics["test_token_accuracy"] > 0.75
    assert 3 in export["arch"]["kernel"]
    subnet_metric = MlflowClient(store["uri"]).get_metric_history(
        search["search"][0].info.run_id, "subnet_token_accuracy")
    assert len(subnet_metric) == 16

    # The exported models take named inputs with a dynamic batch and time axis: run them on
    # shorter sequences than they were exported with, against the plain torch model.
    model = load_subnet(out / "subnet")
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(1, 16, (3, 10), generator=g)
    lengths = torch.tensor([10, 7, 4])
    with torch.no_grad():
        want = model(tokens, lengths)
        scripted = torch.jit.load(str(out / "subnet" / "model.torchscript.pt"))
        assert torch.allclose(scripted(tokens, lengths), want, atol=1e-5)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "subnet" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"tokens": tokens.numpy(), "lengths": lengths.numpy()})
    assert np.allclose(got, want.numpy(), atol=1e-4)
    # Padding never leaks: a sequence's outputs do not depend on the padding after it.
    padded = torch.cat([tokens, torch.randint(1, 16, (3, 6), generator=g)], dim=1)
    with torch.no_grad():
        again = model(padded, lengths)
    assert torch.allclose(again[:, :10], want, atol=1e-5)


def test_entry_point_family_trains_in_ray_train_and_evaluates_in_the_actor(store, run_cli):
    """The plugin is found only through its entry point (tests/plugin on PYTHONPATH): if
    the workers or the actor did not load entry points, they could not build the model."""
    out = store["cwd"] / "plugin-out"
    proc = run_cli(["run", str(PLUGIN / "plugin_job.yaml"), "--output-dir", str(out)],
                   store["cwd"], store["uri"], env_extra={"PYTHONPATH": str(PLUGIN)})
    assert "train epoch 4/4" in proc.stdout
    records = pq.read_table(out / "evaluations.parquet").to_pylist()
    assert len(records) == 6  # the whole space, scored in the evaluator actor
    assert {json.loads(r["arch"])["hidden"] for r in records} == {16, 32, 64}
    stages = _runs(store["uri"], "plugin_mlp")
    (export,) = stages["export"]
    # 4 epochs of digits: far above chance (0.1); an MLP reaches about 0.9
    assert export.data.metrics["test_accuracy"] > 0.6
    # Without the entry point the same job is refused up front, naming the families.
    proc = run_cli(["run", str(PLUGIN / "plugin_job.yaml"), "--output-dir",
                    str(store["cwd"] / "plugin-missing")], store["cwd"], store["uri"],
                   check=False)
    assert proc.returncode == 2
    assert ("unknown supernet family; choose one of bert, cnn, conformer, resnet20_pool, "
            "seq_conv, transformer_mt, vit"
            in proc.stderr)
    assert "Traceback" not in proc.stderr
