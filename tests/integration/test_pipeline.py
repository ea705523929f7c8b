"""End to end on the embedded default: real Ray (Train + Tune), real MLflow sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from raynas.export.serialize import load_subnet
from raynas.search.pareto import pareto_mask

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "jobs" / "smoke.yaml"


def _runs(client: MlflowClient, experiment: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} missing"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_stage: dict[str, list] = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get("raynas.stage"), []).append(run)
    return by_stage


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def _smoke_search(client: MlflowClient, smoke_run: dict):
    """The search stage of the session's ``raynas run jobs/smoke.yaml``."""
    (search,) = [r for r in _runs(client, "smoke")["search"]
                 if r.data.tags.get("raynas.output_dir") == str(smoke_run["out"])
                 and r.data.tags.get("mlflow.parentRunId")]
    return search


def test_run_tracks_everything_in_mlflow(smoke_run):
    client = MlflowClient(tracking_uri=smoke_run["uri"])
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    stages = _runs(client, "smoke")
    (parent,) = stages["smoke"]
    (train,) = stages["train"]
    (search,) = stages["search"]
    (export,) = stages["export"]
    for child in (train, search, export):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
    assert parent.info.status == "FINISHED"

    # The resolved config is logged as params, with its defaults filled in.
    assert parent.data.params["train.epochs"] == "2"
    assert parent.data.params["search.searcher"] == "optuna_nsga2"
    assert parent.data.params["train.sampler.name"] == "sandwich"
    assert "config.yaml" in _artifacts(client, parent.info.run_id)

    # Training curves: one point per epoch, logged from the Ray Train worker.
    history = client.get_metric_history(train.info.run_id, "loss_largest")
    assert sorted(m.step for m in history) == [0, 1]
    assert "checkpoint" in _artifacts(client, train.info.run_id)
    assert "checkpoint/supernet.pt" in _artifacts(client, train.info.run_id, "checkpoint")

    # Search: every subnet as a metric row, the front and its plot as artifacts.
    assert len(client.get_metric_history(search.info.run_id, "subnet_accuracy")) == 32
    assert search.data.metrics["evaluated"] == 32
    assert search.data.metrics["front_size"] >= 1
    assert search.data.metrics["hypervolume"] > 0
    assert "report.html" in _artifacts(client, search.info.run_id)
    report = (smoke_run["out"] / "report.html").read_text()
    front_keys = [r["arch_key"] for r in pq.read_table(smoke_run["out"] / "pareto.parquet")
                  .to_pylist()]
    assert "What matters for accuracy" in report and all(k in report for k in front_keys)
    assert report.count("data:image/png;base64,") == 3  # front, progress, importance
    assert {"pareto.parquet", "pareto.png", "evaluations.parquet"} <= _artifacts(
        client, search.info.run_id)

    # Export: metrics, the subnet files and a logged MLflow model linked to the run.
    assert 0.0 < export.data.metrics["test_accuracy"] <= 1.0
    assert export.data.metrics["max_abs_diff_onnx"] <= 1e-4
    files = _artifacts(client, export.info.run_id, "subnet")
    assert {"subnet/model.pt", "subnet/arch.json", "subnet/model.onnx",
            "subnet/model.torchscript.pt"} <= files
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert any(m.source_run_id == export.info.run_id for m in models)


def test_run_writes_outputs_and_a_deployable_subnet(smoke_run):
    out: Path = smoke_run["out"]
    front = pq.read_table(out / "pareto.parquet").to_pylist()
    assert front, "empty Pareto front"
    latencies = [r["latency_ms"] for r in front]
    assert latencies == sorted(latencies)
    assert all(r["latency_target"] == "local-cpu" for r in front)
    # Every front subnet was timed twice (latency.confirm) and keeps the lower timing.
    for r in front:
        assert r["latency_ms"] == min(r["latency_first_ms"], r["latency_confirm_ms"])
    summary = json.loads((out / "search.json").read_text())
    assert summary["latency_confirmed"] >= len(front) and "latency_confirm_agreement" in summary
    assert (out / "pareto.png").stat().st_size > 10_000

    # The exported subnet loads without the supernet and agrees with every other format.
    meta = json.loads((out / "subnet" / "arch.json").read_text())
    assert meta["arch_key"] in {r["arch_key"] for r in front}
    model = load_subnet(out / "subnet")
    x = torch.randn(5, 1, 8, 8)
    scripted = torch.jit.load(str(out / "subnet" / "model.torchscript.pt"))
    with torch.no_grad():
        assert torch.allclose(model(x), scripted(x), atol=1e-5)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "subnet" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(model(x).detach(), torch.from_numpy(onnx_out), atol=1e-4)

    # Progress went to the console, briefly.
    assert "[raynas] train epoch 2/2" in smoke_run["stdout"]
    assert "[raynas] search 32/32 subnets" in smoke_run["stdout"]
    assert len(smoke_run["stdout"].splitlines()) < 60


