"""Cost of elasticity: the supernet and the extracted subnet vs a hand-written static model.

(a) training step (forward + backward, batch 64, train mode) of ``CNNSupernet`` set to the
    LARGEST arch of digits_cnn vs a hand-written plain-torch model of the same shape holding
    the same weights. Goal: elastic / static <= 1.10.
(b) inference (eval mode, ``torch.inference_mode``) of the subnet extracted with
    ``raynas.export.extract`` vs the same hand-written model, batch 1 and batch 64.
    Goal: extracted / static <= 1.02.
(c) both comparisons again for a mid-size random arch (reported, no goal).

Each pair times the static model (A) then the raynas model (B) after 2 warm-up pairs; each
sample is the mean over one block of calls: >= 20 inference calls (~40 ms), or >= 2 training
steps (~150 ms; one step alone takes 40-100 ms). 31 pairs; ratios are B / A; we report the
median ratio [min-max]. torch.set_num_threads(1). Random inputs. Also counted, not timed:
nn.Module calls and Python function calls per forward of each model (batch 1).

    python benchmarks/elastic_overhead.py [--pairs 31]
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import torch
import torch.nn.functional as F
from _common import ROOT, calibrate, fmt, machine_info, paired, write_json
from torch import nn

from raynas.export import extract
from raynas.space import SearchSpace
from raynas.supernets import create_supernet

NAME = "elastic_overhead"
THREADS = 1
TRAIN_GOAL = 1.10
INFER_GOAL = 1.02


class HandCNN(nn.Module):
    """The cnn family's subnet written out by hand: plain Conv2d/BatchNorm2d/Linear.

    Stem conv-BN-ReLU, then per stage: the first layer applies the stride, later layers are
    residual (x + relu(bn(conv(x)))); global average pooling; linear classifier.
    """

    def __init__(self, in_channels: int, stem_width: int, stages, num_classes: int):
        super().__init__()
        self.stem_conv = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(stem_width)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        cin = stem_width
        for width, kernels, stride in stages:
            convs, bns = nn.ModuleList(), nn.ModuleList()
            for j, k in enumerate(kernels):
                convs.append(nn.Conv2d(cin if j == 0 else width, width, k,
                                       stride if j == 0 else 1, k // 2, bias=False))
                bns.append(nn.BatchNorm2d(width))
            self.convs.append(convs)
            self.bns.append(bns)
            cin = width
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        for convs, bns in zip(self.convs, self.bns):
            first = True
            for conv, bn in zip(convs, bns):
                y = F.relu(bn(conv(x)))
                x = y if first else x + y
                first = False
        return self.fc(x.mean(dim=(2, 3)))


class _Block(nn.Module):
    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class HandBlockCNN(nn.Module):
    """Diagnostic variant of ``HandCNN``: each conv-BN-ReLU wrapped in its own module, as
    ``StaticCNN`` does (one more ``nn.Module.__call__`` per layer). Shares HandCNN's tensors.
    """

    def __init__(self, hand: HandCNN):
        super().__init__()
        self.stem = _Block(hand.stem_conv, hand.stem_bn)
        self.stages = nn.ModuleList(
            nn.ModuleList(_Block(c, b) for c, b in zip(convs, bns))
            for convs, bns in zip(hand.convs, hand.bns))
        self.fc = hand.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            for j, block in enumerate(stage):
                y = block(x)
                x = y if j == 0 else x + y
        return self.fc(x.mean(dim=(2, 3)))


def module_calls(model: nn.Module, x: torch.Tensor) -> int:
    """Number of ``nn.Module`` calls in one forward pass (Python-level dispatch count)."""
    count = [0]

    def hook(_module, _inputs):
        count[0] += 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return count[0]


def python_calls(model: nn.Module, x: torch.Tensor, reps: int = 20) -> float:
    """Python-level function calls (cProfile's count, C builtins included) per forward."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    with torch.inference_mode():
        model(x)
        prof.enable()
        for _ in range(reps):
            model(x)
        prof.disable()
    return pstats.Stats(prof).total_calls / reps


def hand_model_for(space: SearchSpace, arch) -> HandCNN:
    m = space.model
    stages = [(arch[f"s{i}_width"], list(arch[f"s{i}_kernel"]), s)
              for i, s in enumerate(m["strides"], start=1)]
    return HandCNN(m["in_channels"], m["stem_width"], stages, m["num_classes"])


def _crop(w: torch.Tensor, k: int) -> torch.Tensor:
    start = (w.shape[-1] - k) // 2
    return w[..., start:start + k, start:start + k]


def _copy_bn(dst: nn.BatchNorm2d, src, c: int) -> None:
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])


