"""raynas.fidelity: rank agreement numbers, subnet picking, standalone training and its cache,
the fidelity config section, and the stage without Ray (trials run in-process)."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from scipy.stats import kendalltau, spearmanr

from raynas.config import load_config
from raynas.errors import ConfigError
from raynas.fidelity import (
    FidelityBelowThreshold,
    Picked,
    check_threshold,
    pick_by_flops,
    quantile_indices,
    rank_agreement,
    top_k,
)
from raynas.fidelity.picking import candidate_archs, pick_subnets, static_flops
from raynas.fidelity.standalone import (
    StandaloneCache,
    cache_key,
    standalone_settings,
    train_standalone,
)
from raynas.space import Arch

SMOKE = "jobs/smoke.yaml"


# ---- metrics -----------------------------------------------------------------------------------
def test_perfect_agreement():
    r = rank_agreement([0.5, 0.7, 0.9], [0.1, 0.2, 0.3], "max", 2)
    assert (r.kendall_tau, r.spearman_rho, r.top_k_overlap, r.top1_regret) == (1, 1, 1, 0)
    assert r.mean_gap == pytest.approx((0.4 + 0.5 + 0.6) / 3)


def test_reversed_order():
    r = rank_agreement([1, 2, 3, 4], [4, 3, 2, 1], "max", 1)
    assert r.kendall_tau == pytest.approx(-1) and r.spearman_rho == pytest.approx(-1)
    assert r.top_k_overlap == 0
    assert r.top1_regret == 3  # the supernet picks subnet 0 (standalone 1), the best is 4


def test_hand_computed_and_against_scipy():
    alone = [0.80, 0.85, 0.90, 0.70, 0.95]
    shared = [0.50, 0.40, 0.60, 0.30, 0.55]
    r = rank_agreement(alone, shared, "max", 3)
    # Pairs (i<j): concordant unless their orders differ. Discordant: (0,1), (2,4) -> 8 of 10.
    assert r.kendall_tau == pytest.approx((8 - 2) / 10)
    assert r.kendall_tau == pytest.approx(kendalltau(alone, shared).statistic)
    assert r.spearman_rho == pytest.approx(spearmanr(alone, shared).statistic)
    # Top-3 standalone: {4, 2, 1}; inherited: {2, 4, 0} -> 2 of 3.
    assert r.top_k_overlap == pytest.approx(2 / 3)
    # Supernet's top-1 is subnet 2 (0.60): standalone 0.90 vs the best 0.95.
    assert r.top1_regret == pytest.approx(0.05)
    assert r.mean_gap == pytest.approx(sum(a - b for a, b in zip(alone, shared)) / 5)


def test_regret_with_goal_min():
    loss_alone = [0.30, 0.20, 0.50]
    loss_shared = [0.90, 1.00, 0.80]  # the supernet favours subnet 2 (lowest loss 0.8)
    r = rank_agreement(loss_alone, loss_shared, "min", 1)
    assert r.top1_regret == pytest.approx(0.50 - 0.20)  # >= 0 in the goal's direction
    assert r.top_k_overlap == 0


def test_top_k_ties_go_to_the_lower_index():
    assert top_k([0.5, 0.9, 0.9, 0.1], "max", 2) == [1, 2]
    assert top_k([0.5, 0.9, 0.9, 0.1], "min", 2) == [3, 0]


def test_constant_side_gives_nan_and_fails_any_threshold():
    r = rank_agreement([0.1, 0.2, 0.3], [0.5, 0.5, 0.5], "max", 1)
    assert math.isnan(r.kendall_tau)
    with pytest.raises(FidelityBelowThreshold, match="undefined"):
        check_threshold(r.kendall_tau, -1.0, "accuracy")


def test_threshold_message_and_exit_status(tmp_path):
    check_threshold(0.5, None, "accuracy")  # no threshold: report only
    check_threshold(0.5, 0.5, "accuracy")  # at the threshold passes
    with pytest.raises(FidelityBelowThreshold) as info:
        check_threshold(0.2, 0.6, "accuracy", tmp_path)
    text = str(info.value)
    assert "0.200" in text and "fidelity.min_kendall_tau = 0.6" in text
    assert "weights:" in text and "train.epochs" in text and str(tmp_path) in text
    assert info.value.exit_status == 3


# ---- picking -----------------------------------------------------------------------------------
def _pool(n: int) -> list[Picked]:
    # Deliberately out of order, with a FLOPs tie between two archs.
    flops = [(i * 37) % n * 10 for i in range(n)]
    flops[1] = flops[2]
    return [Picked(Arch({"w": i}), f) for i, f in enumerate(flops)]


def test_quantile_indices_even_distinct_and_bounded():
    assert quantile_indices(11, 3, (0.0, 1.0)) == [0, 5, 10]
    assert quantile_indices(11, 3, (0.2, 0.8)) == [2, 5, 8]
    for n in range(2, 30):
        for m in range(2, n + 1):
            idx = quantile_indices(n, m, (0.0, 1.0))
            assert idx[0] == 0 and idx[-1] == n - 1
            assert all(a < b for a, b in zip(idx, idx[1:]))
    with pytest.raises(ValueError):
        quantile_indices(10, 5, (0.5, 0.6))


def test_pick_by_flops_spread_extremes_distinct_increasing():
    pool = _pool(41)
    ordered = sorted(pool, key=lambda c: (c.flops, c.arch.key))
    for spread in ((0.0, 1.0), (0.25, 0.75), (0.1, 0.4)):
        picked = pick_by_flops(pool, 5, spread)
        lo, hi = (ordered[math.floor(q * 40 + 0.5)].flops for q in spread)
        assert picked[0].flops == lo and picked[-1].flops == hi  # both ends of the spread
        assert all(lo <= p.flops <= hi for p in picked)
        assert len({p.arch.key for p in picked}) == 5
        assert all(a.flops <= b.flops for a, b in zip(picked, picked[1:]))


def test_pick_refuses_a_spread_too_narrow():
    with pytest.raises(ConfigError, match="fidelity.subnets = 6.*fidelity.spread"):
        pick_by_flops(_pool(20), 6, (0.5, 0.6))


def test_pick_subnets_on_a_space(tiny_space):
    from raynas.tasks import build_task

    flops = static_flops(tiny_space, build_task(tiny_space))
    picked = pick_subnets(tiny_space, flops, 4, (0.0, 1.0), 500)
    assert len(candidate_archs(tiny_space, 500)) == tiny_space.size()  # enumerated whole
    assert picked[0].arch == tiny_space.smallest() and picked[-1].arch == tiny_space.largest()
    assert [p.flops for p in picked] == sorted({p.flops for p in picked})
    # A space bigger than `candidates`: seeded draws plus both extremes, reproducibly.
    drawn = candidate_archs(tiny_space, 20, seed=3)
    assert len(drawn) == 22 and drawn == candidate_archs(tiny_space, 20, seed=3)
    keys = {a.key for a in drawn}
    assert tiny_space.largest().key in keys and tiny_space.smallest().key in keys


# ---- config ------------------------------------------------------------------------------------
def test_defaults(repo_root):
    f = load_config(repo_root / SMOKE).fidelity
    assert (f.subnets, f.spread, f.candidates, f.epochs, f.top_k) == (8, (0.0, 1.0), 500,
                                                                      None, 3)
    assert (f.min_kendall_tau, f.stage, f.cache_dir, f.max_concurrent) == (None, False,
                                                                           None, None)


@pytest.mark.parametrize("override, needles", [
    ("fidelity.subnets=1", ["fidelity.subnets = 1", "greater than or equal to 2"]),
    ("fidelity.spread=[0.8,0.2]", ["fidelity.spread = [0.8, 0.2]", "low quantile"]),
    ("fidelity.spread=[0,1.5]", ["fidelity.spread.1 = 1.5", "less than or equal to 1"]),
    ("fidelity.top_k=9", ["fidelity.top_k = 9", "at most fidelity.subnets (8)"]),
    ("fidelity.candidates=4", ["fidelity.candidates = 4", "at least fidelity.subnets"]),
    ("fidelity.min_kendall_tau=1.5", ["fidelity.min_kendall_tau = 1.5"]),
    ("fidelity.epochs=0", ["fidelity.epochs = 0"]),
    ("fidelity.max_concurrent=0", ["fidelity.max_concurrent = 0"]),
    ("fidelity.subnet=3", ["fidelity.subnet: unknown key", "subnets, spread"]),
])
def test_config_errors(repo_root, override, needles):
    with pytest.raises(ConfigError) as info:
        load_config(repo_root / SMOKE, [override])
    for needle in needles:
        assert needle in str(info.value)


# ---- standalone training and its cache ---------------------------------------------------------
def _settings(repo_root, *overrides):
    from raynas.space.registry import load_space

    cfg = load_config(repo_root / SMOKE, list(overrides))
    return standalone_settings(cfg, load_space(cfg.space, base=repo_root / "jobs"))


def test_cache_key_follows_what_matters(repo_root, tiny_space):
    arch = tiny_space.smallest()
    base = cache_key(arch, _settings(repo_root))
    assert base == cache_key(arch, _settings(repo_root))
    assert base != cache_key(tiny_space.largest(), _settings(repo_root))
    for change in ("train.epochs=3", "fidelity.epochs=5", "seed=1", "train.lr=0.1",
                   "data.seed=2", "train.optimizer=adamw", "train.label_smoothing=0",
                   "train.schedule=eden"):
        assert cache_key(arch, _settings(repo_root, change)) != base, change
    # Another device or torch release computes other numbers from the same recipe.
    assert cache_key(arch, {**_settings(repo_root), "device": "cuda"}) != base
    assert cache_key(arch, {**_settings(repo_root), "torch": "0.0.0"}) != base
    assert _settings(repo_root)["torch"] == torch.__version__.split("+")[0]
    # What only the supernet's training reads does not matter to a standalone one.
    for same in ("train.num_workers=1", "train.sampler=uniform train.distill=none",
                 "search.budget=5", "fidelity.subnets=3", "train.schedule=warmup_cosine"):
        assert cache_key(arch, _settings(repo_root, *same.split())) == base, same


def test_cache_round_trip(tmp_path, tiny_space):
    cache = StandaloneCache(tmp_path / "c")
    arch = tiny_space.largest()
    assert cache.get("k") is None
    cache.put("k", arch, {"seed": 0, "space": {"big": 1}}, {"accuracy": 0.9})
    assert cache.get("k") == {"accuracy": 0.9}
    doc = json.loads(cache.path("k").read_text())
    assert doc["arch_key"] == arch.key and "space" not in doc["settings"]
    cache.path("k").write_text("{half")
    assert cache.get("k") is None  # unreadable: trained again


def test_train_standalone_learns_and_repeats(repo_root, tiny_space):
    settings = _settings(repo_root, "train.epochs=2")  # the first is warm-up
    a = train_standalone(tiny_space.largest().to_dict(), settings, threads=1)
    b = train_standalone(tiny_space.largest().to_dict(), settings, threads=1)
    assert a["accuracy"] > 0.5  # 10 classes: far above chance
    assert {"accuracy", "loss", "test_accuracy", "test_loss", "loss_train"} <= set(a)
    assert a["epochs"] == 2
    assert (a["accuracy"], a["test_loss"]) == (b["accuracy"], b["test_loss"])  # seeded


# ---- the stage, trials in-process --------------------------------------------------------------
@pytest.fixture
def stage_job(repo_root, tmp_path, monkeypatch):
    """A smoke job whose standalone trials run in this process, counted, without Ray."""
    from raynas.pipeline import Job
    from raynas.tracking import NullTracker

    calls = []

    def in_process(fn, items, *, on_result=None, **kw):
        calls.append(len(items))
        out = [fn(item) for item in items]
        for i, r in enumerate(out):
            on_result(i, r)
        return out

    monkeypatch.setattr("raynas.search.trials.run_trials", in_process)
    cfg = load_config(repo_root / SMOKE, [
        f"output_dir={tmp_path / 'out'}", "fidelity.subnets=3", "fidelity.top_k=2",
        "train.epochs=1", "fidelity.min_kendall_tau=1.0", "latency.min_run_time_s=0.001"])
    job = Job(cfg, tracker=NullTracker())
    monkeypatch.setattr(job, "ray", lambda *stages: contextlib.nullcontext())
    return job, calls


def test_stage_writes_the_report_and_reruns_from_cache(stage_job, tiny_checkpoint, capsys):
    from raynas.pipeline.fidelity import cache_dir, check_gate, fidelity_stage

    job, calls = stage_job
    first = fidelity_stage(job, tiny_checkpoint)
    assert calls == [3] and (first.trained, first.cached) == (3, 0)
    files = sorted(p.name for p in first.directory.iterdir())
    assert files == ["fidelity.json", "fidelity.md", "fidelity.parquet", "fidelity.png"]
    summary = json.loads((first.directory / "fidelity.json").read_text())
    assert summary["subnets"] == 3 and summary["metric"] == "accuracy"
    assert len(list(cache_dir(job.cfg).glob("*.json"))) == 3
    assert cache_dir(job.cfg) == job.out.parent / "fidelity-cache"
    assert "trained 3/3" in capsys.readouterr().out

    again = fidelity_stage(job, tiny_checkpoint)
    assert calls == [3], "a rerun on the same settings must start no trial"
    assert (again.trained, again.cached) == (0, 3)
    assert [r["standalone_accuracy"] for r in again.rows] == \
        [r["standalone_accuracy"] for r in first.rows]
    # An untrained supernet against 1-epoch standalone runs: far from the same order.
    assert first.val.kendall_tau < 1.0
    with pytest.raises(FidelityBelowThreshold, match=str(first.directory)):
        check_gate(job, again)


def test_run_measures_between_train_and_search(stage_job, tiny_checkpoint, monkeypatch):
    """``fidelity.stage``: ``raynas run`` trains, measures, and stops before the search when
    the tau is below ``fidelity.min_kendall_tau``; without a threshold it goes on."""
    from raynas.pipeline.search import SearchSummary

    job, calls = stage_job
    order = []
    monkeypatch.setattr("raynas.pipeline.job.train_stage",
                        lambda *a, **k: order.append("train") or (tiny_checkpoint, None))
    monkeypatch.setattr(job, "search", lambda *a, **k: order.append("search") or
                        SearchSummary([], [], job.out / "pareto.parquet", None))
    monkeypatch.setattr(job, "export", lambda *a, **k: order.append("export") or {})
    job.cfg = job.cfg.model_copy(update={"fidelity": job.cfg.fidelity.model_copy(
        update={"stage": True})})
    with pytest.raises(FidelityBelowThreshold):
        job.run()
    assert order == ["train"] and calls == [3]
    assert json.loads(job.state_path.read_text())["fidelity"]["status"] == "below_threshold"

    job.cfg = job.cfg.model_copy(update={"fidelity": job.cfg.fidelity.model_copy(
        update={"min_kendall_tau": None})})
    job.run()
    assert order == ["train", "train", "search", "export"]
    assert calls == [3], "the second run finds every standalone result cached"
    assert json.loads(job.state_path.read_text())["fidelity"]["status"] == "finished"