def test_stages_chain_by_run_id_and_respect_budgets(smoke_run, run_cli):
    client = MlflowClient(tracking_uri=smoke_run["uri"])
    (train,) = _runs(client, "smoke")["train"]
    evaluated = pq.read_table(smoke_run["out"] / "evaluations.parquet").to_pylist()
    budget = sorted(r["latency_ms"] for r in evaluated)[len(evaluated) // 2]
    flops = sorted(r["flops"] for r in evaluated)[len(evaluated) * 3 // 4]
    memory = round(sorted(r["peak_memory_mb"] for r in evaluated)[len(evaluated) * 3 // 4], 4)

    out = smoke_run["cwd"] / "chain-out"
    proc = run_cli(["search", str(SMOKE), "--from-run", train.info.run_id, "--output-dir",
                   str(out), "search.searcher=optuna_tpe", f"search.latency_budget_ms={budget}",
                   f"search.constraints=[flops<={flops},peak_memory_mb<={memory}]"],
                  smoke_run["cwd"], smoke_run["uri"])
    front = pq.read_table(out / "pareto.parquet").to_pylist()
    assert front
    def feasible(r):
        return r["latency_ms"] <= budget and r["flops"] <= flops and \
            r["peak_memory_mb"] <= memory

    assert all(feasible(r) for r in front)
    # The front is exactly the non-dominated set of the subnets meeting both budgets.
    searched = pq.read_table(out / "evaluations.parquet").to_pylist()
    within = [r for r in searched if feasible(r)]
    losses = torch.tensor([[-r["accuracy"], r["latency_ms"]] for r in within]).numpy()
    assert {r["arch_key"] for r in front} == {
        r["arch_key"] for r, keep in zip(within, pareto_mask(losses)) if keep}
    # The search met subnets above each budget (each budget took some out).
    assert any(r["flops"] > flops for r in searched)
    assert any(r["peak_memory_mb"] > memory for r in searched)
    assert json.loads((out / "search.json").read_text())["constraints"] == [
        f"latency_ms<={budget!r}", f"flops<={flops}", f"peak_memory_mb<={memory!r}"]
    searches = [r for r in _runs(client, "smoke")["search"]
                if r.data.tags.get("raynas.train_run_id") == train.info.run_id
                and "mlflow.parentRunId" not in r.data.tags]  # the standalone stage
    assert len(searches) == 1 and "--from-run" in proc.stdout

    run_cli(["export", str(SMOKE), "--from-run", searches[0].info.run_id, "--pick", "0",
            "--output-dir", str(out)], smoke_run["cwd"], smoke_run["uri"])
    meta = json.loads((out / "subnet" / "arch.json").read_text())
    assert meta["arch_key"] == front[0]["arch_key"]

    # export --budget: of two Pareto points, the more accurate is above a parameter budget
    # the other meets; the budget must make export pick the other one.
    table = pq.read_table(smoke_run["out"] / "evaluations.parquet")
    by_params = sorted(range(table.num_rows), key=lambda i: table["params"][i].as_py())
    small, large = by_params[0], by_params[-1]
    two = table.take([small, large])
    two = two.set_column(two.schema.get_field_index("accuracy"), "accuracy",
                         pa.array([0.5, 0.9]))
    pq.write_table(two, smoke_run["cwd"] / "two.parquet")
    limit = table["params"][small].as_py()
    budget_out = smoke_run["cwd"] / "budget-out"
    for args, expected in [([], large), (["--budget", f"params<={limit}", "--register",
                                          "smoke-one"], small)]:
        run_cli(["export", str(SMOKE), "--checkpoint", str(smoke_run["out"] / "checkpoint"),
                 "--pareto", str(smoke_run["cwd"] / "two.parquet"), *args,
                 "--output-dir", str(budget_out)], smoke_run["cwd"], smoke_run["uri"])
        meta = json.loads((budget_out / "subnet" / "arch.json").read_text())
        assert meta["arch_key"] == table["arch_key"][expected].as_py()
    exports = sorted(_runs(client, "smoke")["export"], key=lambda r: r.info.start_time)
    assert exports[-1].data.params["budgets"] == f"params<={limit}"
    (version,) = client.search_model_versions("name='smoke-one'")  # --register: only there
    assert version.run_id == exports[-1].info.run_id

    # compare: a search by its run id (artifacts from MLflow) beside one by its folder.
    cmp = smoke_run["cwd"] / "compare"
    proc = run_cli(["compare", _smoke_search(client, smoke_run).info.run_id, str(out),
                    "--label", "run", "--label", "chain", "--out", str(cmp)],
                   smoke_run["cwd"], smoke_run["uri"])
    rows = pq.read_table(cmp / "compare.parquet").to_pylist()
    assert [(r["source"], r["evaluated"]) for r in rows] == [("run", len(evaluated)),
                                                            ("chain", len(searched))]
    assert [r["front_size"] for r in rows] == [
        len(pq.read_table(smoke_run["out"] / "pareto.parquet")), len(front)]
    assert "| run | optuna_nsga2 |" in proc.stdout and (cmp / "compare.png").is_file()


def test_train_resumes_from_checkpoint(smoke_run, run_cli):
    checkpoint = smoke_run["out"] / "checkpoint"
    out = smoke_run["cwd"] / "resume-out"
    run_cli(["train", str(SMOKE), "--output-dir", str(out), "train.epochs=3",
            f"train.resume_from={checkpoint}"], smoke_run["cwd"], smoke_run["uri"])
    client = MlflowClient(tracking_uri=smoke_run["uri"])
    trains = sorted(_runs(client, "smoke")["train"], key=lambda r: r.info.start_time)
    resumed = trains[-1]
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "loss_largest")]
    assert steps == [2], f"resume should train only the third epoch, trained {steps}"
    state = torch.load(out / "checkpoint" / "supernet.pt", weights_only=True)
    assert state["epoch"] == 2


def test_deploy_many_exports_and_registers_one_model_per_budget(smoke_run, run_cli):
    """``export --budgets``: one checked export per parameter budget, the best Pareto point
    within each, every one a version of one registered model aliased by its budget."""
    client = MlflowClient(tracking_uri=smoke_run["uri"])
    search = _smoke_search(client, smoke_run)
    front = pq.read_table(smoke_run["out"] / "pareto.parquet").to_pylist()
    sizes = sorted({int(r["params"]) for r in front})
    limits = (sizes + [2 * sizes[-1], 3 * sizes[-1]])[:3]
    out = smoke_run["cwd"] / "deploy-out"
    run_cli(["export", str(SMOKE), "--from-run", search.info.run_id, "--budgets",
             "params<=" + ",".join(map(str, limits)), "--register", "smoke-deploy",
             "--output-dir", str(out)], smoke_run["cwd"], smoke_run["uri"])

    rows = pq.read_table(out / "deploy" / "deploy.parquet").to_pylist()
    assert [r["budget"] for r in rows] == [f"params<={n}" for n in limits]
    versions = {int(v.version): v
                for v in client.search_model_versions("name='smoke-deploy'")}
    aliases = client.get_registered_model("smoke-deploy").aliases
    for row, limit in zip(rows, limits):
        within = [r for r in front if r["params"] <= limit]
        best = max(within, key=lambda r: (r["accuracy"], -r["latency_ms"]))
        assert row["arch_key"] == best["arch_key"] and row["params"] <= limit
        folder = out / "deploy" / f"params_le_{limit}"
        meta = json.loads((folder / "arch.json").read_text())
        assert meta["arch_key"] == row["arch_key"]
        checked = json.loads((folder / "export.json").read_text())["max_abs_diff"]
        assert set(checked) >= {"torchscript", "onnx"}  # checked as a single export is
        version = versions[int(row["model_version"])]
        assert version.tags["raynas.budget"] == row["budget"]
        assert int(aliases[f"params_le_{limit}"]) == int(row["model_version"])
    assert len(versions) == 3
    # A serving system loads a budget's model by its alias; it is that folder's TorchScript.
    import mlflow.pytorch

    served = mlflow.pytorch.load_model(f"models:/smoke-deploy@params_le_{limits[0]}")
    local = torch.jit.load(str(out / "deploy" / f"params_le_{limits[0]}" /
                               "model.torchscript.pt"))
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(served(x), local(x))
    md = (out / "deploy" / "deploy.md").read_text()
    assert all(f"params<={n}" in md for n in limits)
    page = (out / "deploy" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and all(
        r["arch_key"] in page for r in rows)
