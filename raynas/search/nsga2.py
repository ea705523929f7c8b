"""Optuna's NSGA-II sampler with its parents remembered per generation.

Optuna looks a generation's parents up by scanning every trial of the study on each ask, so
an ask costs more the longer the search runs. A generation's parents are finished trials
that never change: kept here for the last two generations, that lookup costs the same
throughout (``benchmarks/search_scale.py``).
"""

from __future__ import annotations

import optuna


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    def get_parent_population(self, study, generation):
        memo = self.__dict__.setdefault("_raynas_parents", {})
        key = (study._study_id, generation)
        if key in memo:
            return memo[key]
        parents = super().get_parent_population(study, generation)
        # Optuna answers a generation's first lookup in selection order and every later one
        # in trial order (the order of its cache): so does this, to ask exactly as it does.
        memo[key] = sorted(parents, key=lambda t: t.number)
        for old in sorted(memo)[:-2]:
            del memo[old]
        return parents
