"""Parquet shard store on a local folder or any fsspec URL.

Inputs: an output root (`runs/demo`, `s3://bucket/run`, `memory://x`), pyarrow tables.
Outputs: `{root}/{stage}/{shard_id}.parquet` plus a `{shard_id}.done.json` marker written
last, `{stage}/_plan.json` (the shards a stage is expected to produce) and
`{shard_id}.failed.json` for shards whose task gave up. Tasks pass `ShardRef`s around,
never rows.

A shard is written to a temporary name and renamed, so a reader never sees half a file;
the marker follows the rename, so a shard without a marker is incomplete by definition.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from storage.schemas import SCHEMA_VERSION, validate_table


@dataclass(frozen=True)
class ShardRef:
    """Small, picklable reference to one finished shard."""

    stage: str
    shard_id: str
    path: str
    rows: int
    sha256: str  # content hash of the table (schema + values)
    key: str  # cache key of the inputs that produced it

    def to_dict(self) -> dict:
        return asdict(self)


def _canonical(t: pa.DataType) -> pa.DataType:
    """The type with every list's child field named "element", as Parquet reads it back."""
    if pa.types.is_list(t):
        return pa.list_(pa.field("element", _canonical(t.value_type), t.value_field.nullable))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _canonical(f.type), f.nullable) for f in t])
    return t


def table_hash(table: pa.Table) -> str:
    """Content hash of a table: stable for equal schema and values."""
    # A list's child field is "item" in a table built in memory and "element" once read
    # back from Parquet; the name is not content, so both hash as "element" (and a marker's
    # hash can be checked against its file).
    schema = pa.schema([pa.field(f.name, _canonical(f.type), f.nullable) for f in table.schema])
    if any(str(a.type) != str(b.type) for a, b in zip(schema, table.schema)):
        table = table.cast(schema)
    # IPC of a slice can carry the parent's unused child buffers; `take` makes the
    # buffers canonical so equal rows hash equal wherever they were sliced from.
    table = table.take(pa.array(range(table.num_rows), type=pa.int64()))
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()


