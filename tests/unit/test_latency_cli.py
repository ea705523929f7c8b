"""`raynas latency profile|fit|noise` end to end on the tiny space (real MLflow sqlite store, no
Ray), and a fitted predictor serving an evaluator."""

from __future__ import annotations

import pytest
import torch

from raynas.cli import main
from raynas.evaluation import Evaluator
from raynas.latency.lut import LatencyLUT
from raynas.latency.predictor import load_predictor
from raynas.latency.table import LatencyTable


@pytest.fixture(scope="module")
def profiled(tmp_path_factory, repo_root):
    tmp = tmp_path_factory.mktemp("latency")
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlruns.db'}")
    table, lut = tmp / "lat.parquet", tmp / "lut.json"
    rc = main(["latency", "profile", str(repo_root / "jobs" / "smoke.yaml"), "--target",
               "test-cpu", "--n", "60", "--out", str(table), "--lut", str(lut),
               "latency.min_run_time_s=0.002"])
    assert rc == 0
    yield tmp, table, lut
    mp.undo()
    torch.set_num_threads(1)


def test_profile_writes_a_table_and_a_lut(profiled, tiny_space):
    tmp, table, lut = profiled
    rows = LatencyTable(table).records()
    assert len(rows) == 60 and len({r["arch_key"] for r in rows}) == 60
    assert {r["latency_target"] for r in rows} == {"test-cpu"}
    assert all(r["latency_ms"] > 0 and r["flops"] > 0 and r["params"] > 0 for r in rows)
    loaded = LatencyLUT.load(lut)
    assert loaded.target == "test-cpu"
    assert loaded.latency_ms(tiny_space, tiny_space.largest()) > 0


def test_profile_again_reuses_rows(profiled, repo_root, capsys):
    tmp, table, _ = profiled
    rc = main(["latency", "profile", str(repo_root / "jobs" / "smoke.yaml"), "--target",
               "test-cpu", "--n", "70", "--out", str(table), "latency.min_run_time_s=0.002"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "10 new rows" in out and "(60 from the table)" in out
    assert len(LatencyTable(table)) == 70


def test_fit_and_serve(profiled, tiny_space, tiny_checkpoint, capsys):
    tmp, table, _ = profiled
    out = tmp / "mlp.pt"
    rc = main(["latency", "fit", str(table), "--space", "tiny_cnn", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "within 10%" in text and "Kendall tau" in text
    predictor = load_predictor(out, tiny_space)
    assert predictor.kind == "mlp" and predictor.meta["target"] == "test-cpu"
    ev = Evaluator(str(tiny_checkpoint), {"name": "digits"},
                   {"model": "predictor", "predictor": str(out), "target": "test-cpu",
                    "drift_share": 0.0},
                   evaluator={"calib_batches": 1, "calib_batch_size": 64},
                   expected_space=tiny_space.to_dict())
    arch = tiny_space.sample(1)
    rec = ev.evaluate([arch.to_dict()])[0]
    assert rec["latency_model"] == "predictor"
    assert rec["latency_ms"] == pytest.approx(predictor.predict_ms([arch])[0])
    torch.set_num_threads(1)


def test_fit_flops_line(profiled, tiny_space):
    tmp, table, _ = profiled
    out = tmp / "flops.pt"
    assert main(["latency", "fit", str(table), "--space", "tiny_cnn", "--kind", "flops",
                 "--out", str(out)]) == 0
    assert load_predictor(out, tiny_space).kind == "flops"


def test_fit_logs_to_mlflow(profiled):
    import mlflow

    tmp, _, _ = profiled
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlruns.db'}")
    exp = client.get_experiment_by_name("raynas-latency")
    runs = client.search_runs([exp.experiment_id])
    fits = [r for r in runs if r.data.tags.get("raynas.stage") == "latency-fit"]
    assert fits
    m = fits[0].data.metrics
    assert {"rmse_ms", "mape", "within_10pct", "kendall_tau"} <= set(m)
    smoke = client.get_experiment_by_name("smoke")
    prof = client.search_runs([smoke.experiment_id])
    assert any(r.data.params.get("target") == "test-cpu" and "lut_within_10pct"
               in r.data.metrics for r in prof)


@pytest.mark.parametrize("argv,needle", [
    (["fit", "nope.parquet", "--space", "tiny_cnn"], "TABLE = 'nope.parquet'"),
    (["fit", "{table}", "--space", "tiny_cnn", "--holdout", "1.5"], "--holdout = 1.5"),
    (["fit", "{table}", "--space", "tiny_cnn", "--seed", "-1"], "--seed = -1"),
    (["fit", "{table}", "--space", "tiny_cnn", "--seed", str(2**32)], "4294967295"),
    (["fit", "{table}", "--space", "tiny_cnn", "--target", "gpu"], "no rows for target 'gpu'"),
    (["fit", "{table}", "--space", "digits_cnn"], "digits_cnn"),
    (["profile", "{job}", "--n", "0"], "--n = 0"),
])
def test_latency_cli_errors(profiled, repo_root, capsys, argv, needle):
    tmp, table, _ = profiled
    argv = [a.format(table=table, job=repo_root / "jobs" / "smoke.yaml") for a in argv]
    rc = main(["latency", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_noise_times_each_subnet_again_and_reports_the_spread(profiled, repo_root, capsys):
    import json

    from mlflow import MlflowClient

    tmp, _, _ = profiled
    rc = main(["latency", "noise", str(repo_root / "jobs" / "smoke.yaml"), "--n", "6",
               "--repeats", "3", "--output-dir", str(tmp / "noise"),
               "latency.min_run_time_s=0.004"])
    assert rc == 0
    assert "of subnets time again within 10% of their first timing" in capsys.readouterr().out
    floor = json.loads((tmp / "noise" / "latency" / "local-cpu.noise.json").read_text())
    times = floor["times_ms"]
    assert len(times) == 6 and all(len(t) == 3 and min(t) > 0 for t in times)
    assert (floor["windows"], floor["estimator"]) == (5, "min")
    # The figures are those of the raw timings.
    agree = sum(all(abs(t[k] / t[0] - 1) <= 0.1 for k in (1, 2)) for t in times) / 6
    assert floor["agreement"] == pytest.approx(agree)
    worst = max(abs(t[k] / t[0] - 1) for t in times for k in (1, 2))
    assert floor["max_deviation"] == pytest.approx(worst)
    run = MlflowClient(f"sqlite:///{tmp / 'mlruns.db'}").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{tmp / 'mlruns.db'}")
         .search_experiments()], "tags.`raynas.stage` = 'latency-noise'")[0]
    assert run.data.metrics["agreement"] == pytest.approx(agree)
    assert run.data.params["estimator"] == "min"
