"""Cost of elasticity for the vision families (``resnet20_pool``, ``vit``): the supernet and
the extracted subnet vs a hand-written static model of the same subnet.

For the LARGEST arch of each family's tiny space (``resnet20_pool_tiny``, ``vit_tiny``):

(a) training step (forward + backward, batch 64, train mode) of the supernet vs the
    hand-written plain-torch model holding the same weights. Goal: supernet / hand <= 1.10.
(b) inference (eval mode, ``torch.inference_mode``) of the subnet extracted with
    ``raynas.export.extract`` vs the hand-written model, batch 1 and batch 64.
    Goal: extracted / hand <= 1.02.

Both models are first checked to compute the same (train and eval mode). Each pair times
the hand-written model (A) then the raynas model (B) after 2 warm-up pairs; a sample is the
mean over one block of calls (>= 20 inference calls, ~40 ms; >= 2 training steps, ~150 ms).
31 pairs; ratios B / A, median [min-max]. torch.set_num_threads(1). Random inputs.

    python benchmarks/elastic_overhead_vision.py [--families resnet20_pool vit] [--pairs 31]
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import torch
from _common import ROOT, calibrate, fmt, machine_info, paired, write_json
from elastic_overhead import infer, train_step

from raynas.export import extract
from raynas.space import SearchSpace
from raynas.supernets import create_supernet

NAME = "elastic_overhead_vision"
THREADS = 1
TRAIN_GOAL = 1.10
INFER_GOAL = 1.02
SPACES = {"resnet20_pool": "resnet20_pool_tiny", "vit": "vit_tiny"}


def hand_model(family: str, static: torch.nn.Module) -> torch.nn.Module:
    if family == "resnet20_pool":
        from _hand_resnet import HandResNetPool

        return HandResNetPool(static)
    from _hand_vit import HandViT

    return HandViT.from_static(static)


def bench_family(family: str, pairs: int, block_s: float, train_block_s: float) -> dict:
    space = SearchSpace.load(ROOT / "search_spaces" / f"{SPACES[family]}.yaml")
    torch.manual_seed(0)
    supernet = create_supernet(space)
    m = space.model
    shape = (m["in_channels"], m["image_size"], m["image_size"])
    gen = torch.Generator().manual_seed(0)
    x64, x1 = torch.randn(64, *shape, generator=gen), torch.randn(1, *shape, generator=gen)
    y64 = torch.randint(0, m["num_classes"], (64,), generator=gen)
    supernet.train()
    with torch.no_grad():  # non-trivial BN running statistics
        for i in range(5):
            supernet.set_arch(space.sample(random.Random(i)))
            supernet(torch.randn(256, *shape, generator=gen))
    arch = space.largest()
    supernet.set_arch(arch)
    supernet.eval()
    extracted = extract(supernet, space, arch)
    hand = hand_model(family, extracted).eval()
    checks = {}
    with torch.no_grad():
        checks["eval_max_abs_diff"] = float((extracted(x64) - hand(x64)).abs().max())
        supernet.train()
        hand.train()
        checks["train_max_abs_diff"] = float((supernet(x64) - hand(x64)).abs().max())
    assert max(checks.values()) < 1e-4, checks
    results = {}
    supernet.train()
    hand.train()
    a, b = train_step(hand, x64, y64), train_step(supernet, x64, y64)
    calls = calibrate(a, train_block_s, 2, 2000)
    results["train_b64"] = {"what": f"{family}: forward+backward, batch 64, train mode, "
                            "largest arch: A = hand-written, B = supernet",
                            **paired(a, b, pairs=pairs, calls=calls)}
    hand.eval()
    for bs, x in ((1, x1), (64, x64)):
        a, b = infer(hand, x), infer(extracted, x)
        with torch.inference_mode():
            calls = calibrate(a, block_s, 20, 5000)
            results[f"infer_b{bs}"] = {
                "what": f"{family}: inference, batch {bs}, eval mode, largest arch: "
                        "A = hand-written, B = raynas.export.extract subnet",
                **paired(a, b, pairs=pairs, calls=calls)}
    return {"space": space.name, "arch": arch.to_dict(), "checks": checks, "results": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(SPACES), choices=list(SPACES))
    ap.add_argument("--pairs", type=int, default=31)
    ap.add_argument("--block-s", type=float, default=0.04)
    ap.add_argument("--train-block-s", type=float, default=0.15)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    machine = machine_info(THREADS)
    out, goals = {}, {"train_b64": TRAIN_GOAL, "infer_b1": INFER_GOAL, "infer_b64": INFER_GOAL}
    for family in args.families:
        out[family] = bench_family(family, args.pairs, args.block_s, args.train_block_s)
        for key, res in out[family]["results"].items():
            med = res["summary"]["median"]
            res["goal_max"], res["met"] = goals[key], med <= goals[key]
            a_ms = 1e3 * sorted(res["a_s_per_call"])[len(res["a_s_per_call"]) // 2]
            print(f"{family} {key}: {fmt(res['summary'])} (goal <= {goals[key]:.2f}: "
                  f"{'met' if res['met'] else 'MISSED'}); thread CPU time "
                  f"{fmt(res['cpu_summary'])}; hand-written {a_ms:.3f} ms", flush=True)
    path = write_json(NAME, {"machine": machine, "pairs": args.pairs,
                             "ratio": "B / A = raynas model time / hand-written time",
                             "families": out, "loadavg_at_end": list(os.getloadavg())})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
