"""Writing an extracted subnet to disk, loading it back, and checking every format.

An export directory holds:

- ``arch.json``: the space (family and model settings), the arch, and the task's input and
  output names with their dynamic axes;
- ``model.pt``: the static model's ``state_dict`` (load with ``load_subnet``: no supernet);
- ``model.torchscript.pt`` and/or ``model.onnx``: self-contained, no raynas needed;
- ``export.json``: the equivalence checks that were run and their results; for a supernet
  trained with pruning masks (``train.prune``, a ticket), also ``sparsity``: the zeros of
  the subnet's masked conv / linear weights (``zero_weights`` of ``prunable_weights``).
  The tensors are stored dense (zeros included): every format holds the same model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raynas.errors import RaynasError
from raynas.space import Arch, SearchSpace
from raynas.supernets import build_static
from raynas.tasks import Task
from raynas.weights import active_net
from raynas.weights.masks import subnet_sparsity


class ExportCheckError(RaynasError):
    """An exported model's outputs differ from the supernet's for the same arch."""


@dataclass
class ExportResult:
    directory: Path
    arch: Arch
    checks: dict[str, float] = field(default_factory=dict)  # format -> max |diff|
    files: dict[str, str] = field(default_factory=dict)
    sparsity: dict[str, float] | None = None  # pruned supernets only (see subnet_sparsity)


def load_subnet(directory: str | Path) -> nn.Module:
    """Rebuild an exported subnet from ``arch.json`` + ``model.pt`` (eval mode)."""
    directory = Path(directory)
    meta = json.loads((directory / "arch.json").read_text())
    space = SearchSpace.from_dict(meta["space"])
    model = build_static(space, Arch(meta["arch"]))
    model.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
    return model.eval()


def _check(name: str, reference: torch.Tensor, got: torch.Tensor, atol: float,
           checks: dict[str, float]) -> None:
    diff = float((reference - got).abs().max())
    checks[name] = diff
    if not diff <= atol:
        raise ExportCheckError(f"export check failed: {name} output differs from the "
                               f"supernet's by {diff:.3g} (export.atol = {atol})")


def export_subnet(supernet: nn.Module, static: nn.Module, space: SearchSpace, arch: Arch,
                  batch: Mapping[str, torch.Tensor], directory: str | Path,
                  formats: tuple[str, ...] = ("torchscript", "onnx"),
                  atol: float = 1e-4, task: Task | None = None,
                  reference: nn.Module | None = None) -> ExportResult:
    """Save ``static`` (extracted from ``supernet`` set to ``arch``) in every format and
    check each against the supernet's own output on ``batch`` (real samples: a mapping of
    named tensors with at least the task's inputs). Everything runs on the CPU.
    ``reference``: the model every format must match instead of the supernet (a fine-tuned
    subnet's own weights, which the supernet no longer computes).

    The TorchScript and ONNX models take the task's named inputs (``images``; ``tokens``
    and ``lengths``...), with the batch axis, and a time axis where lengths vary, dynamic.
    """
    from raynas.tasks import default_task

    task = task or default_task(space)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result = ExportResult(directory, arch)
    supernet.to("cpu").eval()
    static.to("cpu").eval()
    inputs = tuple(batch[k].cpu() for k in task.input_names)
    with torch.no_grad():
        supernet.set_arch(arch)
        if reference is None:
            expected = supernet(*inputs)
            _check("static", expected, static(*inputs), atol, result.checks)
        else:
            expected = reference.to("cpu").eval()(*inputs)
    result.sparsity = subnet_sparsity(active_net(supernet))

    (directory / "arch.json").write_text(json.dumps(
        {"space": space.to_dict(), "arch": arch.to_dict(), "arch_key": arch.key,
         "task": task.name, "inputs": list(task.input_names), "output": task.output_name,
         "dynamic_axes": task.dynamic_axes()}, indent=2))
    torch.save(static.state_dict(), directory / "model.pt")
    result.files["state_dict"] = "model.pt"
    with torch.no_grad():
        _check("state_dict", expected, load_subnet(directory)(*inputs), atol, result.checks)

    first = tuple(t[:1] for t in inputs)
    if "torchscript" in formats:
        path = directory / "model.torchscript.pt"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(static, first)
        traced.save(str(path))
        with torch.no_grad():
            _check("torchscript", expected, torch.jit.load(str(path))(*inputs), atol,
                   result.checks)
        result.files["torchscript"] = path.name
    if "onnx" in formats:
        path = directory / "model.onnx"
        _export_onnx(static, first, task, path)
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
        (out,) = session.run(None, feed)
        _check("onnx", expected, torch.from_numpy(out), atol, result.checks)
        result.files["onnx"] = path.name
    report = {"arch_key": arch.key, "max_abs_diff": result.checks, "atol": atol,
              "files": result.files, "checked_on": {k: list(t.shape) for k, t in
                                                    zip(task.input_names, inputs)}}
    if result.sparsity is not None:
        report["sparsity"] = result.sparsity
    (directory / "export.json").write_text(json.dumps(report, indent=2))
    return result


def _export_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], task: Task,
                 path: Path) -> None:
    import logging

    # The exporter logs each pass it runs; the check below is what matters.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    dims: dict[str, torch.export.Dim] = {}
    dynamic = {}
    for name, axes in task.dynamic_axes().items():
        # One Dim per axis name: every input's batch axis is the same symbol.
        dynamic[name] = {axis: dims.setdefault(label, torch.export.Dim(label, min=1))
                         for axis, label in axes.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, inputs, dynamo=True, input_names=list(task.input_names),
            output_names=[task.output_name], dynamic_shapes=dynamic, verbose=False,
        )
    program.save(str(path))


def export_metadata(result: ExportResult) -> dict[str, Any]:
    meta = {"directory": str(result.directory), "arch_key": result.arch.key,
            "checks": result.checks, "files": result.files}
    if result.sparsity is not None:
        meta["sparsity"] = result.sparsity
    return meta
