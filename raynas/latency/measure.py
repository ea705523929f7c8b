"""Measured latency: time the extracted static subnet on the machine it runs on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.benchmark import Timer


def timing_node() -> str:
    """Where a timing runs, for ``latency_node``: the Ray node id of this process when Ray is
    initialised here (driver, evaluator actor or meter actor alike), else the hostname."""
    import sys

    # Only look at Ray if something already imported it: a plain `raynas latency profile`
    # never pays Ray's import for a label.
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    import socket

    return socket.gethostname()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _args(example: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return example if isinstance(example, tuple) else (example,)


def count_flops(model: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass on ``example`` (one input tensor, or the model's inputs):
    2 per multiply-accumulate of every conv and linear layer, plus the activation-by-activation
    matmuls of modules that declare them, as torch's ``FlopCounterMode`` counts them (norms,
    activations, softmax, pooling, adds and lookups are not counted).

    The matmul protocol: a module with a method ``matmul_flops(inputs, output) -> int`` (its
    forward's inputs tuple and output) adds what that returns, e.g. attention's q·kᵀ and
    attn·v (``raynas.nn.SelfAttention``); its own conv/linear submodules are counted as usual.

    Counted with forward hooks: ``FlopCounterMode`` gives the same numbers (a unit test
    checks it) but its first use imports ``torch._dynamo``, about 2 s in every new evaluator.
    """
    total = 0

    def conv(m: nn.Conv1d | nn.Conv2d, inputs, out) -> None:
        nonlocal total
        kernel = 1
        for k in m.kernel_size:
            kernel *= k
        total += 2 * out.numel() * (m.in_channels // m.groups) * kernel

    def linear(m: nn.Linear, inputs, out) -> None:
        nonlocal total
        total += 2 * out.numel() * m.in_features

    def matmuls(m: nn.Module, inputs, out) -> None:
        nonlocal total
        total += int(m.matmul_flops(inputs, out))

    convs = (nn.Conv1d, nn.Conv2d)
    handles = []
    for m in model.modules():
        if isinstance(m, (*convs, nn.Linear)):
            handles.append(m.register_forward_hook(conv if isinstance(m, convs) else linear))
        if callable(getattr(m, "matmul_flops", None)):
            handles.append(m.register_forward_hook(matmuls))
    try:
        with torch.no_grad():
            model(*_args(example))
    finally:
        for h in handles:
            h.remove()
    return total


def count_flops_reference(model: nn.Module,
                          example: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """The same count by torch's ``FlopCounterMode`` (slow first call; for checks)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*_args(example))
    return int(counter.get_total_flops())


Example = tuple[int, ...] | tuple[torch.Tensor, ...]


@dataclass
class MeasuredLatency:
    """Median wall-clock latency in ms of a static model, after warm-up, on ``target``.

    Threads, batch size and inputs are fixed so numbers are comparable; results are cached by
    Arch key by the caller (the evaluator), since a subnet's latency does not change. On a
    CUDA ``device`` every timed call ends with a synchronisation, so the time is the
    kernels', not the launch's.
    """

    target: str = "local-cpu"
    batch_size: int = 1
    threads: int = 1
    min_run_time_s: float = 0.02
    warmup: int = 3
    device: str = "cpu"
    _inputs: dict = field(default_factory=dict, repr=False)

    def example(self, input_shape: tuple[int, ...]) -> torch.Tensor:
        """A seeded random batch of one input of ``input_shape`` (per-op lookup tables)."""
        if input_shape not in self._inputs:
            g = torch.Generator().manual_seed(0)
            self._inputs[input_shape] = torch.randn(self.batch_size, *input_shape, generator=g)
        return self._inputs[input_shape]

    def measure_ms(self, model: nn.Module, example: Example) -> float:
        """Time ``model`` on ``example``: one input's shape (without the batch dim), or the
        model's input tensors (the task's example inputs at ``batch_size``).

        The timing protocol: a model with a method ``timed_forward(*inputs)`` is timed
        through it instead of ``forward`` (``transformer_mt``: the encoder once, then the
        decoder step by step with its cache, as HAT measures translation latency)."""
        inputs = ((self.example(example),) if all(isinstance(d, int) for d in example)
                  else tuple(example))
        device = torch.device(self.device)
        # Timing moves the model (in place); it goes back where it was, so a caller's next
        # step on its own device (FLOPs on the CPU, say) still finds it there.
        home = next((t.device for t in (*model.parameters(), *model.buffers())), device)
        model = model.eval().to(device)
        run = getattr(model, "timed_forward", model)
        inputs = tuple(t.to(device) for t in inputs)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for _ in range(self.warmup):
                    run(*inputs)
                sync()
                stmt = "run(*x); sync()" if device.type == "cuda" else "run(*x)"
                timer = Timer(stmt, globals={"run": run, "x": inputs, "sync": sync},
                              num_threads=self.threads)
                return timer.blocked_autorange(min_run_time=self.min_run_time_s).median * 1e3
        finally:
            torch.set_num_threads(previous)
            model.to(home)
