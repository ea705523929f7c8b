"""Training strategies side by side: which sampler, distillation, optimizer or pruning gives
the supernet whose subnets are best and best ranked, at the same budget?

Two spaces on cluttered digits: ``jobs/resnet20_pool_tiny.yaml`` (10 pooling layouts) and
``jobs/vit_tiny.yaml`` (the tiny ViT space). Each variant changes the job's recipe (sandwich
of 3 subnets, KL distillation) in one respect:

- samplers: ``uniform`` (no teacher, so no distillation), ``bestup``, ``complexity_aware``
  and ``performance_aware`` (modes ``[max, uniform, min]``: the same teacher and size
  as the sandwich);
- distillation: ``alpha_divergence`` in place of KL;
- optimizer: ``scaled_adam`` with the ``eden`` schedule in place of the job's (SGD with
  momentum for resnet20_pool_tiny, AdamW for vit_tiny);
- ``todm``: TODM's whole recipe, alpha-divergence, adaptive dropout (``p_max`` 0.2) and
  ScaledAdam with ``eden``;
- SuperTickets: pruning to 50 % and 90 % (reached two thirds into training), with and
  without regrowth, and ``tickets_90_keep``: 90 % with ``min_keep`` 0.05 (each op keeps its
  largest 5 %; global ranking alone empties vit_tiny's depthwise convolutions).

Per space, variant and seed (0, 1, 2 by default), as a user runs it:

    raynas fidelity jobs/<job>.yaml seed=<k> train.grad_cosine=true <variant overrides> ...

which trains the supernet and compares it with the picked subnets (spread over FLOPs)
trained from scratch, cached across variants. Reported per variant, median [min-max] over
the seeds:

- the inherited validation accuracy of the smallest, median and largest picked subnet;
- Kendall tau against standalone training;
- ``grad_cosine``: the mean cosine similarity of consecutive steps' gradients in the last
  epoch (ElasticViT's measure of gradient conflict; higher is less conflict);
- the supernet's training time (the sum of its epochs' ``epoch_time_s``), relative to the
  job's own recipe in the same seed (the command's wall time also counts the standalone
  trainings, which only the first variant of a seed runs);
- ``cost_vs_largest_standalone``: the supernet's core-seconds (training time x the cores its
  workers hold) over the largest picked subnet's standalone training (one thread, the same
  epochs): TODM's "supernet cost" against one standalone run of the largest model.

The standalone trainings follow each variant's optimizer, learning rate and schedule (the
fidelity stage trains subnets with the job's recipe), so ``scaled_adam_eden``'s tau is
against subnets trained with ScaledAdam too; ``todm`` shares that ground truth (standalone
subnets train without dropout); every other variant shares one ground truth.

    python benchmarks/training_strategies.py [--seeds 3 | --seed-list K ...] [--epochs N]
        [--jobs JOB ...] [--variants NAME ...] [--cache DIR] [--work DIR] [--merge JSON]

``--merge`` adds the runs of an earlier results JSON (those this invocation does not
measure again, by job, variant and seed) before summarising, so a seed or a variant can be
added to finished results without running them again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_info, raynas_exe, summarize, write_json

NAME = "training_strategies"
JOBS = {"resnet20_pool_tiny": 10, "vit_tiny": 8}  # job -> subnets compared
MODES = "train.sampler.options.modes=[max, uniform, min]"


def _prune(target: float, regrow: bool, epochs: int) -> list[str]:
    interval = 1
    steps = max(1, (2 * epochs) // 3)  # the target is reached two thirds into training
    return ["train.prune.name=supertickets", f"train.prune.options.target={target}",
            f"train.prune.options.interval={interval}",
            f"train.prune.options.step={target / steps:.6f}",
            f"train.prune.options.regrow={str(regrow).lower()}"]


SCALED_ADAM = ["train.optimizer=scaled_adam", "train.lr=0.045", "train.weight_decay=0",
               "train.schedule.name=eden", "train.schedule.options.lr_batches=100",
               "train.schedule.options.lr_epochs=2", "train.schedule.options.warmup_batches=20"]

# resnet20_pool_tiny has 10 layouts, 2 per FLOPs level: a bank of the default 20 would never
# be half full, and performance-aware sampling would never exploit it.
PER_JOB = {"resnet20_pool_tiny": {"performance_aware": ["train.sampler.options.bank_size=2"]}}


def variants(epochs: int, job: str | None = None) -> dict[str, list[str]]:
    """Variant name -> the job's overrides (``epochs``: the supernet's, for the pruning
    schedule; ``job``: adds what that job's space needs, ``PER_JOB``)."""
    extra = PER_JOB.get(job, {})
    table = {
        "sandwich_kl": [],
        "uniform": ["train.sampler.name=uniform", "train.distill=none"],
        "bestup": ["train.sampler.name=bestup"],
        "complexity_aware": ["train.sampler.name=complexity_aware", MODES],
        "performance_aware": ["train.sampler.name=performance_aware", MODES],
        "alpha_divergence": ["train.distill=alpha_divergence"],
        "scaled_adam_eden": SCALED_ADAM,
        "todm": ["train.distill=alpha_divergence", "train.dropout.name=adaptive",
                 "train.dropout.options.p_max=0.2", *SCALED_ADAM],
        "tickets_50": _prune(0.5, False, epochs),
        "tickets_50_regrow": _prune(0.5, True, epochs),
        "tickets_90": _prune(0.9, False, epochs),
        "tickets_90_regrow": _prune(0.9, True, epochs),
        "tickets_90_keep": [*_prune(0.9, False, epochs), "train.prune.options.min_keep=0.05"],
    }
    return {name: [*overrides, *extra.get(name, [])] for name, overrides in table.items()}


