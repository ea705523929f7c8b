"""Streaming and mixture-of-experts Conformers on the CPU (U2++ and U2++ MoE; ``conformer``).

Data: ``generated_speech`` (3,500 utterances of 3-8 of 12 words, noise std ``--noise``, default
2.0: at 1.2 a 1,000-step probe reached about 3 % WER, too few errors to compare), validation
and test 10 % each (350 test utterances, 29-96 frames of 20 mel bins). Vocabulary 16,
attention_dim 64, 16 front-end channels, causal depthwise convolutions. Training: AdamW lr
2e-3 constant, weight decay 0.01, gradient norm clipped at 5 (WeNet's grad_clip), batch 32, the
same batches for every model of a seed; seeds 0..N-1 set initialisation, batch order and
(streaming) the chunks drawn; the split is fixed; one torch thread throughout. WER: greedy CTC
by jiwer, test split, median [min-max] over seeds. RTF = compute s / audio s (frames x 10 ms)
over the test utterances one at a time at their own length (batch 1), eval, ``no_grad``,
seed-0 weights; a round runs each variant over them in turn, after a warm-up round; RTFs and
per-round ratios as median [min-max] over ``--pairs`` rounds (thread CPU time in the JSON).

Part ``streaming`` (U2++: one model decodes streaming and non-streaming): a space holding one
arch (3 blocks, d_model 64, FFN 192, 4 heads, kernel 7) except ``chunk`` [1, 2, 4, 8, 0] and
``left_chunks`` [1, -1]; its supernet trains with dynamic chunks: per batch, with probability
0.5 full context (chunk 0), else ``space.sample`` redrawn until its chunk is not 0. The same
weights, extracted per decoding, are scored at full context, chunk 1/2/4/8 with all left
context and chunk 4/8 with one left chunk. Timed: (a) the chunk-0 model's forward on the whole
utterance; (b) ``conformer_stream.stream`` on the chunk-4 and chunk-8 models with one left
chunk (checked equal to their masked forward); (c) their final latency, the last chunk alone
with its caches ready (what a search's ``latency_ms`` times); ratios to (a). Algorithmic
latency of chunk
c: (4c + 3) x 10 ms (4c input frames, 3 frames look-ahead). Goals: every decoding's WER
reported (U2++: streaming slightly worse); pass/fail only WER(chunk 8, all left) < 2 x
WER(full) (medians) and every RTF of every round < 1.

Part ``moe`` (U2++ MoE's CPU analogue): three standalone models, full context (no chunk dim),
causal convolutions, 4 blocks, d_model 64, 4 heads, kernel 7. Dense-S: every feed-forward
(both macaron halves) an MLP 256 wide; MoE-S: each 8 experts 256 wide, top 2, all 8 active, no
auxiliary loss; Dense-L: the FFN width whose parameter count is closest to MoE-S's (computed,
both printed). Reported: test WER; RTF of Dense-S, MoE-S, Dense-L and the ratios MoE-S /
Dense-S, Dense-L / Dense-S, MoE-S / Dense-L; parameters; FLOPs of a 96-frame forward
(``count_flops``; MoE's padded expert rows counted, unpadded beside); MoE-S's expert load on
the test split per layer and seed: shares, entropy (nats, against log 8), smallest share.
Goals (PAPERS.md 6.d): WER(MoE-S) closer to Dense-L's than to Dense-S's (medians); median
MoE-S / Dense-S RTF <= 1.6 and every round's MoE-S / Dense-L < 1; no expert at 0 % anywhere.

    python benchmarks/speech_streaming_moe.py [--part streaming|moe|all] [--steps N]
        [--seeds 3] [--pairs 10] [--noise 2.0] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import fmt, machine_info, summarize, time_block, write_json
from torch import nn

from raynas.export import extract
from raynas.latency import count_flops
from raynas.nn.conformer import subsampled_lengths
from raynas.nn.moe import MOE_LAYERS, block_size, padded_rows
from raynas.pipeline.expert_load import measure_expert_load
from raynas.space import SearchSpace
from raynas.supernets import build_static, create_supernet
from raynas.supernets.conformer_stream import final_chunk, prepare_final_chunk, stream
from raynas.tasks import build_task, load_task_data, make_loader

NAME = "speech_streaming_moe"
THREADS = 1
MODEL = {"n_mels": 20, "vocab_size": 16, "max_frames": 96, "attention_dim": 64,
         "subsample_channels": 16, "causal": True}
D_MODEL, HEADS, KERNEL = 64, 4, 7
STREAM_BLOCKS, STREAM_FFN = 3, 192
DECODINGS = ((0, -1), (1, -1), (2, -1), (4, -1), (4, 1), (8, -1), (8, 1))  # (chunk, left)
TIMED_CHUNKS = (4, 8)  # streamed with one left chunk
MOE_BLOCKS, FFN, MOE = 4, 256, {"experts": 8, "top_k": 2}
MODELS = ("dense_s", "moe_s", "dense_l")
LR, WEIGHT_DECAY, CLIP, BATCH = 2e-3, 0.01, 5.0, 32
FRAME_S, RTF_GOAL = 0.01, 1.6
DEFAULT_STEPS = {"streaming": 1500, "moe": 500}
QUICK = {"steps": 30, "seeds": 1, "pairs": 2, "utterances": 30}


def space_for(blocks: int, ffn: int, moe: dict[str, int] | None = None,
              chunks: bool = False) -> SearchSpace:
    """A ``conformer`` space whose dims hold one arch (with ``chunks``: but chunk and left)."""
    dims: dict[str, Any] = {n: {"type": "choice", "values": [v]} for n, v in (
        ("d_model", D_MODEL), ("ffn", ffn), ("heads", HEADS), ("kernel", KERNEL))}
    dims["blocks"] = {"type": "int", "low": blocks, "high": blocks}
    if chunks:
        dims["chunk"] = {"type": "choice", "values": [1, 2, 4, 8, 0]}
        dims["left_chunks"] = {"type": "choice", "values": [1, -1]}
    return SearchSpace.from_dict({
        "name": f"conformer_b{blocks}_ffn{ffn}" + ("_moe" if moe else ""),
        "family": "conformer", "dims": dims, "model": {**MODEL, **({"moe": moe} if moe else {})}})


def build(space: SearchSpace) -> nn.Module:
    return build_static(space, space.largest())


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_ffn(target: int) -> tuple[int, int]:
    """The dense FFN width whose model's parameter count is closest to ``target``, and that
    count (linear in the width: build two, solve, check the neighbours)."""
    p0, p1 = (params(build(space_for(MOE_BLOCKS, w))) for w in (FFN, FFN + 1))
    guess = FFN + round((target - p0) / (p1 - p0))
    counts = {w: p0 + (w - FFN) * (p1 - p0) for w in (guess - 1, guess, guess + 1)}
    width = min(counts, key=lambda w: abs(counts[w] - target))
    assert params(build(space_for(MOE_BLOCKS, width))) == counts[width]
    return width, counts[width]


def batches(dataset, seed: int, steps: int):
    """``steps`` batches: shuffled epochs (seed, epoch), each epoch's partial batch dropped."""
    epochs = (make_loader(dataset, BATCH, shuffle=True, seed=seed * 1000 + e, drop_last=True)
              for e in itertools.count())
    return itertools.islice(itertools.chain.from_iterable(epochs), steps)


