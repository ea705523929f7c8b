"""raynas.latency.predictor: MLP and FLOPs predictors, metrics, save/load, record checks."""

from __future__ import annotations

import math
import pickle
import random

import pytest
import torch

from raynas.errors import CheckpointError, ConfigError
from raynas.latency.predictor import (
    FlopsLinear,
    LatencyPredictor,
    MLPPredictor,
    fit_predictor,
    load_predictor,
    regression_metrics,
)
from raynas.latency.predictor.fit import _clean_records
from raynas.latency.predictor.mlp import _Adam, _mlp
from raynas.space import Arch

MEASURED = {"latency_target": "local-cpu", "batch_size": 1, "threads": 1,
            "torch_version": "2.13.0"}


def synthetic_ms(arch, space) -> float:
    """A known latency: per conv layer a fixed cost plus one proportional to its MACs."""
    cin, hw, ms = space.model["stem_width"], space.model["image_size"], 0.05
    for stage, stride in enumerate(space.model["strides"], start=1):
        hw //= stride
        width = arch[f"s{stage}_width"]
        for k in arch[f"s{stage}_kernel"]:
            ms += 0.01 + 2e-7 * cin * width * k * k * hw * hw
            cin = width
    return ms


def synthetic_records(space, n, seed=0, noise=0.02, **fields):
    """``n`` sampled archs with synthetic latency times a uniform ±``noise`` factor."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        arch = space.sample(rng)
        ms = synthetic_ms(arch, space) * (1 + rng.uniform(-noise, noise))
        out.append({"arch": arch.to_dict(), "latency_ms": ms, **MEASURED, **fields})
    return out


def distinct(records) -> int:
    return len({Arch(r["arch"]).key for r in records})


def linear_flops_records(space, a, b, n=40):
    """Distinct archs with made-up FLOPs and noise-free latency a * flops + b."""
    rng = random.Random(5)
    archs = {}
    while len(archs) < n:
        arch = space.sample(rng)
        archs[arch.key] = arch
    flops = {key: 1_000_000 + 37_000 * i for i, key in enumerate(sorted(archs))}
    records = [{"arch": arch.to_dict(), "flops": flops[key], "latency_ms": a * flops[key] + b}
               for key, arch in archs.items()]
    return records, flops


@pytest.fixture(scope="module")
def tiny_fit(tiny_space):
    """A quickly fitted (not accurate) MLP on the tiny space, and its records."""
    records = synthetic_records(tiny_space, 60, seed=3)
    predictor, metrics = fit_predictor(records, tiny_space, steps=40, seed=1)
    return predictor, metrics, records


# ---- accuracy --------------------------------------------------------------------------------
def test_mlp_predicts_synthetic_latency_within_10pct(digits_space):
    records = synthetic_records(digits_space, 600, seed=11)
    predictor, metrics = fit_predictor(records, digits_space, seed=0)  # default settings
    assert isinstance(predictor, MLPPredictor) and predictor.kind == "mlp"
    assert metrics["n_train"] + metrics["n_test"] == distinct(records)
    assert metrics["n_test"] == round(0.2 * distinct(records))
    assert metrics["within_10pct"] >= 0.9, metrics
    assert metrics["kendall_tau"] >= 0.8, metrics
    assert metrics["mape"] < 0.06, metrics
    assert predictor.metrics == metrics and predictor.n_train == metrics["n_train"]
    # Unseen archs, noise-free truth: the fit generalises, not only on the held-out split.
    fresh = [digits_space.sample(random.Random(10_000 + i)) for i in range(200)]
    check = regression_metrics(predictor.predict_ms(fresh),
                               [synthetic_ms(a, digits_space) for a in fresh])
    assert check["within_10pct"] >= 0.9, check


def test_flops_linear_recovers_exact_line(tiny_space):
    a, b = 3.5e-6, 0.25
    records, flops = linear_flops_records(tiny_space, a, b)
    predictor, metrics = fit_predictor(records, tiny_space, kind="flops")
    assert isinstance(predictor, FlopsLinear) and predictor.kind == "flops"
    assert predictor.a == pytest.approx(a, rel=1e-9)
    assert predictor.b == pytest.approx(b, rel=1e-9)
    assert metrics["rmse_ms"] == pytest.approx(0, abs=1e-9)
    assert metrics["within_10pct"] == 1.0 and metrics["kendall_tau"] == pytest.approx(1.0)
    assert predictor.predict_from_flops([2_000_000]) == [pytest.approx(a * 2_000_000 + b)]

    arch = Arch(records[0]["arch"])
    with pytest.raises(ConfigError, match="flops_fn"):
        predictor.predict_ms([arch])
    predictor.flops_fn = lambda x: flops[x.key]
    assert predictor.predict_ms([arch]) == [pytest.approx(records[0]["latency_ms"])]


def test_flops_predictor_needs_flops_in_records(tiny_space):
    records = synthetic_records(tiny_space, 20)
    with pytest.raises(ConfigError, match="record 0: flops = None"):
        fit_predictor(records, tiny_space, kind="flops")


def test_own_adam_matches_torch_adam():
    torch.manual_seed(0)
    ours, ref = _mlp(6, [16, 16]), _mlp(6, [16, 16])
    ref.load_state_dict(ours.state_dict())
    initial = ours[0].weight.detach().clone()
    x, y = torch.randn(40, 6), torch.randn(40, 1)
    steps = 20
    opt = _Adam(list(ours.parameters()), lr=3e-3, weight_decay=1e-3, total=steps)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=steps)
    for i in range(steps):
        idx = torch.arange(i % 5, 40, 5)
        for net, step in ((ours, opt.step), (ref, ref_opt.step)):
            net.zero_grad()
            torch.nn.functional.mse_loss(net(x[idx]), y[idx]).backward()
            step()
        sched.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours[0].weight, initial)  # it did train


# ---- metrics ---------------------------------------------------------------------------------
def test_regression_metrics_hand_computed():
    m = regression_metrics([1.1, 1.8, 3.0, 5.0], [1.0, 2.0, 3.0, 4.0])
    # errors 0.1, -0.2, 0, 1; relative 0.1, 0.1, 0, 0.25
    assert m["rmse_ms"] == pytest.approx(math.sqrt((0.01 + 0.04 + 0 + 1) / 4))
    assert m["mape"] == pytest.approx((0.1 + 0.1 + 0 + 0.25) / 4)
    assert m["within_10pct"] == 0.75  # exactly 10% counts as within (float rounding aside)
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert m["n"] == 4
    # One discordant pair of three: tau = (2 - 1) / 3.
    m = regression_metrics([2.0, 1.0, 3.0], [1.0, 2.0, 3.0])
    assert m["kendall_tau"] == pytest.approx(1 / 3)
    assert m["mape"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["within_10pct"] == pytest.approx(1 / 3)
    assert math.isnan(regression_metrics([1.0, 1.0], [1.0, 2.0])["kendall_tau"])


@pytest.mark.parametrize("pred, true", [([1.0], [1.0, 2.0]), ([], []), ([1.0], [0.0]),
                                        ([1.0], [float("nan")])])
def test_regression_metrics_rejects_bad_input(pred, true):
    with pytest.raises(ValueError):
        regression_metrics(pred, true)


# ---- save / load -----------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, tiny_space, tiny_fit):
    predictor, metrics, records = tiny_fit
    archs = [tiny_space.sample(random.Random(i)) for i in range(30)]
    path = predictor.save(tmp_path / "sub" / "predictor.pt")
    assert path.is_file() and not path.with_name(path.name + ".tmp").exists()
    raw = torch.load(path, weights_only=True)  # tensors and plain values only
    assert raw["space_fingerprint"] == tiny_space.fingerprint and raw["kind"] == "mlp"

    loaded = load_predictor(path, tiny_space)
    assert isinstance(loaded, MLPPredictor) and isinstance(loaded, LatencyPredictor)
    assert loaded.predict_ms(archs) == predictor.predict_ms(archs)
    assert loaded.measurement == MEASURED
    assert loaded.meta["target"] == "local-cpu" and loaded.meta["threads"] == 1
    assert loaded.n_train == metrics["n_train"] and loaded.metrics == metrics
    assert loaded.steps == 40 and loaded.seed == 1


def test_fit_is_deterministic_and_leaves_torch_state_alone(tiny_space, tiny_fit):
    predictor, _, records = tiny_fit
    archs = [tiny_space.sample(random.Random(i)) for i in range(10)]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    again, _ = fit_predictor(records, tiny_space, steps=40, seed=1)
    assert torch.equal(torch.rand(3), expected_next)  # caller's RNG stream untouched
    assert torch.get_num_threads() == threads
    assert again.predict_ms(archs) == predictor.predict_ms(archs)
    other, _ = fit_predictor(records, tiny_space, steps=40, seed=2)
    assert other.predict_ms(archs) != predictor.predict_ms(archs)


def test_flops_round_trip_needs_flops_fn(tmp_path, tiny_space):
    records, flops = linear_flops_records(tiny_space, 2e-6, 0.1)
    predictor, _ = fit_predictor(records, tiny_space, kind="flops")
    path = predictor.save(tmp_path / "flops.pt")
    arch = Arch(records[3]["arch"])
    with pytest.raises(ConfigError, match="flops_fn"):
        load_predictor(path, tiny_space).predict_ms([arch])
    loaded = load_predictor(path, tiny_space, flops_fn=lambda x: flops[x.key])
    assert isinstance(loaded, FlopsLinear)
    assert (loaded.a, loaded.b) == (predictor.a, predictor.b)
    assert loaded.predict_ms([arch]) == predictor.predict_from_flops([flops[arch.key]])


def test_load_for_other_space_names_both(tmp_path, tiny_space, digits_space, tiny_fit):
    path = tiny_fit[0].save(tmp_path / "p.pt")
    with pytest.raises(CheckpointError) as e:
        load_predictor(path, digits_space)
    msg = str(e.value)
    assert str(path) in msg
    assert "'tiny_cnn'" in msg and "'digits_cnn'" in msg
    assert tiny_space.fingerprint in msg and digits_space.fingerprint in msg


class _Hostile:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"not a torch file at all", "cannot be read"),
    ("pickle", "cannot be read"),
    ({"format": "something-else", "kind": "mlp"}, "not a raynas latency predictor"),
    ([1, 2, 3], "not a raynas latency predictor"),
])
def test_not_a_predictor_file(tmp_path, tiny_space, content, match):
    path = tmp_path / "p.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "pickle":
        path.write_bytes(pickle.dumps(_Hostile(), protocol=2))
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=match) as e:
        load_predictor(path, tiny_space)
    assert str(path) in str(e.value)


def test_supernet_checkpoint_is_not_a_predictor(tiny_checkpoint, tiny_space):
    with pytest.raises(CheckpointError, match="not a raynas latency predictor"):
        load_predictor(tiny_checkpoint / "supernet.pt", tiny_space)


def test_damaged_predictor_file(tmp_path, tiny_space, tiny_fit):
    path = tiny_fit[0].save(tmp_path / "p.pt")
    payload = torch.load(path, weights_only=True)
    del payload["state"]["net"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="damaged"):
        load_predictor(path, tiny_space)


# ---- records ---------------------------------------------------------------------------------
@pytest.mark.parametrize("field, other", [("latency_target", "cuda:0"), ("batch_size", 8),
                                          ("threads", 2)])
def test_mixed_measurement_settings_refused(tiny_space, field, other):
    records = synthetic_records(tiny_space, 30)
    records[7] = {**records[7], field: other}
    with pytest.raises(ConfigError, match=f"record 7 has {other!r}") as e:
        fit_predictor(records, tiny_space, steps=5)
    assert field in str(e.value)


def test_too_few_records_refused(tiny_space):
    records = synthetic_records(tiny_space, 300, seed=2)
    by_key = {}
    for r in records:
        by_key.setdefault(Arch(r["arch"]).key, r)
    nine = list(by_key.values())[:9]
    with pytest.raises(ConfigError, match=r"at least 10 distinct archs .*, got 9 \(from 9 "):
        fit_predictor(nine, tiny_space)
    with pytest.raises(ConfigError, match=r"got 9 \(from 18 records\)"):
        fit_predictor(nine + nine, tiny_space)  # repeats do not count
    ten = list(by_key.values())[:10]
    with pytest.raises(ConfigError, match="leaves 1 held-out"):
        fit_predictor(ten, tiny_space, holdout=0.1)
    fit_predictor(ten, tiny_space, holdout=0.2, steps=5)  # the minimum that works


@pytest.mark.parametrize("change, match", [
    ({"latency_ms": 0.0}, "record 2: latency_ms = 0.0"),
    ({"latency_ms": float("inf")}, "record 2: latency_ms = inf"),
    ({"latency_ms": "fast"}, "record 2: latency_ms = 'fast'"),
    ({"arch": {"s1_depth": 9}}, "record 2: arch"),
])
def test_bad_records_refused(tiny_space, change, match):
    records = synthetic_records(tiny_space, 30)
    records[2] = {**records[2], **change}
    with pytest.raises(ConfigError, match=match):
        fit_predictor(records, tiny_space, steps=5)


def test_bad_options_refused(tiny_space):
    records = synthetic_records(tiny_space, 30)
    with pytest.raises(ConfigError, match="unknown latency predictor kind 'lut'"):
        fit_predictor(records, tiny_space, kind="lut")
    with pytest.raises(ConfigError, match="holdout"):
        fit_predictor(records, tiny_space, holdout=1.0)
    with pytest.raises(ConfigError, match="steps must be an integer"):
        fit_predictor(records, tiny_space, steps=0)
    with pytest.raises(ConfigError, match="'mlp'.*unexpected keyword"):
        fit_predictor(records, tiny_space, ensemble=3)


def test_repeated_archs_are_averaged(tiny_space):
    records = synthetic_records(tiny_space, 12, noise=0)
    first = records[0]
    repeats = [{**first, "latency_ms": ms} for ms in (1.0, 2.0, 6.0)]
    clean, measurement = _clean_records([*repeats, *records[1:]], tiny_space, need_flops=False)
    assert measurement == MEASURED
    assert len(clean) == distinct(records)
    entry = next(r for r in clean if r["arch"] == Arch(first["arch"]))
    same = [1.0, 2.0, 6.0] + [r["latency_ms"] for r in records[1:] if r["arch"] == first["arch"]]
    assert entry["latency_ms"] == pytest.approx(sum(same) / len(same))