class ShardStore:
    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.root)

    # -- paths -----------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def shard_path(self, stage: str, shard_id: str) -> str:
        return self._p(stage, f"{shard_id}.parquet")

    @property
    def protocol(self) -> str:
        """The filesystem's protocol ("file", "s3", "memory", ...)."""
        return self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]

    def is_local(self) -> bool:
        """True when the store is a folder on this machine (its paths are OS paths)."""
        return self.protocol in ("file", "local")

    def log_dir(self) -> str:
        """Where engine and judge logs go: `{root}/logs` for a local store, else a local temp folder
        (a log is appended line by line, which object stores cannot do)."""
        if self.is_local():
            return os.path.join(self.base, "logs")
        return os.path.join(tempfile.gettempdir(), "ultrafeedback-logs")

    def url(self, path: str) -> str:
        """Full URL of a store path (what a ShardRef records)."""
        return path if self.is_local() else f"{self.protocol}://{path.lstrip('/')}"

    # -- json helpers ------------------------------------------------------------
    def write_json(self, path: str, obj) -> None:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
        self.fs.mv(tmp, path)

    def read_json(self, path: str):
        with self.fs.open(path, "r") as fh:
            return json.load(fh)

    # -- shards ------------------------------------------------------------------
    def write_shard(self, stage: str, shard_id: str, table: pa.Table, schema_name: str, key: str) -> ShardRef:
        validate_table(table, schema_name)
        digest = table_hash(table)
        path = self.shard_path(stage, shard_id)
        self.fs.makedirs(self._p(stage), exist_ok=True)
        tmp = self._p(stage, f".{shard_id}.parquet.tmp-{uuid.uuid4().hex[:8]}")
        meta = {b"ultrafeedback.schema": schema_name.encode(), b"ultrafeedback.schema_version": SCHEMA_VERSION.encode()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        with self.fs.open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
        self.fs.mv(tmp, path)
        self.remove_marker(stage, shard_id, "failed")
        ref = ShardRef(stage, shard_id, self.url(path), table.num_rows, digest, key)
        self.write_json(self._p(stage, f"{shard_id}.done.json"),
                        {**ref.to_dict(), "schema": schema_name, "written_at": time.time()})
        return ref

    def read_shard(self, ref_or_stage, shard_id: str | None = None, columns=None) -> pa.Table:
        if isinstance(ref_or_stage, ShardRef):
            stage, shard_id = ref_or_stage.stage, ref_or_stage.shard_id
        else:
            stage = ref_or_stage
        with self.fs.open(self.shard_path(stage, shard_id), "rb") as fh:
            table = pq.read_table(fh, columns=columns)
        return table.replace_schema_metadata(None)

    def done(self, stage: str, shard_id: str) -> ShardRef | None:
        """The finished shard's reference, or None when it has no valid marker."""
        marker = self._p(stage, f"{shard_id}.done.json")
        if not self.fs.exists(marker) or not self.fs.exists(self.shard_path(stage, shard_id)):
            return None
        data = self.read_json(marker)
        return ShardRef(**{k: data[k] for k in ShardRef.__dataclass_fields__})

    def done_with_key(self, stage: str, shard_id: str, key: str) -> ShardRef | None:
        ref = self.done(stage, shard_id)
        return ref if ref is not None and ref.key == key else None

    def mark_failed(self, stage: str, shard_id: str, error: str) -> None:
        self.write_json(self._p(stage, f"{shard_id}.failed.json"), {"shard_id": shard_id, "error": error, "at": time.time()})

    def remove_marker(self, stage: str, shard_id: str, kind: str) -> None:
        path = self._p(stage, f"{shard_id}.{kind}.json")
        if self.fs.exists(path):
            self.fs.rm(path)

    def invalidate(self, stage: str, shard_id: str) -> None:
        """Forget a shard (its marker goes first, so it is never half-valid)."""
        self.remove_marker(stage, shard_id, "done")

    # -- plans and state ---------------------------------------------------------
    def write_plan(self, stage: str, shards: dict[str, str]) -> None:
        """Record the shards a stage must produce, each with its cache key."""
        self.write_json(self._p(stage, "_plan.json"), {"stage": stage, "shards": shards})

    def plan(self, stage: str) -> dict[str, str]:
        path = self._p(stage, "_plan.json")
        return self.read_json(path)["shards"] if self.fs.exists(path) else {}

    def stages(self) -> list[str]:
        if not self.fs.exists(self.base):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.base, detail=False) if self.fs.exists(f"{p}/_plan.json"))

    def shard_states(self, stage: str) -> dict[str, dict]:
        """Per planned shard: state (done | stale | failed | pending), rows, hash, error."""
        out = {}
        for shard_id, key in sorted(self.plan(stage).items()):
            ref = self.done(stage, shard_id)
            failed = self._p(stage, f"{shard_id}.failed.json")
            if ref is not None and ref.key == key:
                out[shard_id] = {"state": "done", "rows": ref.rows, "sha256": ref.sha256, "path": ref.path}
            elif self.fs.exists(failed):
                out[shard_id] = {"state": "failed", "error": self.read_json(failed).get("error")}
            else:
                out[shard_id] = {"state": "stale" if ref is not None else "pending"}
        return out

    def incomplete(self, stage: str) -> list[str]:
        """Planned shards of a stage that have no finished shard for their current key."""
        return [s for s, st in self.shard_states(stage).items() if st["state"] != "done"]

    def refs(self, stage: str, shard_ids: Iterable[str] | None = None) -> list[ShardRef]:
        ids = sorted(self.plan(stage)) if shard_ids is None else shard_ids
        refs = [self.done(stage, s) for s in ids]
        return [r for r in refs if r is not None]

    # -- manifest ----------------------------------------------------------------
    def write_manifest(self, extra: dict | None = None) -> dict:
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "updated_at": time.time(),
            "stages": {stage: self.shard_states(stage) for stage in self.stages()},
            **(extra or {}),
        }
        self.write_json(self._p("manifest.json"), manifest)
        return manifest

    def read_manifest(self) -> dict | None:
        path = self._p("manifest.json")
        return self.read_json(path) if self.fs.exists(path) else None
