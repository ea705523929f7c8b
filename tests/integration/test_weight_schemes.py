"""Weight schemes end to end, on the embedded Ray with two Ray Train workers and a real MLflow
store: a balanced mixture of supernets on the pooling space (its assignment logged and
balanced, its checkpoint refused under another scheme) and Mixture-of-Supernets on the digits
CNN (trained, searched, exported as a plain model that matches)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raynas.checkpoint import load_checkpoint
from raynas.export.serialize import load_subnet

pytestmark = pytest.mark.integration
XDIST_EACH_TEST = True  # independent jobs: each may run beside another (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]


def test_balanced_mixture_trains_k_supernets_in_balance(store, run_cli, stage_runs):
    out = store["cwd"] / "bmix-out"
    run_cli(["run", str(ROOT / "jobs" / "resnet20_pool_tiny.yaml"), "--output-dir", str(out),
             "name=bmix", "weights.name=balanced_mixture", "train.epochs=3",
             "train.sampler=uniform", "train.num_subnets=1", "train.distill=none"],
            store["cwd"], store["uri"])
    state = load_checkpoint(out / "checkpoint")
    assert state["weights"] == {"name": "balanced_mixture", "options": {}}
    assert any(k.startswith("nets.3.") for k in state["model"])
    steps = state["model"]["steps"]  # (archs, supernets): which supernet trained each arch
    shares = steps.sum(0).float() / steps.sum()
    # ~80 steps over 4 supernets: balancing holds each near 1/4 (binomial sd about 0.05).
    assert ((shares - 0.25).abs() < 0.15).all(), shares
    runs = stage_runs(store["uri"], "bmix")
    logged = runs["train"].data.metrics
    assert sum(logged[f"weights.supernet{m}_step_share"] for m in range(4)) == pytest.approx(1)
    assert logged["weights.marginal_kl"] < 1e-3
    assert runs["export"].data.metrics["max_abs_diff_onnx"] < 1e-4

    # The checkpoint's tensors only fit the scheme that made them: another is refused.
    proc = run_cli(["search", str(ROOT / "jobs" / "resnet20_pool_tiny.yaml"), "--checkpoint",
                    str(out / "checkpoint"), "--output-dir", str(store["cwd"] / "bmix-s"),
                    "name=bmix"], store["cwd"], store["uri"], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "trained with weights = 'balanced_mixture'" in proc.stderr
    assert "uses weights = 'shared'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mixture_of_supernets_exports_a_plain_model(store, run_cli, stage_runs):
    out = store["cwd"] / "mos-out"
    run_cli(["run", str(ROOT / "jobs" / "smoke.yaml"), "--output-dir", str(out), "name=mos",
             "weights.name=mos_neuron", "weights.options.hidden=16", "search.budget=16",
             "train.epochs=4"],
            store["cwd"], store["uri"])
    state = load_checkpoint(out / "checkpoint")
    assert state["weights"] == {"name": "mos_neuron", "options": {"hidden": 16}}
    routers = [k for k in state["model"] if ".weight_provider.router." in k]
    assert routers
    model = load_subnet(out / "subnet")
    names = {k for k in model.state_dict()}
    assert not any("weight_provider" in k for k in names)
    export = stage_runs(store["uri"], "mos")["export"]
    assert export.data.metrics["max_abs_diff_onnx"] < 1e-4
    # 4 epochs of digits: chance is 0.1 (binomial sd on ~360 test images: 0.016)
    assert export.data.metrics["test_accuracy"] > 0.3
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
