"""Sharded writers for jsonl (optionally gzip) and parquet.

Rows are split into shards of ``rows_per_shard`` named ``part-00000.jsonl`` (``.jsonl.gz``,
``.parquet``) ...; each shard is written atomically (temporary name, fsync, rename), so a reader
never sees half a shard. The writers return the shard paths in order.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

from lmforge.artifacts import atomic_write_bytes
from lmforge.errors import MissingDependency, UserError

FORMATS = ("jsonl", "jsonl.gz", "parquet")


def shard_name(index: int, fmt: str) -> str:
    return f"part-{index:05d}.{fmt}"


def _chunks(rows: Iterable[Any], size: int) -> Iterable[list]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def _jsonl_bytes(rows: list) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _parquet_bytes(rows: list) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependency("pyarrow", "data", "writing parquet") from None
    table = pa.Table.from_pylist(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def encode_rows(rows: list, fmt: str) -> bytes:
    """The bytes of one shard of ``rows`` in ``fmt`` (jsonl, jsonl.gz or parquet)."""
    if fmt == "parquet":
        return _parquet_bytes(rows)
    if fmt == "jsonl.gz":
        return gzip.compress(_jsonl_bytes(rows), mtime=0)
    if fmt == "jsonl":
        return _jsonl_bytes(rows)
    raise UserError(f"unknown output format '{fmt}' (use one of {', '.join(FORMATS)})")


def write_sharded(
    rows: Iterable[Any], folder: str | Path, fmt: str = "jsonl", rows_per_shard: int = 100_000
) -> list[Path]:
    """Write ``rows`` (dicts; strings for jsonl too) as shards in ``folder``; returns their paths.

    Parquet rows must be dicts whose fields have consistent types within a shard.
    No rows writes no shards.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown output format '{fmt}' (use one of {', '.join(FORMATS)})")
    if rows_per_shard < 1:
        raise UserError("rows_per_shard must be at least 1")
    folder = Path(folder)
    paths = []
    for index, chunk in enumerate(_chunks(rows, rows_per_shard)):
        paths.append(atomic_write_bytes(folder / shard_name(index, fmt), encode_rows(chunk, fmt)))
    return paths


def write_jsonl(
    rows: Iterable[Any], folder: str | Path, rows_per_shard: int = 100_000, compress: bool = False
) -> list[Path]:
    return write_sharded(rows, folder, "jsonl.gz" if compress else "jsonl", rows_per_shard)


def write_parquet(rows: Iterable[Any], folder: str | Path, rows_per_shard: int = 100_000):
    return write_sharded(rows, folder, "parquet", rows_per_shard)
