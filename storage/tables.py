"""Write finished output files (datasets, card, plots) atomically on any fsspec URL.

Inputs: a file URL or local path, and a pyarrow table with the name of its schema in
storage.schemas (or text / bytes). Outputs: the file, written to a temporary name in the
same folder and renamed, so a reader never sees half a file. Parquet files carry the
schema name and version in their metadata, as the shard store's files do.
`write_table_chunks` streams a large table into one file chunk by chunk.
"""
from __future__ import annotations

import uuid
from typing import Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from storage.schemas import SCHEMA_VERSION, SCHEMAS, validate_table


def _atomic_write(url: str, write, mode: str) -> str:
    fs, path = fsspec.core.url_to_fs(url)
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}" if parent else f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, mode) as fh:
            write(fh)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
    return url


def write_table(url: str, table: pa.Table, schema_name: str) -> str:
    """Validate `table` against the named schema, then write it as one Parquet file."""
    validate_table(table, schema_name)
    meta = {b"ultrafeedback.schema": schema_name.encode(), b"ultrafeedback.schema_version": SCHEMA_VERSION.encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    return _atomic_write(url, lambda fh: pq.write_table(table, fh, compression="zstd"), "wb")


def write_table_chunks(url: str, chunks: Iterable[pa.Table], schema_name: str) -> int:
    """Write tables one after another into one Parquet file (a row group or more each), so
    a large file is never whole in memory; each chunk is validated. Returns the rows written."""
    schema = SCHEMAS[schema_name]
    meta = {b"ultrafeedback.schema": schema_name.encode(), b"ultrafeedback.schema_version": SCHEMA_VERSION.encode()}
    rows = 0

    def write(fh) -> None:
        nonlocal rows
        with pq.ParquetWriter(fh, schema.with_metadata(meta), compression="zstd") as writer:
            for chunk in chunks:
                validate_table(chunk, schema_name)
                writer.write_table(chunk.replace_schema_metadata(meta))
                rows += chunk.num_rows

    _atomic_write(url, write, "wb")
    return rows


def write_text(url: str, text: str) -> str:
    return _atomic_write(url, lambda fh: fh.write(text.encode("utf-8")), "wb")


def write_bytes(url: str, data: bytes) -> str:
    return _atomic_write(url, lambda fh: fh.write(data), "wb")


def read_table(url: str) -> pa.Table:
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as fh:
        return pq.read_table(fh).replace_schema_metadata(None)
