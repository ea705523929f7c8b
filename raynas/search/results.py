"""Evaluation records as Parquet tables: one row per subnet, one column per space dimension.

Columns: ``arch_key``, ``arch`` (canonical JSON), one column per dimension (per-layer values
as JSON lists), then the metrics (``accuracy``, ``test_accuracy``, ``latency_ms``,
``latency_target``, ``flops``, ``params``, ...).

A table that grows while a search runs (``evaluations.parquet``) grows by appended parts:
each batch of records is one Parquet file in ``<stem>.parts/`` (``evaluations.parts/``),
named by its first row, so a batch costs the same at the 100th subnet as at the 5,000th.
The table's rows are the file's, then the parts' in order (``read_records`` reads both);
``write_records`` writes the whole table as one file and removes the parts.
"""

from __future__ import annotations

import json
import os
import shutil
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


def parts_dir(path: str | Path) -> Path:
    """Where the table at ``path`` keeps its appended parts."""
    path = Path(path)
    return path.with_name(f"{path.stem}.parts")


def _write(path: Path, records: Sequence[dict[str, Any]], space: SearchSpace) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(records_to_table(records, space), tmp)
    os.replace(tmp, path)  # readers never see half a file
    return path


def write_records(path: str | Path, records: Sequence[dict[str, Any]],
                  space: SearchSpace) -> Path:
    """The whole table as one file at ``path``; appended parts, if any, are removed (after:
    a reader in between finds each row twice and keeps it once)."""
    path = _write(Path(path), records, space)
    shutil.rmtree(parts_dir(path), ignore_errors=True)
    return path


def append_records(path: str | Path, records: Sequence[dict[str, Any]], space: SearchSpace,
                   first_row: int) -> Path:
    """Append ``records`` (rows ``first_row`` on) to the table at ``path`` as one part."""
    return _write(parts_dir(path) / f"{first_row:09d}.parquet", records, space)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records back from a table written by ``write_records`` and grown by
    ``append_records`` (``arch`` as a dict), each subnet once.

    Each file is read through one handle: a running search replaces files (``os.replace``),
    and reading one by name could take its footer from one version and its pages from the
    next."""
    path = Path(path)
    files = [path] if path.is_file() or not parts_dir(path).is_dir() else []
    files += sorted(parts_dir(path).glob("*.parquet"))
    out, seen = [], set()
    for file in files:
        try:
            with open(file, "rb") as f:
                table = pq.read_table(f)
        except FileNotFoundError:
            if file == path:
                raise
            continue  # a part removed by a finishing search: the file now holds its rows
        for row in table.to_pylist():
            if row["arch_key"] in seen:
                continue
            seen.add(row["arch_key"])
            arch = json.loads(row["arch"])
            record = {k: v for k, v in row.items() if k not in arch}
            record["arch"] = arch
            out.append(record)
    return out