def job_train(job: str):
    from raynas.config import load_config

    return load_config(ROOT / "jobs" / f"{job}.yaml").train


def run(job: str, variant: str, overrides: list[str], seed: int, cache: Path,
        epochs: int | None, work: Path) -> dict:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    out = work / f"{job}-{variant}-{seed}"
    done = out / "benchmark-result.json"
    if done.is_file():  # measured by an earlier invocation with this --work directory
        return {**json.loads(done.read_text()), **_standalone_cost(out)}
    shutil.rmtree(out, ignore_errors=True)  # what an interrupted invocation left: again
    uri = f"sqlite:///{work / 'mlruns.db'}"
    name = f"{job}-{variant}-{seed}"
    cmd = [*raynas_exe(), "fidelity", str(ROOT / "jobs" / f"{job}.yaml"), "--output-dir",
           str(out), f"seed={seed}", f"name={name}", "train.grad_cosine=true",
           f"fidelity.subnets={JOBS[job]}", f"fidelity.cache_dir={cache}", *overrides]
    if epochs:
        cmd += [f"train.epochs={epochs}", f"fidelity.epochs={epochs}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):  # 3: below fidelity.min_kendall_tau (none is set)
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    summary = json.loads(next(out.rglob("fidelity.json")).read_text())
    rows = pd.read_parquet(next(out.rglob("fidelity.parquet"))).sort_values("flops")
    metric = summary["metric"]
    inherited = rows[f"inherited_{metric}"].tolist()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    train = next(r for r in client.search_runs([exp.experiment_id],
                                               order_by=["attributes.start_time DESC"])
                 if r.data.tags.get("raynas.stage") == "train")  # this invocation's
    epoch_s = [m.value for m in client.get_metric_history(train.info.run_id, "epoch_time_s")]
    result = {"wall_s": wall, "train_s": sum(epoch_s), "kendall_tau": summary["kendall_tau"],
              "mean_gap": summary["mean_gap"], "smallest": inherited[0],
              "median": inherited[len(inherited) // 2], "largest": inherited[-1],
              "grad_cosine": train.data.metrics.get("grad_cosine"),
              "sparsity": train.data.metrics.get("prune.sparsity")}
    done.write_text(json.dumps(result))
    return {**result, **_standalone_cost(out)}


def _standalone_cost(out: Path) -> dict:
    """The largest picked subnet's standalone training time (one thread; cached results keep
    the time of the run that trained them)."""
    import pandas as pd

    rows = pd.read_parquet(next(out.rglob("fidelity.parquet")))
    return {"largest_standalone_s": float(rows.sort_values("flops")["train_s"].iloc[-1])}


def merge(old: dict, new: dict) -> dict:
    """``old``'s runs (a results JSON's; a run without a ``seed`` is its list's index) with
    ``new``'s, which replace any of the same job, variant and seed; sorted by seed."""
    out: dict = {}
    for job in {**old, **new}:
        for variant in {**old.get(job, {}), **new.get(job, {})}:
            by_seed = {r.get("seed", i): {**r, "seed": r.get("seed", i)}
                       for i, r in enumerate(old.get(job, {}).get(variant, []))}
            by_seed.update({r["seed"]: r for r in new.get(job, {}).get(variant, [])})
            out.setdefault(job, {})[variant] = [by_seed[k] for k in sorted(by_seed)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    ap.add_argument("--seed-list", type=int, nargs="+", help="these seeds (not --seeds)")
    ap.add_argument("--merge", type=Path, help="an earlier results JSON whose other runs join "
                    "the summary")
    ap.add_argument("--epochs", type=int, default=None,
                    help="override the jobs' epochs (supernet and standalone)")
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    ap.add_argument("--variants", nargs="+", choices=list(variants(10)),
                    help="these only (default: all)")
    ap.add_argument("--cache", type=Path, help="standalone cache to reuse (default: the work "
                    "directory's)")
    ap.add_argument("--work", type=Path, help="work directory (default: a new one); an "
                    "interrupted benchmark run again with the same one skips the runs it "
                    "finished")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="raynas-strategies-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = args.cache or work / "standalone-cache"
    runs: dict = {}
    cores: dict[str, float] = {}  # job -> cores its supernet training holds
    for job in args.jobs:
        train = job_train(job)
        cores[job] = train.num_workers * train.cpus_per_worker
        table = variants(args.epochs or train.epochs, job)
        for seed in args.seed_list or range(args.seeds):
            for variant, overrides in table.items():
                if args.variants and variant not in args.variants:
                    continue
                r = {"seed": seed, **run(job, variant, overrides, seed, cache, args.epochs,
                                         work)}
                runs.setdefault(job, {}).setdefault(variant, []).append(r)
                print(f"{job} {variant} seed {seed}: " + json.dumps(
                    {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}),
                    flush=True)
    if args.merge:
        runs = merge(json.loads(args.merge.read_text())["runs"], runs)
    for job in runs:
        if job not in cores:  # merged from the earlier file
            train = job_train(job)
            cores[job] = train.num_workers * train.cpus_per_worker
    keys = ("smallest", "median", "largest", "kendall_tau", "mean_gap", "grad_cosine")
    summary = {}
    for job, per in runs.items():
        base = {r["seed"]: r for r in per.get("sandwich_kl", [])}
        for variant, rs in per.items():
            s = {k: summarize([r[k] for r in rs if r[k] is not None]) for k in keys
                 if any(r[k] is not None for r in rs)}
            s["cost_vs_largest_standalone"] = summarize(
                [cores[job] * r["train_s"] / r["largest_standalone_s"] for r in rs])
            if all(r["seed"] in base for r in rs):
                s["train_vs_sandwich_kl"] = summarize([r["train_s"] / base[r["seed"]]["train_s"]
                                                       for r in rs])
            summary.setdefault(job, {})[variant] = s
            line = "  ".join(f"{k} {v['median']:+.3f}" for k, v in s.items())
            print(f"{job:20s} {variant:20s} {line}")
    seeds = {job: sorted({r["seed"] for rs in per.values() for r in rs})
             for job, per in runs.items()}
    path = write_json(NAME, {"machine": machine_info(), "epochs": args.epochs,
                             "seeds": seeds, "runs": runs, "summary": summary,
                             "work_dir": str(work)})
    print(f"wrote {path} (runs in {work})")


if __name__ == "__main__":
    main()
