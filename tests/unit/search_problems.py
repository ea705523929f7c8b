"""Synthetic search problems with known structure, shared by the searcher tests."""

from __future__ import annotations

import random

from raynas.space import SearchSpace


def pattern_problem(n_genes: int = 8):
    """Accuracy: genes matching a hidden pattern; latency: the genes' sum. Random sampling
    rarely gets many matches, so the front it finds is poor; a model of the space can learn
    the pattern. Returns ``(space, objective)``."""
    space = SearchSpace.from_dict({"name": "pattern", "dims": {
        f"g{i}": {"type": "choice", "values": [0, 1, 2, 3]} for i in range(n_genes)}})
    rng = random.Random(7)
    target = [rng.randrange(4) for _ in range(n_genes)]

    def objective(arch):
        genes = [arch[f"g{i}"] for i in range(n_genes)]
        return {"accuracy": sum(g == t for g, t in zip(genes, target)) / n_genes,
                "latency_ms": 1 + sum(genes) / n_genes}

    return space, objective
