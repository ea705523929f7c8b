"""Measured latency: time the extracted static subnet on the machine it runs on."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn


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


#: Seconds a block of timed calls aims at: short, so that most blocks fit between two
#: interruptions by other work, and long against the timer's own ~0.1 us.
BLOCK_S = 2e-4


@dataclass(frozen=True)
class Timing:
    """One subnet's timing: ``ms`` (the estimator's value), ``windows`` (each window's
    median ms per call, in order) and ``spread`` (slowest window over the fastest, minus 1:
    0.0 for a steady machine; other work on its cores shows here first)."""

    ms: float
    windows: tuple[float, ...]

    @property
    def spread(self) -> float:
        return max(self.windows) / min(self.windows) - 1.0


@dataclass
class MeasuredLatency:
    """Wall-clock latency in ms of a static model, after warm-up, on ``target``.

    The timing protocol: ``min_run_time_s`` is split into ``windows`` short windows; each
    runs blocks of calls (as many calls as make a block last ``BLOCK_S``, at least one)
    until its share of the time is spent. Other work on the machine only ever adds time to
    a block it interrupts, so ``estimator: min`` (the default) reports the fastest block's
    time per call: the subnet's own time, as long as one block ran undisturbed.
    ``median`` reports the median over the windows of each window's median block (a
    single window's median with ``windows: 1``). ``measure_many`` times several models in
    interleaved windows (window 1 of each, then window 2 of each...), so a burst of other
    work lands on all of them alike.

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
    windows: int = 5
    estimator: str = "min"
    _inputs: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, cfg) -> MeasuredLatency:
        """The meter of a ``LatencyConfig`` (the job's target, or one of latency.targets)."""
        return cls(cfg.target, cfg.batch_size, cfg.threads, cfg.min_run_time_s,
                   device=cfg.device, windows=cfg.windows, estimator=cfg.estimator)

    def longer(self, run_time_s: float | None) -> MeasuredLatency:
        """This meter timing each model for ``run_time_s`` over twice its windows (the
        confirmation pass's), or itself for None."""
        if run_time_s is None:
            return self
        return replace(self, min_run_time_s=run_time_s, windows=2 * self.windows)

    def example(self, input_shape: tuple[int, ...]) -> torch.Tensor:
        """A seeded random batch of one input of ``input_shape`` (per-op lookup tables)."""
        if input_shape not in self._inputs:
            g = torch.Generator().manual_seed(0)
            self._inputs[input_shape] = torch.randn(self.batch_size, *input_shape, generator=g)
        return self._inputs[input_shape]

    def measure_ms(self, model: nn.Module, example: Example) -> float:
        """Time ``model`` on ``example``: one input's shape (without the batch dim), or the
        model's input tensors (the task's example inputs at ``batch_size``).

        A model with a method ``timed_forward(*inputs)`` is timed through it instead of
        ``forward`` (``transformer_mt``: the encoder once, then the decoder step by step with
        its cache, as HAT measures translation latency)."""
        return self.measure(model, example).ms

    def measure(self, model: nn.Module, example: Example) -> Timing:
        """``measure_ms`` with the windows it was estimated from."""
        return self.measure_many([model], [example])[0]

    def measure_many(self, models: Sequence[nn.Module], examples: Sequence[Example]
                     ) -> list[Timing]:
        """Each model on its example, their windows interleaved."""
        device = torch.device(self.device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        window_s = self.min_run_time_s / self.windows
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        # Timing moves each model (in place); it goes back where it was, so a caller's next
        # step on its own device (FLOPs on the CPU, say) still finds it there.
        homes = [next((t.device for t in (*m.parameters(), *m.buffers())), device)
                 for m in models]
        try:
            with torch.inference_mode():
                runs = []
                for model, example in zip(models, examples):
                    inputs = ((self.example(example),) if all(isinstance(d, int)
                                                              for d in example)
                              else tuple(example))
                    inputs = tuple(t.to(device) for t in inputs)
                    model = model.eval().to(device)
                    run = getattr(model, "timed_forward", model)
                    for _ in range(self.warmup):
                        run(*inputs)
                    sync()
                    first = _block(run, inputs, sync, 1)
                    runs.append((run, inputs, max(1, int(BLOCK_S / max(first, 1e-9)))))
                medians: list[list[float]] = [[] for _ in runs]
                fastest = [math.inf for _ in runs]
                for _ in range(self.windows):
                    for i, (run, inputs, calls) in enumerate(runs):
                        blocks = _window(run, inputs, sync, calls, window_s)
                        medians[i].append(statistics.median(blocks) * 1e3)
                        fastest[i] = min(fastest[i], min(blocks) * 1e3)
        finally:
            torch.set_num_threads(previous)
            for model, home in zip(models, homes):
                model.to(home)
        return [Timing(float(low if self.estimator == "min" else statistics.median(w)),
                       tuple(w)) for low, w in zip(fastest, medians)]


def _block(run, inputs: tuple, sync, calls: int) -> float:
    """Seconds per call over one block of ``calls`` calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        run(*inputs)
        sync()
    return (time.perf_counter() - t0) / calls


def _window(run, inputs: tuple, sync, calls: int, window_s: float) -> list[float]:
    """Seconds per call of each block run within one window (at least one block)."""
    times, spent = [], 0.0
    while not times or spent < window_s:
        times.append(_block(run, inputs, sync, calls))
        spent += times[-1] * calls
    return times
