"""Measured latency: time the extracted static subnet on the machine it runs on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.benchmark import Timer


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example``: 2 per multiply-accumulate of every conv and
    linear layer, as torch's ``FlopCounterMode`` counts them (norms, activations and adds
    are not counted).

    Counted with forward hooks: ``FlopCounterMode`` gives the same numbers (a unit test
    checks it) but its first use imports ``torch._dynamo``, about 2 s in every new evaluator.
    """
    total = 0

    def conv(m: nn.Conv2d, inputs, out) -> None:
        nonlocal total
        kernel = m.kernel_size[0] * m.kernel_size[1]
        total += 2 * out.numel() * (m.in_channels // m.groups) * kernel

    def linear(m: nn.Linear, inputs, out) -> None:
        nonlocal total
        total += 2 * out.numel() * m.in_features

    handles = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total


def count_flops_reference(model: nn.Module, example: torch.Tensor) -> int:
    """The same count by torch's ``FlopCounterMode`` (slow first call; for checks)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops())


@dataclass
class MeasuredLatency:
    """Median wall-clock latency in ms of a static model, after warm-up, on ``target``.

    Threads and batch size are fixed so numbers are comparable; results are cached by Arch
    key by the caller (the evaluator), since a subnet's latency does not change.
    """

    target: str = "local-cpu"
    batch_size: int = 1
    threads: int = 1
    min_run_time_s: float = 0.02
    warmup: int = 3
    _inputs: dict = field(default_factory=dict, repr=False)

    def example(self, input_shape: tuple[int, ...]) -> torch.Tensor:
        if input_shape not in self._inputs:
            g = torch.Generator().manual_seed(0)
            self._inputs[input_shape] = torch.randn(self.batch_size, *input_shape, generator=g)
        return self._inputs[input_shape]

    def measure_ms(self, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        x = self.example(input_shape)
        model.eval()
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for _ in range(self.warmup):
                    model(x)
                timer = Timer("model(x)", globals={"model": model, "x": x},
                              num_threads=self.threads)
                return timer.blocked_autorange(min_run_time=self.min_run_time_s).median * 1e3
        finally:
            torch.set_num_threads(previous)
