"""Measured latencies as a Parquet table: the cache of ``measured`` and the dataset that
``raynas latency fit`` learns from.

One row per measurement: ``arch_key``, ``arch`` (canonical JSON), ``latency_ms``,
``latency_target``, ``batch_size``, ``threads``, ``torch_version``, ``inputs`` (the example
inputs' shapes, e.g. ``tokens=1x32;lengths=1``), ``flops``, ``params``, ``measured_at`` (unix
time). A latency is only reused for the same (arch key, target, batch size, threads, torch
version, inputs): change any of them and the subnet is measured again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raynas.errors import ConfigError
from raynas.space import Arch

COLUMNS = ("arch_key", "arch", "latency_ms", "latency_target", "batch_size", "threads",
           "torch_version", "inputs", "flops", "params", "measured_at")


def torch_version() -> str:
    import torch

    return str(torch.__version__)


class LatencyTable:
    """Rows of measured latencies, keyed by (arch key, target, batch, threads, torch).

    ``path`` may not exist yet; ``save`` writes atomically (temp file + rename), keeping the
    rows of every setting, not only this one's.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.rows: dict[tuple, dict[str, Any]] = {}
        self.added = 0
        if self.path is not None and self.path.exists():
            for row in read_table(self.path):
                self.rows[_row_key(row)] = row

    def get(self, arch: Arch, target: str, batch_size: int, threads: int,
            inputs: str = "") -> float | None:
        row = self.rows.get((arch.key, target, batch_size, threads, torch_version(), inputs))
        return None if row is None else float(row["latency_ms"])

    def add(self, arch: Arch, latency_ms: float, target: str, batch_size: int, threads: int,
            flops: int | None = None, params: int | None = None,
            inputs: str = "") -> dict[str, Any]:
        row = {"arch_key": arch.key, "arch": arch.to_json(), "latency_ms": float(latency_ms),
               "latency_target": target, "batch_size": int(batch_size), "threads": int(threads),
               "torch_version": torch_version(), "inputs": inputs, "flops": flops,
               "params": params,
               "measured_at": time.time()}
        self.rows[_row_key(row)] = row
        self.added += 1
        return row

    def records(self, target: str | None = None) -> list[dict[str, Any]]:
        """Rows as records (``arch`` as a dict), optionally for one target."""
        out = []
        for row in self.rows.values():
            if target is None or row["latency_target"] == target:
                out.append({**row, "arch": json.loads(row["arch"])})
        return out

    def save(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path else self.path
        if path is None:
            raise ValueError("LatencyTable.save: no path")
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([("arch_key", pa.string()), ("arch", pa.string()),
                            ("latency_ms", pa.float64()), ("latency_target", pa.string()),
                            ("batch_size", pa.int64()), ("threads", pa.int64()),
                            ("torch_version", pa.string()), ("inputs", pa.string()),
                            ("flops", pa.int64()),
                            ("params", pa.int64()), ("measured_at", pa.float64())])
        table = pa.Table.from_pylist(list(self.rows.values()), schema=schema)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    def __len__(self) -> int:
        return len(self.rows)


def _row_key(row: Mapping[str, Any]) -> tuple:
    return (row["arch_key"], row["latency_target"], int(row["batch_size"]), int(row["threads"]),
            row["torch_version"], row.get("inputs") or "")


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a latency table file (``arch`` still JSON). Clear errors for a wrong file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"latency table {path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ConfigError(f"latency table {path}: not a Parquet file ({e})") from None
    missing = [c for c in ("arch_key", "arch", "latency_ms", "latency_target", "batch_size",
                           "threads", "torch_version") if c not in table.column_names]
    if missing:
        raise ConfigError(f"latency table {path}: lacks column(s) {', '.join(missing)}; "
                          f"has {', '.join(table.column_names)}")
    return [{c: row.get(c) for c in COLUMNS} for row in table.to_pylist()]
