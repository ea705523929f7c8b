"""Writing an extracted subnet to disk, loading it back, and checking every format.

An export directory holds:

- ``arch.json``: the space (family and model settings) and the arch;
- ``model.pt``: the static model's ``state_dict`` (load with ``load_subnet``: no supernet);
- ``model.torchscript.pt`` and/or ``model.onnx``: self-contained, no raynas needed;
- ``export.json``: the equivalence checks that were run and their results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raynas.errors import RaynasError
from raynas.space import Arch, SearchSpace
from raynas.supernets import build_static


class ExportCheckError(RaynasError):
    """An exported model's outputs differ from the supernet's for the same arch."""


@dataclass
class ExportResult:
    directory: Path
    arch: Arch
    checks: dict[str, float] = field(default_factory=dict)  # format -> max |diff|
    files: dict[str, str] = field(default_factory=dict)


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
                  inputs: torch.Tensor, directory: str | Path,
                  formats: tuple[str, ...] = ("torchscript", "onnx"),
                  atol: float = 1e-4) -> ExportResult:
    """Save ``static`` (extracted from ``supernet`` set to ``arch``) in every format and
    check each against the supernet's own output on ``inputs``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result = ExportResult(directory, arch)
    supernet.eval()
    static.eval()
    with torch.no_grad():
        supernet.set_arch(arch)
        reference = supernet(inputs)
        _check("static", reference, static(inputs), atol, result.checks)

    (directory / "arch.json").write_text(json.dumps(
        {"space": space.to_dict(), "arch": arch.to_dict(), "arch_key": arch.key}, indent=2))
    torch.save(static.state_dict(), directory / "model.pt")
    result.files["state_dict"] = "model.pt"
    with torch.no_grad():
        _check("state_dict", reference, load_subnet(directory)(inputs), atol, result.checks)

    if "torchscript" in formats:
        path = directory / "model.torchscript.pt"
        with torch.no_grad():
            traced = torch.jit.trace(static, inputs[:1])
        traced.save(str(path))
        with torch.no_grad():
            _check("torchscript", reference, torch.jit.load(str(path))(inputs), atol,
                   result.checks)
        result.files["torchscript"] = path.name
    if "onnx" in formats:
        path = directory / "model.onnx"
        _export_onnx(static, inputs, path)
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
        _check("onnx", reference, torch.from_numpy(out), atol, result.checks)
        result.files["onnx"] = path.name
    (directory / "export.json").write_text(json.dumps(
        {"arch_key": arch.key, "max_abs_diff": result.checks, "atol": atol,
         "files": result.files}, indent=2))
    return result


def _export_onnx(model: nn.Module, inputs: torch.Tensor, path: Path) -> None:
    import logging
    import warnings

    # The exporter logs each pass it runs; the check below is what matters.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (inputs[:1],), dynamo=True, input_names=["input"], output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}, verbose=False,
        )
    program.save(str(path))


def export_metadata(result: ExportResult) -> dict[str, Any]:
    return {"directory": str(result.directory), "arch_key": result.arch.key,
            "checks": result.checks, "files": result.files}
