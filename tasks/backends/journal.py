"""A durable request journal, so that no request to a model (judge or hosted generator) is
paid for twice.

Inputs: a local file path per shard, result records from a Backend. Outputs: the file
(JSON lines, one answered result each) and `JournaledBackend`, which wraps any Backend:
requests whose id already has an answer in the journal are answered from it; only the
others reach the wrapped backend, which is not even started when nothing is missing. A
retry, a rerun or a backfill of a shard therefore pays only for requests that never got
an answer, even after a SIGKILL mid-shard.

Durability: each answer is written to the file (one write, flushed to the OS) before
anyone downstream sees it, so a killed process loses no answer it received. fsync, which
only matters if the machine itself goes down, runs at most every `fsync_interval_s`
(0.5 s) and on close: an fsync per answer cost 1-3 ms, which made journaling the largest
cost of a run with a fast judge (half a million answers at full scale).

Only answers (HTTP 200) are journaled; an error is not an answer and is asked again next
time. A line torn by a crash is skipped on reading and never glued to the next record.

Where: `<output>/journal/rate/<shard_id>.jsonl` for a local output root (generation:
`<output>/journal/generate/<model>/<shard_id>.jsonl`). An fsspec remote
root (s3://, gs://, memory://) cannot append and fsync durably, so its journal stays on
local disk: `rating.journal_dir` if set, else a per-root folder in the user cache
(`$XDG_CACHE_HOME` or `~/.cache`, `ultrafeedback/journal/<hash of root>/rate`). A rerun on
another machine then pays again for the answers journaled elsewhere.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from storage.keys import stable_hash
from tasks.backends.base import Backend, BatchRequest, BatchResult


def _dumps(result: BatchResult) -> bytes:
    """One journal line. orjson: about 5x faster than json, half a million answers at full scale."""
    try:
        return orjson.dumps(result)
    except (orjson.JSONEncodeError, TypeError):  # what orjson refuses (NaN is fine, huge ints are not)
        return json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _loads(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # a line json wrote that orjson refuses (NaN); a torn line fails here too


def journal_path(output_root: str, shard_id: str, journal_dir: str | None = None, stage: str = "rate") -> Path:
    """The journal file of one shard (see the module docstring for the rules)."""
    if journal_dir:
        return Path(journal_dir) / f"{shard_id}.jsonl"
    root = output_root[len("file://"):] if output_root.startswith("file://") else output_root
    if "://" not in root:
        return Path(root) / "journal" / stage / f"{shard_id}.jsonl"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ultrafeedback" / "journal" / stable_hash(output_root) / stage / f"{shard_id}.jsonl"


def answered(result: BatchResult) -> bool:
    resp = result.get("response")
    return bool(resp) and resp.get("status_code") == 200 and not result.get("error")


class Journal:
    """Append-only JSONL of answered results, keyed by custom_id (the request id)."""

    def __init__(self, path: str | os.PathLike, fsync_interval_s: float = 0.5):
        self.path = Path(path)
        self.torn_lines = 0
        self.fsync_interval_s = fsync_interval_s
        self._fh = None
        self._synced_at = 0.0

    def load(self) -> dict[str, BatchResult]:
        out: dict[str, BatchResult] = {}
        self.torn_lines = 0
        if not self.path.exists():
            return out
        with open(self.path, "rb") as fh:
            for raw in fh:
                try:
                    rec = _loads(raw)
                    out[rec["custom_id"]] = rec
                except (ValueError, KeyError, TypeError):
                    self.torn_lines += 1  # a write cut short by a crash
        return out

    def open(self) -> "Journal":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")
        if self._fh.tell() > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self._fh.write(b"\n")  # start after a torn last line, never on it
        return self

    def append(self, result: BatchResult) -> None:
        self._fh.write(_dumps(result) + b"\n")
        self._fh.flush()  # in the OS from here on: a killed process cannot lose it
        now = time.monotonic()
        if now - self._synced_at >= self.fsync_interval_s:
            os.fsync(self._fh.fileno())
            self._synced_at = now

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


class JournaledBackend:
    """A Backend that answers from the journal first and journals every new answer.

    The wrapped backend is entered lazily (only if some request is missing) and left on exit.
    Counters: `from_journal`, `sent`, `answered`, `errors`.
    """

    def __init__(self, inner: Backend, journal: Journal):
        self.inner, self.journal = inner, journal
        self.name = f"journaled:{getattr(inner, 'name', type(inner).__name__)}"
        self._answers: dict[str, BatchResult] = {}
        self._inner_open = False
        self.from_journal = self.sent = self.answered = self.errors = 0

    def __enter__(self) -> "JournaledBackend":
        self._answers = self.journal.load()
        self.journal.open()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._inner_open:
                self._inner_open = False
                self.inner.__exit__(*exc)
        finally:
            self.journal.close()

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        pending: dict[str, BatchRequest] = {}
        for req in requests:
            cid = req["custom_id"]
            if cid in self._answers:
                self.from_journal += 1
                yield {**self._answers[cid], "journaled": True}
            elif cid not in pending:
                pending[cid] = req
        if not pending:
            return
        if not self._inner_open:
            self.inner.__enter__()
            self._inner_open = True
        self.sent += len(pending)
        for res in self.inner.run(list(pending.values())):
            if answered(res):
                self.journal.append(res)  # durable before anyone downstream sees it
                self._answers[res["custom_id"]] = res
                self.answered += 1
            else:
                self.errors += 1
            yield res


class JournalSet:
    """Several journals behind one Journal's interface: each answer goes to the journal of
    its request id (generation keeps one per model and instruction shard, so a finished
    part's journal can be read or dropped on its own)."""

    def __init__(self, route: dict[str, Journal]):
        self.route = route
        self.journals = list({id(j): j for j in route.values()}.values())

    @property
    def torn_lines(self) -> int:
        return sum(j.torn_lines for j in self.journals)

    def load(self) -> dict[str, BatchResult]:
        out: dict[str, BatchResult] = {}
        for j in self.journals:
            out.update(j.load())
        return out

    def open(self) -> "JournalSet":
        for j in self.journals:
            j.open()
        return self

    def append(self, result: BatchResult) -> None:
        journal = self.route.get(result["custom_id"])
        if journal is not None:  # an id nobody asked for is not ours to keep
            journal.append(result)

    def close(self) -> None:
        for j in self.journals:
            j.close()
