"""Training diagnostics that cost something, so they are off unless a job asks for them."""

from __future__ import annotations

import torch
from torch import nn


class GradientCosine:
    """``train.grad_cosine``: the cosine similarity of consecutive optimizer steps' gradients
    (ElasticViT's gradient-conflict measure), as a hook after every step.

    The gradient of a step is every trainable parameter's ``.grad`` flattened into one vector
    (zeros where a parameter got none): what the optimizer applied, i.e. summed over the
    step's subnets, averaged over the workers and clipped. It keeps one copy of the previous
    step's gradient; the first step has no previous one and adds no value. ``metrics()``
    gives the mean over the steps since the last call, as ``grad_cosine``.
    """

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self._previous: torch.Tensor | None = None
        self._sum, self._n = 0.0, 0

    def flat(self) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                          .detach().reshape(-1).to(torch.float64) for p in self.params])

    def __call__(self, step: int, losses: dict[str, float]) -> None:
        g = self.flat()
        if self._previous is not None:
            cos = torch.nn.functional.cosine_similarity(g, self._previous, dim=0, eps=1e-30)
            self._sum += float(cos)
            self._n += 1
        self._previous = g

    def metrics(self) -> dict[str, float]:
        if not self._n:
            return {}
        out = {"grad_cosine": self._sum / self._n}
        self._sum, self._n = 0.0, 0
        return out
