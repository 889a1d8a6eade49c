"""Reading source files with errors that name the file and the row.

Inputs: a local path or fsspec URL. Outputs: decoded text, parsed JSON/JSONL records,
CSV/TSV rows or Parquet records. Invalid UTF-8, broken JSON and missing columns raise
InputError with the file and the line (or record) where the problem is.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterator

import fsspec

from tasks.errors import InputError

csv.field_size_limit(1 << 27)


def read_bytes(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a file") from None


def read_text(path: str) -> str:
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: invalid UTF-8 at byte {exc.start} ({exc.reason})") from None


def is_json_array(text: str) -> bool:
    return text.lstrip()[:1] == "["


def read_json_records(path: str) -> Iterator[tuple[int, Any]]:
    """(row number, record) from a JSON array or a JSONL file; rows count from 1."""
    text = read_text(path)
    if not text.strip():
        raise InputError(f"{path}: file is empty")
    if is_json_array(text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
        for i, rec in enumerate(data, 1):
            yield i, rec
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {lineno}: invalid JSON: {exc.msg}") from None


def read_csv_dicts(path: str, required: list[str], delimiter: str = ",") -> Iterator[tuple[int, dict]]:
    """(line number, row dict) of a CSV with a header; checks required columns first."""
    text = read_text(path)
    if not text.strip():
        raise InputError(f"{path}: file is empty")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"{path}: missing columns {missing}; found {header}")
    for row in reader:
        if None in row:  # more fields than the header
            raise InputError(f"{path}: line {reader.line_num}: {len(header) + len(row[None])} fields, header has {len(header)}")
        yield reader.line_num, row


def read_tsv_rows(path: str, n_fields: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a headerless TSV whose rows have exactly n_fields."""
    text = read_text(path)
    if not text.strip():
        raise InputError(f"{path}: file is empty")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != n_fields:
            raise InputError(f"{path}: line {lineno}: {len(fields)} tab-separated fields, expected {n_fields}")
        yield lineno, fields


def read_parquet_records(path: str, required: list[str]) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        with fsspec.open(path, "rb") as fh:
            table = pq.read_table(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing columns {missing}; found {table.column_names}")
    for i, rec in enumerate(table.to_pylist(), 1):
        yield i, rec


def read_tabular(path: str, required: list[str]) -> Iterator[tuple[int, dict]]:
    """Generic JSONL/JSON, CSV/TSV or Parquet records by file extension."""
    lower = path.lower()
    if lower.endswith(".parquet"):
        yield from read_parquet_records(path, required)
    elif lower.endswith((".csv", ".tsv")):
        yield from read_csv_dicts(path, required, "\t" if lower.endswith(".tsv") else ",")
    else:
        for row, rec in read_json_records(path):
            if not isinstance(rec, dict):
                raise InputError(f"{path}: row {row}: expected a JSON object, got {type(rec).__name__}")
            missing = [c for c in required if c not in rec]
            if missing:
                raise InputError(f"{path}: row {row}: missing keys {missing}")
            yield row, rec