@torch.no_grad()
def copy_weights(hand: HandCNN, supernet, arch) -> None:
    """Slice the supernet's full tensors by hand (first channels, centre kernel crop)."""
    hand.stem_conv.weight.copy_(supernet.stem.conv.weight)
    _copy_bn(hand.stem_bn, supernet.stem.bn, hand.stem_bn.num_features)
    cin = hand.stem_conv.out_channels
    for i, (convs, bns) in enumerate(zip(hand.convs, hand.bns)):
        stage = supernet.stages[i]
        for j, (conv, bn) in enumerate(zip(convs, bns)):
            w = stage[j].conv.weight[: conv.out_channels, : (cin if j == 0 else
                                                            conv.out_channels)]
            conv.weight.copy_(_crop(w, conv.kernel_size[0]))
            _copy_bn(bn, stage[j].bn, conv.out_channels)
        cin = convs[0].out_channels
    hand.fc.weight.copy_(supernet.head.weight[:, :cin])
    hand.fc.bias.copy_(supernet.head.bias)


def mid_size_arch(space: SearchSpace, seed: int = 1234, samples: int = 201):
    """The random arch (of ``samples`` drawn with ``seed``) with the median weight count."""
    rng = random.Random(seed)
    m = space.model

    def weights(a) -> int:
        total, cin = 0, m["stem_width"]
        for i in range(1, len(m["strides"]) + 1):
            w = a[f"s{i}_width"]
            for j, k in enumerate(a[f"s{i}_kernel"]):
                total += (cin if j == 0 else w) * w * k * k
            cin = w
        return total

    archs = sorted((space.sample(rng) for _ in range(samples)), key=weights)
    return archs[len(archs) // 2]


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    return step


def infer(model: nn.Module, x: torch.Tensor):
    def call() -> None:
        model(x)
    return call


def check_train_equal(supernet, hand, arch, x) -> float:
    """Same outputs and same gradients in train mode (batch statistics)."""
    supernet.set_arch(arch)
    supernet.train()
    hand.train()
    y = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    supernet.zero_grad(set_to_none=True)
    hand.zero_grad(set_to_none=True)
    out_s, out_h = supernet(x), hand(x)
    diff = float((out_s - out_h).detach().abs().max())
    assert diff < 1e-4, f"train-mode outputs differ by {diff}"
    F.cross_entropy(out_s, y).backward()
    F.cross_entropy(out_h, y).backward()
    g_s = supernet.stages[0][0].conv.weight.grad
    g_h = hand.convs[0][0].weight.grad
    g_s = _crop(g_s[: g_h.shape[0], : g_h.shape[1]], g_h.shape[-1])
    gdiff = float((g_s - g_h).abs().max())
    assert gdiff < 1e-4, f"gradients differ by {gdiff}"
    return diff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=31)
    ap.add_argument("--block-s", type=float, default=0.04,
                    help="target seconds per inference block (at least 20 calls)")
    ap.add_argument("--train-block-s", type=float, default=0.15,
                    help="target seconds per training block (at least 2 calls: one training "
                         "step at batch 64 already takes ~40-100 ms)")
    args = ap.parse_args()

    torch.set_num_threads(THREADS)
    machine = machine_info(THREADS)
    torch.manual_seed(0)
    space = SearchSpace.load(ROOT / "search_spaces" / "digits_cnn.yaml")
    supernet = create_supernet(space)
    shape = (space.model["in_channels"], space.model["image_size"], space.model["image_size"])
    gen = torch.Generator().manual_seed(0)
    x64 = torch.randn(64, *shape, generator=gen)
    x1 = torch.randn(1, *shape, generator=gen)
    y64 = torch.randint(0, space.model["num_classes"], (64,), generator=gen)
    # Give BN non-trivial running statistics (an untrained net has mean 0 / var 1).
    supernet.train()
    with torch.no_grad():
        for _ in range(5):
            supernet.set_arch(space.sample(random.Random(_)))
            supernet(torch.randn(256, *shape, generator=gen))

    arches = {"largest": space.largest(), "mid": mid_size_arch(space)}
    results: dict[str, dict] = {}
    checks: dict[str, object] = {}
    diagnostics: dict[str, dict] = {}
    for label, arch in arches.items():
        # ---- training step: supernet at arch vs hand-written model ----------------------
        supernet.set_arch(arch)
        hand = hand_model_for(space, arch)
        copy_weights(hand, supernet, arch)
        checks[f"{label}_train_max_abs_diff"] = check_train_equal(supernet, hand, arch, x64)
        supernet.set_arch(arch)
        supernet.train()
        hand.train()
        a, b = train_step(hand, x64, y64), train_step(supernet, x64, y64)
        calls = calibrate(a, args.train_block_s, 2, 2000)
        results[f"{label}_train_b64"] = {
            "what": f"forward+backward, batch 64, train mode, {label} arch: "
                    "A = hand-written static, B = CNNSupernet (elastic)",
            "arch": arch.to_dict(), **paired(a, b, pairs=args.pairs, calls=calls)}

        # ---- inference: extracted subnet vs hand-written model -------------------------
        supernet.eval()
        extracted = extract(supernet, space, arch)  # eval mode, owns copies of the weights
        hand = hand_model_for(space, arch)
        copy_weights(hand, supernet, arch)
        hand.eval()
        with torch.no_grad():
            diff = float((extracted(x64) - hand(x64)).abs().max())
        assert diff < 1e-5, f"{label}: extracted and hand-written outputs differ by {diff}"
        checks[f"{label}_eval_max_abs_diff"] = diff
        for bs, x in ((1, x1), (64, x64)):
            a, b = infer(hand, x), infer(extracted, x)
            with torch.inference_mode():
                calls = calibrate(a, args.block_s, 20, 5000)
                res = paired(a, b, pairs=args.pairs, calls=calls)
            results[f"{label}_infer_b{bs}"] = {
                "what": f"inference, batch {bs}, eval mode, torch.inference_mode, {label} arch:"
                        " A = hand-written static, B = raynas.export.extract subnet",
                "arch": arch.to_dict(), **res}
        # Diagnostic: where a batch-1 gap comes from. Same tensors, one wrapper module per
        # conv-BN-ReLU like StaticCNN; if extracted ~= blocked, the gap is Python dispatch.
        blocked = HandBlockCNN(hand).eval()
        with torch.no_grad():
            assert torch.equal(blocked(x64), hand(x64))
        checks[f"{label}_module_calls_per_forward"] = {
            "hand": module_calls(hand, x1), "hand_blocks": module_calls(blocked, x1),
            "extracted": module_calls(extracted, x1)}
        checks[f"{label}_python_calls_per_forward"] = {
            "hand": python_calls(hand, x1), "hand_blocks": python_calls(blocked, x1),
            "extracted": python_calls(extracted, x1)}
        a, b = infer(blocked, x1), infer(extracted, x1)
        with torch.inference_mode():
            calls = calibrate(a, args.block_s, 20, 5000)
            diagnostics[f"{label}_infer_b1_vs_hand_blocks"] = {
                "what": f"DIAGNOSTIC inference batch 1, {label} arch: A = hand-written with one "
                        "wrapper module per conv-BN-ReLU (like StaticCNN), B = extracted",
                **paired(a, b, pairs=args.pairs, calls=calls)}
        print(f"{label}: " + "  ".join(
            f"{k.split('_', 1)[1]} {fmt(v['summary'])} "
            f"(A {1e3 * sorted(v['a_s_per_call'])[len(v['a_s_per_call']) // 2]:.3f} ms)"
            for k, v in results.items() if k.startswith(label)), flush=True)

    goals = {"largest_train_b64": TRAIN_GOAL, "largest_infer_b1": INFER_GOAL,
             "largest_infer_b64": INFER_GOAL}
    verdict = {k: {"goal_max": g, "median": results[k]["summary"]["median"],
                   "met": results[k]["summary"]["median"] <= g,
                   "cpu_median": results[k]["cpu_summary"]["median"],
                   "cpu_met": results[k]["cpu_summary"]["median"] <= g}
               for k, g in goals.items()}
    path = write_json(NAME, {
        "machine": machine, "pairs": args.pairs, "block_target_s": args.block_s,
        "ratio": "B / A = raynas model time / hand-written static time (lower is better); "
                 "summary: wall time (perf_counter_ns), cpu_summary: thread CPU time",
        "train_block_target_s": args.train_block_s,
        "equivalence_checks_and_counts": checks, "results": results,
        "loadavg_at_end": list(os.getloadavg()),
        "diagnostics": diagnostics, "goals": verdict,
    })
    for key, res in results.items():
        goal = goals.get(key)
        tail = f" (goal <= {goal:.2f}: {'met' if res['summary']['median'] <= goal else 'MISSED'})" \
            if goal else " (no goal)"
        print(f"  {key}: {fmt(res['summary'])}{tail}; thread CPU time "
              f"{fmt(res['cpu_summary'])}; ratio of fastest blocks "
              f"{res['ratio_of_minima_wall']:.3f}x")
    for key, res in diagnostics.items():
        print(f"  {key}: {fmt(res['summary'])} (diagnostic); thread CPU time "
              f"{fmt(res['cpu_summary'])}; ratio of fastest blocks "
              f"{res['ratio_of_minima_wall']:.3f}x")
    for key, value in checks.items():
        if key.endswith("calls_per_forward"):
            print(f"  {key}: {value}")
    print(f"wrote {path}")
    s = {k: results[k]["summary"] for k in goals}
    c = {k: results[k]["cpu_summary"] for k in goals}
    print(f"elastic_vs_static (threads={THREADS}, wall time): train largest b64 "
          f"{fmt(s['largest_train_b64'])} (goal <= {TRAIN_GOAL:.2f}); extracted infer b1 "
          f"{fmt(s['largest_infer_b1'])}, b64 {fmt(s['largest_infer_b64'])} (goal <= "
          f"{INFER_GOAL:.2f}); thread-CPU medians " + " / ".join(
              f"{c[k]['median']:.3f}x" for k in goals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