def train(model: nn.Module, task, data, seed: int, steps: int,
          pick: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The plain loop; ``pick`` gives each batch's arch (a supernet's dynamic chunks)."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model.train()
    losses, full = [], 0
    t0 = time.perf_counter()
    for batch in batches(data.train, seed, steps):
        if pick is not None:
            model.set_arch(arch := pick())
            full += arch["chunk"] == 0
        loss = task.loss(model(*task.inputs(batch)), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        losses.append(loss.item())
    sec = time.perf_counter() - t0
    return {"seed": seed, "train_s": sec, "s_per_step": sec / steps, "share_full": full / steps,
            "train_loss_first": losses[0], "train_loss_last_20": statistics.fmean(losses[-20:])}


def dynamic_chunks(space: SearchSpace, seed: int) -> Callable[[], Any]:
    """U2++'s dynamic chunk training: half the batches full context, the others a sampled
    arch with a chunk (the space's ``sample``, drawn again while its chunk is 0)."""
    rng = random.Random(seed)
    full = space.validate({**space.largest(), "chunk": 0, "left_chunks": -1})

    def pick():
        if rng.random() < 0.5:
            return full
        while (arch := space.sample(rng))["chunk"] == 0:
            pass
        return arch
    return pick


def utterances(dataset, limit: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The split's utterances at their own lengths, (feats (1, T, n_mels), lengths (1,))."""
    t = dataset.tensors
    return [(t["feats"][i:i + 1, :n].contiguous(), torch.tensor([n]))
            for i, n in enumerate(t["feat_lengths"].tolist()[:limit])]


def over(fn: Callable, utts: list) -> Callable[[], list]:
    return lambda: [fn(x, n) for x, n in utts]


def rtf_rounds(fns: dict[str, Callable], utts: list, pairs: int,
               compare: list[tuple[str, str]]) -> dict[str, Any]:
    """Each variant once per round, in turn, after one warm-up round: RTF (wall; the thread's
    CPU time beside it) per round, and the per-round ratios b / a of ``compare``."""
    audio_s = sum(int(n) for _, n in utts) * FRAME_S
    wall: dict[str, list[float]] = {n: [] for n in fns}
    cpu = {n: [] for n in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(pairs):
            for n, fn in fns.items():
                w, c = time_block(fn, 1)
                wall[n].append(w / audio_s)
                cpu[n].append(c / audio_s)
    ratios = {f"{b}_over_{a}": [y / x for x, y in zip(wall[a], wall[b])] for a, b in compare}
    return {"audio_s": audio_s, "utterances": len(utts), "rtf": wall, "rtf_cpu": cpu,
            "summary": {n: summarize(v) for n, v in wall.items()},
            "ratios": {k: {"per_round": v, **summarize(v)} for k, v in ratios.items()}}


def print_rtf(r: dict[str, Any], pairs: int) -> None:
    print(f"  RTF ({THREADS} thread, batch 1, {r['utterances']} utterances, {r['audio_s']:.1f}"
          f" s audio, {pairs} rounds): "
          + "; ".join(f"{k} {fmt(v, '')}" for k, v in r["summary"].items()))
    print("  RTF ratios per round: " + "; ".join(f"{k} {fmt(v, 'x')}"
                                                 for k, v in r["ratios"].items()))


def verdict(g: dict[str, Any]) -> str:
    """A goal's verdict and its numbers."""
    return ("met" if g["met"] else "MISSED") + " (" + ", ".join(
        f"{n} {v:.4g}" for n, v in g.items() if type(v) in (int, float)) + ")"


def part_streaming(args, steps: int, task, data, test, utts) -> dict[str, Any]:
    space = space_for(STREAM_BLOCKS, STREAM_FFN, chunks=True)
    archs = {("full" if c == 0 else f"c{c}_left{'all' if left < 0 else left}"):
             space.validate({**space.largest(), "chunk": c, "left_chunks": left})
             for c, left in DECODINGS}
    runs, keep = [], {}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        net = create_supernet(space)
        res = train(net, task, data, seed, steps, dynamic_chunks(space, seed))
        models = {k: extract(net, space, a) for k, a in archs.items()}
        with torch.no_grad():
            res["wer"] = {k: task.evaluate(m, test)["wer"] for k, m in models.items()}
        runs.append(res)
        print(f"streaming seed {seed}: {res['s_per_step']:.3f} s/step; test WER "
              + ", ".join(f"{k} {v:.4f}" for k, v in res["wer"].items()), flush=True)
        keep = keep or models  # seed 0's
    wer = {k: summarize([r["wer"][k] for r in runs]) for k in archs}
    rel = {k: summarize([r["wer"][k] / r["wer"]["full"] if r["wer"]["full"] else math.nan
                         for r in runs]) for k in archs if k != "full"}
    latency_ms = {k: (4 * a["chunk"] + 3) * 1e3 * FRAME_S for k, a in archs.items()
                  if a["chunk"]}
    timed = {f"stream_c{c}_left1": keep[f"c{c}_left1"] for c in TIMED_CHUNKS}
    with torch.no_grad():  # the invariant: streaming computes the masked forward
        diff = max(float((stream(m, x) - m(x, n)).abs().max())
                   for m in timed.values() for x, n in utts[:5])
    assert diff < 1e-3, f"stream differs from the masked forward by {diff}"
    fns = {"full": over(keep["full"], utts),
           **{k: over(lambda x, n, m=m: stream(m, x), utts) for k, m in timed.items()}}
    for k, m in timed.items():  # final latency: the last chunk, its caches ready (search's)
        ready = [prepare_final_chunk(m, x) for x, _ in utts]
        fns[k.replace("stream", "final")] = lambda m=m, ready=ready: [
            final_chunk(m, state, last) for state, last in ready]
    rtf = rtf_rounds(fns, utts, args.pairs, [("full", k) for k in fns if k != "full"])
    rtf["stream_max_abs_diff"] = diff

    print(f"\nstreaming: test WER, seeds 0-{args.seeds - 1}, {steps} steps, noise {args.noise}"
          f" (median [min-max]; chunked / full per seed)")
    print(f"  {'decoding':<14}{'WER':<28}{'chunked / full':<30}algorithmic latency")
    for k in archs:
        r = fmt(rel[k], "x") if k in rel else "-"
        lat = f"{latency_ms[k]:.0f} ms" if k in latency_ms else "whole utterance"
        print(f"  {k:<14}{fmt(wer[k], ''):<28}{r:<30}{lat}")
    print_rtf(rtf, args.pairs)
    per_utt = {k: v["median"] * rtf["audio_s"] / len(utts) * 1e3 for k, v in rtf["summary"].items()}
    print("  per utterance, ms (final_*: the last chunk only, what latency_ms times): "
          + "; ".join(f"{k} {v:.3f}" for k, v in per_utt.items()))
    rtf["per_utterance_ms"] = per_utt
    worst = max(max(v) for k, v in rtf["rtf"].items() if not k.startswith("final"))
    w8, w0 = wer["c8_leftall"]["median"], wer["full"]["median"]
    goals = {"wer": {"goal": "median WER(chunk 8, all left) < 2 x median WER(full)",
                     "c8_leftall": w8, "full": w0, "met": w8 < 2 * w0},
             "rtf": {"goal": "every RTF of every round < 1", "max_rtf": worst, "met": worst < 1}}
    for k, g in goals.items():
        print(f"  goal {k}: {g['goal']}: {verdict(g)}")
    return {"steps": steps, "archs": {k: a.to_dict() for k, a in archs.items()},
            "params": params(keep["full"]), "runs": runs, "wer": wer, "wer_over_full": rel,
            "algorithmic_latency_ms": latency_ms, "rtf": rtf, "goals": goals}


def flops(model: nn.Module, task) -> dict[str, Any]:
    """FLOPs of one forward on a ``max_frames`` utterance (batch 1); for MoE layers the
    padded expert rows counted and the unpadded figure beside."""
    ex = task.example_inputs(1)
    model.eval()
    with torch.no_grad():
        total = count_flops(model, (ex["feats"], ex["feat_lengths"]))
    out: dict[str, Any] = {"frames": int(ex["feat_lengths"][0]), "per_forward": total}
    moes = [m for m in model.modules() if isinstance(m, MOE_LAYERS)]
    if moes:
        tokens = int(subsampled_lengths(ex["feat_lengths"])[0])
        e, k = moes[0].experts, moes[0].top_k
        rows = padded_rows(tokens, e, k, block_size(tokens, e, k))  # an eager forward's
        padded = sum(4 * rows * m.embed * m.hidden for m in moes)
        out.update(per_forward_unpadded=total - padded + sum(m.ideal_flops(tokens)
                                                             for m in moes),
                   expert_rows_run=rows, expert_rows_needed=tokens * moes[0].top_k)
    return out


def part_moe(args, steps: int, task, data, test, utts) -> dict[str, Any]:
    spaces = {"dense_s": space_for(MOE_BLOCKS, FFN), "moe_s": space_for(MOE_BLOCKS, FFN, MOE)}
    moe_params = params(build(spaces["moe_s"]))
    width_l, params_l = matched_ffn(moe_params)
    spaces["dense_l"] = space_for(MOE_BLOCKS, width_l)
    print(f"\nmoe: Dense-L ffn {width_l} ({params_l:,} parameters against MoE-S's "
          f"{moe_params:,})", flush=True)
    info = {n: {"arch": sp.largest().to_dict(), "model": dict(sp.model),
                "params": params(m := build(sp)), "flops": flops(m, task)}
            for n, sp in spaces.items()}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in MODELS}
    loads, keep = [], {}
    for seed in range(args.seeds):
        for name in MODELS:
            torch.manual_seed(seed)
            model = build(spaces[name])
            res = train(model, task, data, seed, steps)
            with torch.no_grad():
                res["wer"] = task.evaluate(model, test)["wer"]
            runs[name].append(res)
            print(f"moe seed {seed} {name}: test WER {res['wer']:.4f}; "
                  f"{res['s_per_step']:.3f} s/step", flush=True)
            if name == "moe_s":
                loads.append({"seed": seed, "layers": measure_expert_load(model, task, test)})
            keep.setdefault(name, model)  # seed 0's
    wer = {n: summarize([r["wer"] for r in runs[n]]) for n in MODELS}
    rtf = rtf_rounds({n: over(keep[n], utts) for n in MODELS}, utts, args.pairs,
                     [("dense_s", "moe_s"), ("dense_s", "dense_l"), ("dense_l", "moe_s")])
    load_summary = {
        layer: {"entropy": summarize([s["layers"][layer]["entropy"] for s in loads]),
                "max_entropy": v["max_entropy"],
                "min_share": summarize([min(s["layers"][layer]["share"]) for s in loads])}
        for layer, v in loads[0]["layers"].items()}
    zero = [{"seed": s["seed"], "layer": layer, "expert": e}
            for s in loads for layer, v in s["layers"].items()
            for e, share in enumerate(v["share"]) if share == 0]
    min_share = min(min(v["share"]) for s in loads for v in s["layers"].values())

    print(f"moe: seeds 0-{args.seeds - 1}, {steps} steps, noise {args.noise} (median "
          "[min-max]; MFLOPs: MoE unpadded in brackets)")
    print(f"  {'model':<9}{'params':>11}{'MFLOPs/96 frames':>18}  {'test WER':<28}RTF")
    for n in MODELS:
        f = info[n]["flops"]
        mf = f"{f['per_forward'] / 1e6:.1f}" + (f" ({f['per_forward_unpadded'] / 1e6:.1f})"
                                                if "per_forward_unpadded" in f else "")
        print(f"  {n:<9}{info[n]['params']:>11,}{mf:>18}  {fmt(wer[n], ''):<28}"
              f"{fmt(rtf['summary'][n], '')}")
    print_rtf(rtf, args.pairs)
    print(f"  MoE-S expert load, test split, per seed: entropy (of ln {MOE['experts']} = "
          f"{math.log(MOE['experts']):.3f}) / smallest share")
    for layer in load_summary:
        print(f"    {layer:<13}" + "   ".join(
            f"seed {s['seed']} {s['layers'][layer]['entropy']:.3f} / "
            f"{min(s['layers'][layer]['share']):.3f}" for s in loads))
    med = {n: wer[n]["median"] for n in MODELS}
    r_s, r_l = rtf["ratios"]["moe_s_over_dense_s"], rtf["ratios"]["moe_s_over_dense_l"]
    d_l, d_s = med["moe_s"] - med["dense_l"], med["moe_s"] - med["dense_s"]
    goals = {
        "wer": {"goal": "median WER(MoE-S) closer to Dense-L's than to Dense-S's",
                "moe_minus_dense_l": d_l, "moe_minus_dense_s": d_s, "met": abs(d_l) < abs(d_s)},
        "rtf_vs_dense_s": {"goal": f"median MoE-S / Dense-S RTF <= {RTF_GOAL}", **r_s,
                           "met": r_s["median"] <= RTF_GOAL},
        "rtf_vs_dense_l": {"goal": "every round's MoE-S / Dense-L RTF < 1", **r_l,
                           "met": r_l["max"] < 1},
        "expert_load": {"goal": "no expert at 0 % of a layer's test assignments, any seed",
                        "min_share": min_share, "experts_at_zero": len(zero),
                        "met": min_share > 0}}
    for k, g in goals.items():
        print(f"  goal {k}: {g['goal']}: {verdict(g)}")
    return {"steps": steps, "dense_l_ffn": width_l, "models": info, "runs": runs, "wer": wer,
            "rtf": rtf, "expert_load": loads, "expert_load_summary": load_summary,
            "experts_at_zero": zero, "goals": goals}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("streaming", "moe", "all"), default="all")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"training steps per model and seed (batch {BATCH}); default "
                         + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()))
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--pairs", type=int, default=10, help="timed rounds")
    ap.add_argument("--noise", type=float, default=2.0, help="generated_speech noise std")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = ap.parse_args()
    if args.quick:
        args.steps, args.seeds, args.pairs = QUICK["steps"], QUICK["seeds"], QUICK["pairs"]
    t_start = time.perf_counter()
    torch.set_num_threads(THREADS)
    machine = machine_info(THREADS)
    data_cfg = {"name": "generated_speech", "options": {"noise": args.noise},
                "val_fraction": 0.1, "test_fraction": 0.1}
    task = build_task(space_for(STREAM_BLOCKS, STREAM_FFN))  # the same task for every model
    data = load_task_data(task, data_cfg)
    test = list(make_loader(data.test, 256))
    utts = utterances(data.test, QUICK["utterances"] if args.quick else None)
    print(f"data: {len(data.train)} training / {len(data.val)} validation / {len(data.test)} "
          f"test utterances, noise {args.noise}; timing on {len(utts)} test utterances; "
          f"torch threads {THREADS}", flush=True)
    out: dict[str, Any] = {}
    for part in ("streaming", "moe") if args.part == "all" else (args.part,):
        fn = part_streaming if part == "streaming" else part_moe
        out[part] = fn(args, args.steps or DEFAULT_STEPS[part], task, data, test, utts)
    wall = time.perf_counter() - t_start
    path = write_json(NAME + ("_quick" if args.quick else ""), {
        "machine": machine, "threads": THREADS, "quick": args.quick,
        "settings": {"seeds": list(range(args.seeds)), "batch": BATCH, "optimizer": "AdamW",
                     "lr": LR, "weight_decay": WEIGHT_DECAY, "grad_clip": CLIP,
                     "schedule": "constant", "data": data_cfg, "model": MODEL,
                     "pairs": args.pairs, "timing": "eval, torch.no_grad, batch 1, each "
                     "utterance at its length; one warm-up round, then the variants in turn"},
        **out, "total_wall_s": wall, "loadavg_at_end": list(os.getloadavg())})
    print(f"\nwrote {path}; total {wall:.0f} s")
    print(f"{NAME} (threads={THREADS}, seeds 0-{args.seeds - 1}, noise {args.noise}): "
          + "; ".join(f"{part} {k} {verdict(g)}" for part, o in out.items()
                      for k, g in o["goals"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
