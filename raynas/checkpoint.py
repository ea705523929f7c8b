"""Supernet checkpoints: one directory, ``supernet.pt`` plus a readable ``space.yaml``.

A checkpoint records the space (whole definition and fingerprint), family and weight scheme
(``{name, options}``) it was trained for; loading it for another space or scheme fails with a
clear error. Files hold tensors and plain
Python values only, loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from raynas.errors import CheckpointError
from raynas.space import SearchSpace

FILENAME = "supernet.pt"
FORMAT_VERSION = 1


def save_checkpoint(directory: str | Path, space: SearchSpace, model_state: dict,
                    epoch: int, extra: dict[str, Any] | None = None) -> Path:
    """Write ``supernet.pt`` and ``space.yaml`` into ``directory``; return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION,
        "space": space.to_dict(),
        "fingerprint": space.fingerprint,
        "family": space.family,
        "epoch": epoch,
        "model": model_state,
        **(extra or {}),
    }
    tmp = directory / (FILENAME + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(directory / FILENAME)  # atomic: a crash never leaves half a checkpoint
    (directory / "space.yaml").write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
    return directory


def read_checkpoint_bytes(path: str | Path) -> bytes:
    """The bytes of a checkpoint's ``supernet.pt``: what the evaluator actors receive
    through Ray's object store, so they load it on any node of a cluster."""
    path = Path(path)
    file = path / FILENAME if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r}: no {FILENAME} found there")
    return file.read_bytes()


def load_torch_file(source: Any, what: str) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU; a file that is not a whole torch
    file, or that holds Python objects beyond tensors and plain values (unpickling those could
    run code), is a ``CheckpointError`` that starts with ``what`` ("checkpoint 'x.pt'")."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CheckpointError(
                f"{what} cannot be read: it holds Python objects beyond tensors and plain "
                "values, which raynas does not load (unpickling them could run code)") from None
        reason = _first_line(exc)
    except Exception as exc:  # torch's own messages on a broken file are a KeyError's key...
        reason = _first_line(exc)
    raise CheckpointError(f"{what} cannot be read: not a complete torch file ({reason})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_checkpoint(path: str | Path | bytes, expected: SearchSpace | None = None,
                    weights: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint directory (or its ``supernet.pt``, or that file's bytes).

    With ``expected``, raise ``CheckpointError`` unless the checkpoint was trained for that
    space (same family, model settings and dims); with ``weights``, unless it was trained
    with that weight scheme and options. The result has ``space`` as a SearchSpace and
    ``weights`` as ``{name, options}`` (``shared`` for checkpoints that predate schemes).
    """
    if isinstance(path, bytes):
        source: Any = io.BytesIO(path)
        path = file = Path(f"<{len(source.getbuffer())} bytes of {FILENAME}>")
    else:
        path = Path(path)
        file = path / FILENAME if path.is_dir() else path
        if not file.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r}: no {FILENAME} found there")
        source = file
    payload = load_torch_file(source, f"checkpoint {str(file)!r}")
    if (not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION
            or not {"space", "model", "epoch"} <= payload.keys()):
        raise CheckpointError(f"checkpoint {str(file)!r} is not a raynas supernet checkpoint")
    space = SearchSpace.from_dict(payload["space"], source=str(file))
    if expected is not None and space.fingerprint != expected.fingerprint:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained for space {space.name!r} "
            f"(family {space.family}, fingerprint {space.fingerprint}); this job uses space "
            f"{expected.name!r} (family {expected.family}, fingerprint {expected.fingerprint})"
        )
    payload["space"] = space
    payload["weights"] = scheme_spec(payload.get("weights"))
    if weights is not None and scheme_spec(weights) != payload["weights"]:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained with weights = {_show(payload['weights'])}; "
            f"this job uses weights = {_show(scheme_spec(weights))}: a checkpoint's tensors only "
            "fit the scheme that made them (set the job's weights to match, or train anew)")
    return payload


def scheme_spec(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    if not spec:
        return {"name": "shared", "options": {}}
    return {"name": spec["name"], "options": dict(spec.get("options") or {})}


def _show(spec: Mapping[str, Any]) -> str:
    options = ", ".join(f"{k}: {v!r}" for k, v in sorted(spec["options"].items()))
    return f"{spec['name']!r}" + (f" with options {{{options}}}" if options else "")
