"""A user's own supernet family, registered through the ``raynas.families`` entry point of
the ``raynas-plugin-mlp`` distribution beside this file (its ``.dist-info``): an elastic MLP
classifier on flattened images. Put this folder on ``PYTHONPATH`` and raynas finds it, in the
driver, the Ray Train workers and the evaluator actors alike."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from raynas.nn import ElasticLinear
from raynas.supernets import Family, register_family


def _features(model):
    return model["in_channels"] * model["image_size"] ** 2


class MLPSupernet(nn.Module):
    def __init__(self, space):
        super().__init__()
        m = space.model
        hidden = max(space.dim("hidden").values)
        self.layers = nn.ModuleList(
            ElasticLinear(_features(m) if j == 0 else hidden, hidden)
            for j in range(space.dim("depth").largest()))
        self.head = ElasticLinear(hidden, m["num_classes"])
        self.set_arch(space.largest())

    def set_arch(self, arch):
        cin = self.layers[0].max_in
        for layer in self.layers:
            layer.configure(cin, arch["hidden"])
            cin = arch["hidden"]
        self.head.configure(arch["hidden"], self.head.max_out)
        self.depth = arch["depth"]

    def forward(self, images):
        x = images.flatten(1)
        for layer in self.layers[: self.depth]:
            x = F.relu(layer(x))
        return self.head(x)


class StaticMLP(nn.Module):
    def __init__(self, model, arch):
        super().__init__()
        h = arch["hidden"]
        self.layers = nn.ModuleList(nn.Linear(_features(model) if j == 0 else h, h)
                                    for j in range(arch["depth"]))
        self.head = nn.Linear(h, model["num_classes"])

    def forward(self, images):
        x = images.flatten(1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


register_family(Family(name="plugin_mlp", supernet=MLPSupernet, static=StaticMLP,
                       tasks=("classification",), dims=lambda model: {"hidden", "depth"}))
