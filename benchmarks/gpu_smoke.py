"""GPU smoke check: train a small supernet on one GPU, score subnets on it, time a subnet on
CUDA, in under 5 minutes. Needs a machine with a CUDA GPU; raynas's tests never do.

    python benchmarks/gpu_smoke.py

It runs the real pipeline as a user would (``python -m raynas run jobs/smoke.yaml`` on an
embedded Ray, in a temporary folder) with ``train.use_gpu=true`` (one Ray Train worker on
one GPU), ``search.evaluator.num_gpus=1`` (the evaluator actor holds the GPU) and
``latency.device=cuda``, then checks, and prints, each of:

- training ran on CUDA (the epoch lines name the device) and the loss fell;
- every searched subnet was scored on CUDA (``eval_device``) with a latency on the CUDA
  target, and the exported formats match the supernet;
- a subnet timed directly on CUDA (synchronised) and on the CPU gives finite, positive
  times; the ratio is printed, not judged;
- each vision family's tiny supernet (``resnet20_pool_tiny``, ``vit_tiny``) trains a step on
  CUDA at its largest and smallest arch, and the extracted subnet computes on CUDA what the
  supernet computes (``vision_family_on``, which also runs on the CPU).

The last line is a one-line verdict; ``benchmarks/results/gpu_smoke.json`` keeps the details.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_info, write_json


def _check(ok: bool, what: str, checks: list) -> None:
    checks.append({"check": what, "ok": bool(ok)})
    print(f"[{'ok' if ok else 'FAILED'}] {what}", flush=True)


def vision_family_on(space_name: str, device: str) -> float:
    """One SGD step of the space's supernet on ``device`` at its largest and smallest arch,
    then the largest extracted subnet vs the supernet there: the max abs output difference."""
    import torch
    import torch.nn.functional as F

    from raynas.export import extract
    from raynas.space import SearchSpace
    from raynas.supernets import create_supernet
    from raynas.tasks import example_args

    space = SearchSpace.load(ROOT / "search_spaces" / f"{space_name}.yaml")
    torch.manual_seed(0)
    net = create_supernet(space).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    (x,) = (t.to(device) for t in example_args(space, 16))
    y = torch.randint(0, space.model["num_classes"], (16,), device=device)
    net.train()
    for arch in (space.largest(), space.smallest()):
        net.set_arch(arch)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    static = extract(net, space, space.largest()).to(device)
    with torch.no_grad():
        return float((static(x) - net(x)).abs().max())


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here (torch.cuda.is_available() is False); run it "
              "on a machine with a GPU")
        return 2
    checks: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlruns.db",
               "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "raynas", "run", str(ROOT / "jobs" / "smoke.yaml"),
               "--output-dir", str(out), "train.use_gpu=true", "train.num_workers=1",
               "train.epochs=3", "search.evaluator.num_gpus=1", "latency.device=cuda",
               "latency.target=cuda", "search.budget=16"]
        proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True,
                              timeout=280)
        log = proc.stdout + proc.stderr
        _check(proc.returncode == 0, f"raynas run exited {proc.returncode}", checks)
        epochs = [line for line in log.splitlines() if "train epoch" in line]
        _check(len(epochs) == 3 and all("cuda" in line for line in epochs),
               "every training epoch ran on CUDA", checks)
        losses = [float(line.split("loss ")[1].split()[0]) for line in epochs
                  if "loss " in line]
        _check(len(losses) == 3 and losses[-1] < losses[0],
               f"training loss fell: {losses}", checks)
        records = []
        if (out / "evaluations.parquet").is_file():
            import pyarrow.parquet as pq

            records = pq.read_table(out / "evaluations.parquet").to_pylist()
        _check(len(records) == 16 and all(r.get("eval_device") == "cuda" for r in records),
               f"{len(records)} subnets scored by the evaluator actor on CUDA", checks)
        _check(bool(records) and all(r.get("latency_target") == "cuda" and r["latency_ms"] > 0
                                     for r in records),
               "each subnet has a latency on the CUDA target", checks)
        export = (json.loads((out / "subnet" / "export.json").read_text())
                  if (out / "subnet" / "export.json").is_file() else {})
        _check(bool(export) and max(export["max_abs_diff"].values()) <= export["atol"],
               f"exported formats match the supernet: {export.get('max_abs_diff')}", checks)
        if proc.returncode != 0:
            print(log[-3000:])

    from raynas.export import extract
    from raynas.latency import MeasuredLatency
    from raynas.space import SearchSpace
    from raynas.supernets import create_supernet
    from raynas.tasks import example_args

    space = SearchSpace.load(ROOT / "search_spaces" / "digits_cnn.yaml")
    net = create_supernet(space).eval()
    static = extract(net, space, space.largest())
    args = example_args(space, 32)
    cuda = MeasuredLatency("cuda", 32, 1, 0.2, device="cuda").measure_ms(static, args)
    cpu = MeasuredLatency("cpu", 32, 1, 0.2, device="cpu").measure_ms(static.cpu(), args)
    _check(0 < cuda < 1e4 and 0 < cpu < 1e4,
           f"largest digits_cnn subnet, batch 32: {cuda:.3f} ms on CUDA (synchronised), "
           f"{cpu:.3f} ms on 1 CPU thread, ratio cpu/cuda {cpu / cuda:.1f}", checks)
    for name in ("resnet20_pool_tiny", "vit_tiny"):
        diff = vision_family_on(name, "cuda")
        _check(diff < 1e-4, f"{name}: a training step on CUDA at the largest and smallest "
               f"arch; extracted subnet matches the supernet on CUDA (max |diff| {diff:.1e})",
               checks)
    wall = time.perf_counter() - t0
    passed = all(c["ok"] for c in checks)
    write_json("gpu_smoke", {"machine": machine_info(1), "gpu": torch.cuda.get_device_name(0),
                               "checks": checks, "wall_s": wall, "passed": passed})
    print(f"gpu_smoke: {'PASSED' if passed else 'FAILED'} {sum(c['ok'] for c in checks)}/"
          f"{len(checks)} checks in {wall:.0f} s on {torch.cuda.get_device_name(0)}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
