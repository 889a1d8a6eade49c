"""The durable record of provider batches a shard's requests went into.

Inputs: lifecycle events from a batch backend. Outputs: a JSON-lines file beside the
shard's request journal (`<journal>.batches.jsonl`), and `Group`s rebuilt from it.

A group is one batch file's worth of requests. Its events, each appended and fsynced
before the next remote step starts:
- `intent` (group id, round, request ids): written BEFORE the upload and the create; the
  group id goes into the batch's metadata, so a create whose answer was lost (a kill after
  the provider created it) is found again by listing batches instead of creating a second;
- `uploaded` (file id), `created` (batch id);
- `closed` (final status): written only after every answer of the batch was handed to the
  journal, so a kill during download costs one more download, never a second batch.
A line torn by a crash is skipped on reading (the step it recorded is then reconciled).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from storage.keys import stable_hash


def state_path(journal_file: str | os.PathLike) -> Path:
    """Where the batch record of the journal at `journal_file` lives."""
    p = Path(journal_file)
    return p.with_name(p.name.removesuffix(".jsonl") + ".batches.jsonl")


@dataclass
class Group:
    group: str
    round: int
    ids: list[str]
    intent_at: float
    file_id: str | None = None
    batch_id: str | None = None
    created_at: float | None = None
    closed: str | None = None  # final status once every answer is journaled
    info: dict = field(default_factory=dict)  # last status and counts seen (for status listings)

    @property
    def open(self) -> bool:
        return self.closed is None


class BatchState:
    """Append-only event log of one shard's batches (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.groups: dict[str, Group] = {}
        self.torn_lines = 0

    def load(self) -> "BatchState":
        self.groups, self.torn_lines = {}, 0
        if not self.path.exists():
            return self
        with open(self.path, "rb") as fh:
            for raw in fh:
                try:
                    self._apply(json.loads(raw))
                except (ValueError, KeyError, TypeError):
                    self.torn_lines += 1
        return self

    def _apply(self, ev: dict) -> None:
        kind, gid = ev["event"], ev["group"]
        if kind == "intent":
            self.groups[gid] = Group(gid, ev["round"], list(ev["ids"]), ev["t"])
            return
        g = self.groups[gid]
        if kind == "uploaded":
            g.file_id = ev["file_id"]
        elif kind == "created":
            g.batch_id, g.created_at = ev["batch_id"], ev["t"]
        elif kind == "seen":
            g.info = ev["info"]
        elif kind == "closed":
            g.closed, g.info = ev["status"], ev.get("info") or g.info

    def _append(self, ev: dict) -> None:
        ev = {**ev, "t": ev.get("t", time.time())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(ev, separators=(",", ":")) + "\n").encode("utf-8")
        with open(self.path, "ab") as fh:
            if fh.tell() > 0:
                with open(self.path, "rb") as rd:
                    rd.seek(-1, os.SEEK_END)
                    if rd.read(1) != b"\n":
                        fh.write(b"\n")  # never glue a record onto a torn one
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())  # a handful of events per batch: always durable
        self._apply(ev)

    # --- events --------------------------------------------------------------------------
    def intend(self, ids: Iterable[str], round_: int) -> Group:
        ids = list(ids)
        gid = f"ufb-{len(self.groups) + 1:04d}-{stable_hash(sorted(ids), round_, length=12)}"
        self._append({"event": "intent", "group": gid, "round": round_, "ids": ids})
        return self.groups[gid]

    def uploaded(self, g: Group, file_id: str) -> None:
        self._append({"event": "uploaded", "group": g.group, "file_id": file_id})

    def created(self, g: Group, batch_id: str) -> None:
        self._append({"event": "created", "group": g.group, "batch_id": batch_id})

    def seen(self, g: Group, info: dict) -> None:
        if info != g.info:
            self._append({"event": "seen", "group": g.group, "info": info})

    def close(self, g: Group, status: str, info: dict | None = None) -> None:
        self._append({"event": "closed", "group": g.group, "status": status, "info": info or g.info})

    def open_groups(self) -> list[Group]:
        return [g for g in self.groups.values() if g.open]


def in_flight(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Open batches recorded in these state files: id, status, counts, age (for status views)."""
    rows = []
    now = time.time()
    for p in paths:
        st = BatchState(p).load()
        for g in st.open_groups():
            rows.append({"shard": Path(p).name.removesuffix(".batches.jsonl"), "group": g.group,
                         "batch_id": g.batch_id, "status": g.info.get("status", "submitting"),
                         "requests": len(g.ids), "completed": g.info.get("completed"),
                         "failed": g.info.get("failed"), "age_s": round(now - (g.created_at or g.intent_at))})
    return rows
