"""Translation quality of the tiny SuperTransformer: does a trained ``transformer_mt_tiny``
supernet translate into raynas's generated language, and does the arch matter?

For each trained supernet (``raynas train jobs/transformer_mt_tiny.yaml seed=S --output-dir
DIR``, or a ``raynas run`` of it), on the job's own test split (its seed's split, the
tokenizer trained on its training split), through ``raynas.evaluation.Evaluator`` as the
search scores subnets (inherited weights, no retraining): sacrebleu's corpus BLEU of

- the largest subnet, greedy and with beam search (beam 4, length penalty 1.0);
- the smallest subnet, greedy;
- copying the source: each source sentence, decoded by the same tokenizer, as the
  translation (the baseline a model that learned nothing about the mapping would match).

Goal (issue: language families): the largest subnet clearly above the copy baseline and above
the smallest, in every seed. Reported per seed and as median [min-max] over the seeds.

    python benchmarks/translation_bleu.py DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, now_iso, write_json  # noqa: E402


def _copy_bleu(task, batches) -> float:
    import sacrebleu

    hyps, refs = [], []
    for batch in batches:
        for row in batch["src_tokens"].tolist():
            hyps.append(task.tokenizer.decode([t for t in row if t > 5]))
        for row in batch["targets"].tolist():
            refs.append(task.tokenizer.decode([t for t in row if t > 5]))
    return float(sacrebleu.corpus_bleu(hyps, [refs], force=True).score)


def measure(directory: Path) -> dict:
    from raynas.config import load_config
    from raynas.evaluation.actor import evaluator_args
    from raynas.evaluation.evaluator import Evaluator
    from raynas.space import SearchSpace

    cfg = load_config(directory / "config.yaml")
    space = SearchSpace.load(directory / "checkpoint" / "space.yaml")
    evaluator = Evaluator(**evaluator_args(cfg, directory / "checkpoint", space))
    task = evaluator.task
    row = {"dir": str(directory), "seed": cfg.seed}
    for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
        record = evaluator.score(arch, evaluator.prepare(arch))
        row[f"{name}_bleu"] = record["test_bleu"]
        row[f"{name}_token_accuracy"] = record["test_token_accuracy"]
        row[f"{name}_params"] = record["params"]
        if name == "largest":
            task.beam = 4
            row["largest_beam4_bleu"] = task.corpus_bleu(evaluator.prepare(arch),
                                                         evaluator.test_batches)
            task.beam = 1
    row["copy_bleu"] = _copy_bleu(task, evaluator.test_batches)
    row["test_pairs"] = sum(len(b["src_tokens"]) for b in evaluator.test_batches)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="output dirs of trained jobs")
    args = parser.parse_args()
    rows = []
    for d in args.dirs:
        rows.append(measure(d))
        r = rows[-1]
        print(f"seed {r['seed']}: BLEU largest {r['largest_bleu']:.1f} (beam 4 "
              f"{r['largest_beam4_bleu']:.1f}), smallest {r['smallest_bleu']:.1f}, copy "
              f"{r['copy_bleu']:.2f}  ({r['test_pairs']} test pairs)", flush=True)
    keys = ("largest_bleu", "largest_beam4_bleu", "smallest_bleu", "copy_bleu")
    summary = {k: {"median": statistics.median(r[k] for r in rows),
                   "min": min(r[k] for r in rows), "max": max(r[k] for r in rows)}
               for k in keys}
    goals = {"largest_above_copy": all(r["largest_bleu"] > r["copy_bleu"] + 10 for r in rows),
             "largest_above_smallest": all(r["largest_bleu"] > r["smallest_bleu"]
                                           for r in rows)}
    for k, s in summary.items():
        print(f"{k}: {s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]")
    print("goals:", goals)
    write_json("translation_bleu", {"when": now_iso(), "machine": machine_info(),
                                    "runs": rows, "summary": summary, "goals": goals})


if __name__ == "__main__":
    main()
