"""Weight schemes side by side: does giving subnets their own weights make the supernet a
better judge of them, and what does it cost to train?

Two spaces on cluttered digits (the harder vision task): ``jobs/resnet20_pool_tiny.yaml``
(10 pooling layouts) and ``jobs/digits_cnn_cluttered.yaml`` (the digits CNN space at 16x16).
Four schemes: ``shared``, ``mos_layer`` (2 experts), ``mos_neuron`` (2 experts), both with
the CPU analogue's router (hidden 32), and ``balanced_mixture`` (4 supernets); on
resnet20_pool_tiny also the balanced mixture with 2 supernets and with 4 left unbalanced.

1. **Fidelity**, per space, scheme and seed k (3 seeds), as a user runs it:

       raynas fidelity jobs/<job>.yaml --output-dir <tmp> seed=<k> weights.name=<scheme> ...

   which trains the supernet with the job's recipe (same epochs, sampler and distillation for
   every scheme: the same budget), trains the picked subnets from scratch with the same
   epochs (cached across schemes: the standalone results do not depend on the scheme), and
   reports Kendall tau, Spearman rho, top-1 regret and the mean gap (standalone minus
   inherited validation accuracy). Figures: median [min-max] over the seeds.
2. **Training cost** relative to ``shared``: one training step of the job's recipe (sandwich
   of 3 subnets, KL distillation; the balanced mixture's validation scoring included), on the
   same batch, schemes interleaved round by round in one process, 1 thread; the median
   [min-max] of the per-round ratios.

    python benchmarks/weight_schemes.py [--seeds 3] [--epochs N] [--only cost|fidelity]
        [--jobs JOB ...] [--schemes LABEL ...] [--cache DIR] [--checkpoints WORK_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, machine_info, raynas_exe, summarize, write_json

NAME = "weight_schemes"
JOBS = {"resnet20_pool_tiny": 10, "digits_cnn_cluttered": 8}  # job -> subnets compared
SCHEMES = {  # label -> the job's overrides
    "shared": ["weights.name=shared"],
    "mos_layer": ["weights.name=mos_layer", "weights.options.experts=2",
                  "weights.options.hidden=32"],
    "mos_neuron": ["weights.name=mos_neuron", "weights.options.experts=2",
                   "weights.options.hidden=32"],
    "balanced_mixture": ["weights.name=balanced_mixture", "weights.options.supernets=4"],
}
# The Balanced Mixture paper's two claims on its own space (ResNet-20 pooling layouts): fidelity
# rises with the number of supernets, and balancing the marginal is what makes K supernets help.
ABLATIONS = {"resnet20_pool_tiny": {
    "balanced_mixture_k2": ["weights.name=balanced_mixture", "weights.options.supernets=2"],
    "balanced_mixture_unbalanced": ["weights.name=balanced_mixture",
                                    "weights.options.supernets=4",
                                    "weights.options.balanced=false"],
    # Each of K supernets trains on about 1/K of the steps; the paper's CPU analogue (section
    # 2.d) trains mixtures for twice the standalone epochs. Here K times the epochs: every
    # supernet gets the steps the shared one gets (the standalone trainings stay at 15).
    "balanced_mixture_4x_epochs": ["weights.name=balanced_mixture", "weights.options.supernets=4",
                                   "train.epochs=60", "fidelity.epochs=15"],
}}


def _options(overrides: list[str]) -> tuple[str, dict]:
    name = next(o.split("=")[1] for o in overrides if o.startswith("weights.name="))
    return name, {o.split("=")[0].split(".")[-1]: int(o.split("=")[1])
                  for o in overrides if o.startswith("weights.options.")}


def training_cost(job: str, rounds: int = 15) -> dict:
    import torch

    from raynas.config import load_config
    from raynas.space.registry import load_space
    from raynas.supernets import create_supernet
    from raynas.tasks import build_task, example_args
    from raynas.training.loop import train_step
    from raynas.training.losses import DISTILLERS
    from raynas.training.optim import build_optimizer
    from raynas.training.samplers import SAMPLERS

    torch.set_num_threads(1)
    cfg = load_config(ROOT / "jobs" / f"{job}.yaml")
    space = load_space(cfg.space, base=ROOT)
    task = build_task(space)
    t = cfg.train
    gen = torch.Generator().manual_seed(0)
    inputs = example_args(space, t.batch_size, task)
    batch = {**dict(zip(task.input_names, inputs)),
             "labels": torch.randint(0, 10, (t.batch_size,), generator=gen)}
    setups = {}
    for scheme, overrides in SCHEMES.items():
        name, options = _options(overrides)
        torch.manual_seed(0)
        net = create_supernet(space, {"name": name, "options": options})
        if hasattr(net, "start_epoch"):
            net.start_epoch(0, 1)
        sampler = SAMPLERS.create(t.sampler.name, t.sampler.options, space=space,
                                  num_subnets=t.num_subnets, seed=0)
        setups[scheme] = (net, build_optimizer(net, t), sampler,
                          DISTILLERS.create(t.distill.name, t.distill.options))

    def score(net):  # what the loop's validation scorer does: a no-grad forward
        with torch.no_grad():
            out = net(*inputs)
        return float((out.argmax(-1) == batch["labels"]).float().mean())

    def step(scheme: str, i: int) -> float:
        net, opt, sampler, distiller = setups[scheme]
        t0 = time.perf_counter_ns()
        train_step(net, task, opt, sampler, distiller, batch, i, t, 1, score)
        return (time.perf_counter_ns() - t0) / 1e9

    for i in range(3):  # warm-up
        for scheme in SCHEMES:
            step(scheme, i)
    times: dict[str, list[float]] = {s: [] for s in SCHEMES}
    for i in range(3, 3 + rounds):
        for scheme in SCHEMES:
            times[scheme].append(step(scheme, i))
    out = {}
    for scheme in SCHEMES:
        ratios = [b / a for a, b in zip(times["shared"], times[scheme])]
        out[scheme] = {"ratio": summarize(ratios), "step_s": summarize(times[scheme]),
                       "params": sum(p.numel() for p in setups[scheme][0].parameters())}
    return out


def fidelity_run(job: str, scheme: str, overrides: list[str], seed: int, cache: Path,
                 epochs: int | None, work: Path, checkpoints: Path | None = None) -> dict:
    out = work / f"{job}-{scheme}-{seed}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns.db'}"}
    cmd = [*raynas_exe(), "fidelity", str(ROOT / "jobs" / f"{job}.yaml"), "--output-dir",
           str(out), f"seed={seed}", *overrides,
           f"fidelity.subnets={JOBS[job]}", f"fidelity.cache_dir={cache}", f"name={job}"]
    if epochs:
        cmd.append(f"train.epochs={epochs}")
    if checkpoints:  # judge the supernet an earlier run trained (its work folder)
        cmd += ["--checkpoint", str(checkpoints / out.name / "checkpoint")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    summary = json.loads(next(out.rglob("fidelity.json")).read_text())
    return {"wall_s": wall, **summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="override the jobs' epochs")
    ap.add_argument("--only", choices=("cost", "fidelity"))
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    labels = sorted({*SCHEMES, *(k for per in ABLATIONS.values() for k in per)})
    ap.add_argument("--schemes", nargs="+", choices=labels,
                    help="fidelity of these only; the other schemes' runs of an earlier "
                         "result are kept (default: all)")
    ap.add_argument("--cache", type=Path, help="standalone cache to reuse (default: a new one)")
    ap.add_argument("--checkpoints", type=Path,
                    help="an earlier run's work folder: judge its trained supernets again "
                         "(after a change to how a scheme evaluates) instead of training")
    args = ap.parse_args()
    previous = RESULTS / f"{NAME}.json"  # --only / --schemes keep the rest of an earlier run
    before = json.loads(previous.read_text()) if previous.exists() else {}
    redone = {"benchmark", "date", "machine", "epochs", "seeds", "schemes", "ablations",
              *(("cost",) if args.only != "fidelity" else ()),
              *(("fidelity", "summary") if args.only != "cost" else ())}
    kept = {k: v for k, v in before.items() if args.only and k not in redone}
    result: dict = {"machine": machine_info(threads=1), "epochs": args.epochs,
                    "seeds": args.seeds, "schemes": SCHEMES, "ablations": ABLATIONS, **kept}
    if args.only != "fidelity":
        result["cost"] = {job: training_cost(job) for job in args.jobs}
        for job, per in result["cost"].items():
            for scheme, r in per.items():
                q = r["ratio"]
                print(f"cost {job:22s} {scheme:17s} {q['median']:.2f}x "
                      f"[{q['min']:.2f}-{q['max']:.2f}]  params {r['params']:,}", flush=True)
    if args.only != "cost":
        work = Path(tempfile.mkdtemp(prefix="raynas-weights-"))
        cache = args.cache or work / "standalone-cache"
        runs: dict = {}
        if args.schemes:  # an earlier result's other runs stay
            runs = {job: {s: rs for s, rs in per.items()
                          if job not in args.jobs or s not in args.schemes}
                    for job, per in before.get("fidelity", {}).items()}
        for job in args.jobs:
            for seed in range(args.seeds):
                for scheme, overrides in {**SCHEMES, **ABLATIONS.get(job, {})}.items():
                    if args.schemes and scheme not in args.schemes:
                        continue
                    r = fidelity_run(job, scheme, overrides, seed, cache, args.epochs, work,
                                     args.checkpoints)
                    runs.setdefault(job, {}).setdefault(scheme, []).append(r)
                    print(f"fidelity {job} {scheme} seed {seed}: " + json.dumps(
                        {k: r.get(k) for k in ("kendall_tau", "mean_gap", "top1_regret",
                                               "wall_s")}), flush=True)
        result["fidelity"] = runs
        result["summary"] = {
            job: {scheme: {k: summarize([r[k] for r in rs])
                           for k in ("kendall_tau", "spearman_rho", "mean_gap", "top1_regret")}
                  for scheme, rs in per.items()} for job, per in runs.items()}
        for job, per in result["summary"].items():
            for scheme, s in per.items():
                tau, gap = s["kendall_tau"], s["mean_gap"]
                print(f"fidelity {job:22s} {scheme:17s} tau {tau['median']:+.2f} "
                      f"[{tau['min']:+.2f}, {tau['max']:+.2f}]  gap {gap['median']:+.3f} "
                      f"[{gap['min']:+.3f}, {gap['max']:+.3f}]")
    path = write_json(NAME, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
