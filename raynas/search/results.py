"""Evaluation records as Parquet tables: one row per subnet, one column per space dimension.

Columns: ``arch_key``, ``arch`` (canonical JSON), one column per dimension (per-layer values
as JSON lists), then the metrics (``accuracy``, ``test_accuracy``, ``latency_ms``,
``latency_target``, ``flops``, ``params``, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raynas.space import Arch, SearchSpace


def records_to_table(records: Sequence[dict[str, Any]], space: SearchSpace) -> pa.Table:
    rows = []
    for r in records:
        arch = Arch(r["arch"])
        row: dict[str, Any] = {"arch_key": arch.key, "arch": arch.to_json()}
        for d in space.dims:
            v = arch[d.name]
            row[d.name] = json.dumps(list(v)) if isinstance(v, tuple) else v
        row.update({k: v for k, v in r.items() if k not in ("arch", "arch_key")})
        rows.append(row)
    # Columns are the union over rows (pyarrow would take the first row's keys alone: a
    # metric only some subnets have, like latency_measured_ms, would vanish).
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])


def write_records(path: str | Path, records: Sequence[dict[str, Any]],
                  space: SearchSpace) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(records_to_table(records, space), tmp)
    os.replace(tmp, path)  # readers never see half a file
    return path


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records back from a table written by ``write_records`` (``arch`` as a dict).

    The file is read through one handle: a running search replaces it (``os.replace``) as
    records arrive, and reading it by name could take its footer from one version and its
    pages from the next."""
    with open(path, "rb") as f:
        table = pq.read_table(f)
    out = []
    for row in table.to_pylist():
        arch = json.loads(row["arch"])
        record = {k: v for k, v in row.items() if k not in arch}
        record["arch"] = arch
        out.append(record)
    return out
