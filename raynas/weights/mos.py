"""Mixture-of-Supernets (Jawahar et al., ACL Findings 2024): arch-routed expert weights.

Each routed elastic op keeps E full-size experts of its weight (and bias): expert 0 is the
op's own parameter, experts 1..E-1 are drawn independently from the same distribution. A
router per op, ``Linear(enc, hidden) -> ReLU -> Dropout -> Linear(hidden, ...)``, maps the
normalised arch encoding (``SearchSpace.encode``, the same vector for every op) to mixing
weights; the mixed full-size tensor is then front-sliced by the op as under ``shared``:

- ``mos_layer``: one softmax over the E experts per op (the paper's layer-wise MoS).
- ``mos_neuron``: one softmax per output neuron (row ``j`` of the weight and bias), from the
  router's outputs ``[j E, (j + 1) E)``. Computing all rows and slicing after is the same as
  the paper's front-sliced last router layer: a neuron's weights depend only on its own
  logits, so routing stays nested across widths.

Readings chosen where the paper's code differs from a per-op seam: the paper shares one
layer-wise router between a transformer layer's fc1 and fc2; here every op has its own
router (``layers`` picks the ops; the paper routes the FFN only, e.g. ``["*mlp*"]``). With
E = 1 the mixture is exactly ``shared``. Export reads the mixed tensors through the op's
``active_state()``, so the static subnet holds plain weights and no router.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

import torch
from torch import nn

from raynas.errors import ConfigError
from raynas.nn import (
    ElasticConv1d,
    ElasticConv2d,
    ElasticDepthwiseConv2d,
    ElasticLinear,
    ElasticModule,
)
from raynas.space import Arch, SearchSpace
from raynas.weights import WEIGHT_SCHEMES, SchemeSupernet

# Ops whose weight (and bias) can be routed: their rows are output neurons.
ROUTABLE = (ElasticLinear, ElasticConv1d, ElasticConv2d, ElasticDepthwiseConv2d)


class ExpertMixer(nn.Module):
    """The weight provider of one op: its extra experts and its router.

    ``code`` (a non-persistent buffer) holds the arch encoding the owner last set."""

    def __init__(self, op: ElasticModule, encoding_size: int, experts: int, per_neuron: bool,
                 hidden: int, dropout: float):
        super().__init__()
        self.names = [n for n in ("weight", "bias") if getattr(op, n, None) is not None]
        self.experts, self.per_neuron = experts, per_neuron
        self.rows = op.weight.shape[0]
        self.extra = nn.ParameterDict()
        for name in self.names:
            base = getattr(op, name).detach()
            # Independent draws with the op's own init scale (zero-initialised tensors stay 0).
            std = base.std() if base.numel() > 1 else torch.zeros((), device=base.device)
            self.extra[name] = nn.Parameter(
                torch.randn(experts - 1, *base.shape, device=base.device) * std)
        out = experts * self.rows if per_neuron else experts
        self.router = nn.Sequential(nn.Linear(encoding_size, hidden), nn.ReLU(),
                                    nn.Dropout(dropout), nn.Linear(hidden, out))
        self.register_buffer("code", torch.zeros(1, encoding_size), persistent=False)

    def alphas(self) -> torch.Tensor:
        """Mixing weights: (E,) layer-wise, (rows, E) neuron-wise; each softmax sums to 1."""
        logits = self.router(self.code)
        if self.per_neuron:
            return logits.view(self.rows, self.experts).softmax(-1)
        return logits.view(self.experts).softmax(-1)

    def forward(self, op: ElasticModule, name: str) -> torch.Tensor | None:
        own = op._parameters[name]
        if name not in self.extra:
            return own
        stack = torch.cat([own.unsqueeze(0), self.extra[name]])  # (E, *shape)
        alpha = self.alphas()
        if self.per_neuron:  # (rows, E) -> (E, rows, 1, ...)
            alpha = alpha.t().reshape(self.experts, self.rows, *[1] * (own.dim() - 1))
        else:
            alpha = alpha.view(self.experts, *[1] * own.dim())
        return (alpha * stack).sum(0)


class MixtureOfSupernets(SchemeSupernet):
    """The family's supernet with an ``ExpertMixer`` installed on each routed op."""

    def __init__(self, net: nn.Module, space: SearchSpace, experts: int, per_neuron: bool,
                 layers: Sequence[str], hidden: int, dropout: float):
        super().__init__()
        self.net, self.space = net, space
        routed = [(name, op) for name, op in net.named_modules()
                  if isinstance(op, ROUTABLE) and any(fnmatch.fnmatchcase(name, p)
                                                      for p in layers)]
        if not routed:
            ops = [n for n, m in net.named_modules() if isinstance(m, ROUTABLE)]
            raise ConfigError(
                f"weights.options.layers = {list(layers)!r}: matches none of the "
                f"{space.family} supernet's routable ops ({', '.join(ops[:8])}"
                f"{', ...' if len(ops) > 8 else ''}); patterns are shell-style (fnmatch)")
        self.routed = [name for name, _ in routed]
        for _, op in routed:
            op.weight_provider = ExpertMixer(op, space.encoding_size, experts, per_neuron,
                                             hidden, dropout)

    def set_arch(self, arch: Arch) -> None:
        code = torch.tensor([self.space.encode(arch)], dtype=torch.float32)
        for module in self.net.modules():
            if isinstance(module, ExpertMixer):
                module.code.copy_(code)
        self.net.set_arch(arch)


def _factory(per_neuron: bool) -> Callable[..., MixtureOfSupernets]:
    def create(space: SearchSpace, build: Callable[[], nn.Module], experts: int = 2,
               layers: Sequence[str] = ("*",), hidden: int = 128, dropout: float = 0.1
               ) -> MixtureOfSupernets:
        """``experts``: E >= 1 (1 is plain sharing); ``layers``: shell-style patterns of the
        op names that get experts (default all linear and conv ops); ``hidden``, ``dropout``:
        the router MLP (the paper: 128 and 0.1)."""
        kind = "mos_neuron" if per_neuron else "mos_layer"
        if not isinstance(experts, int) or isinstance(experts, bool) or experts < 1:
            raise ConfigError(f"weights.options.experts = {experts!r}: must be an integer "
                              f">= 1 for {kind}")
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ConfigError(f"weights.options.hidden = {hidden!r}: must be an integer >= 1")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"weights.options.dropout = {dropout!r}: must be in [0, 1)")
        if isinstance(layers, str) or not all(isinstance(p, str) for p in layers):
            raise ConfigError(f"weights.options.layers = {layers!r}: must be a list of "
                              "op-name patterns, e.g. ['*mlp*']")
        return MixtureOfSupernets(build(), space, experts, per_neuron, list(layers), hidden,
                                  float(dropout))
    return create


WEIGHT_SCHEMES.register("mos_layer", _factory(per_neuron=False))
WEIGHT_SCHEMES.register("mos_neuron", _factory(per_neuron=True))
