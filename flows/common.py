"""What every stage's Prefect wrapper shares.

Inputs: the run config and the shard store. Outputs: `StageResult` (the stage's shard
references and a summary for the manifest and the dataset card), the cache-key function
that keys a shard task on its precomputed `key` parameter, result storage placement, and
`collect`, which waits for mapped shard tasks and sorts them into written / cached / failed.

Caching has two layers that agree: Prefect's cache (a hit shows as "Cached" in the UI) and
the shard's done marker (which also works without Prefect's records). A Prefect hit whose
shard was deleted since is caught by `collect` and recomputed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prefect import get_run_logger
from prefect.context import TaskRunContext

from storage.shards import ShardRef, ShardStore


@dataclass
class StageResult:
    stage: str
    refs: list[ShardRef]
    summary: dict[str, Any] = field(default_factory=dict)


def key_from_param(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key = the task's name + its `key` parameter (inputs' hashes, config, code)."""
    return f"{context.task.name}:{parameters['key']}"


def result_storage(store: ShardStore) -> Path | None:
    """Keep Prefect's cache records beside a local run (deleted with it); else the default."""
    protocol = store.fs.protocol if isinstance(store.fs.protocol, str) else store.fs.protocol[0]
    return Path(store.base) / ".prefect-results" if protocol in ("file", "local") else None


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # outside a run (unit tests calling .fn)
        return logging.getLogger("ultrafeedback")


def collect(stage: str, store: ShardStore, futures: list, shard_ids: list[str], keys: list[str],
            rerun: Callable[[int], Any]) -> tuple[list[ShardRef], dict]:
    """Wait for shard tasks; recompute Prefect cache hits whose shard no longer exists.

    Returns the finished refs (plan order) and counts {written, kept, cached, failed}.
    A failed shard is recorded with a `.failed` marker and left for a backfill; the
    other shards still complete. A shard whose requests wait in provider batches
    (BatchInFlight) is not failed: it stays pending, counted as `in_flight`, for a later
    run to collect.
    """
    from tasks.errors import BatchInFlight

    from flows.progress import track

    counts = {"written": 0, "kept": 0, "cached": 0, "failed": 0}
    refs: list[ShardRef] = []
    progress = track(stage, len(futures))
    for i, fut in enumerate(futures):
        if i:
            progress.update(counts)
        state = fut.wait() or fut.state
        if state.is_failed() or state.is_crashed():
            counts["failed"] += 1
            try:
                state.result()
            except BatchInFlight:
                counts["failed"] -= 1
                counts["in_flight"] = counts.get("in_flight", 0) + 1
            except Exception as exc:  # the shard's own error, kept for status/backfill
                store.mark_failed(stage, shard_ids[i], f"{type(exc).__name__}: {exc}")
            continue
        out = state.result()
        ref: ShardRef = out["ref"]
        if state.name == "Cached":
            if store.done_with_key(stage, ref.shard_id, keys[i]) is None:
                out = rerun(i)
                ref = out["ref"]
                counts[out["action"]] += 1
            else:
                counts["cached"] += 1
        else:
            counts[out["action"]] += 1
        refs.append(ref)
    progress.finish(counts)
    return refs, counts



class _ExpectedErrorsWithoutTraceback(logging.Filter):
    """Bad input is reported as its message; a traceback would only bury the file and row.
    So is a transient error (a shard handed back for a retry or a backfill): expected, and
    its message says what failed."""

    def filter(self, record: logging.LogRecord) -> bool:
        from tasks.errors import InputError, TransientError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (InputError, TransientError, ValueError)) \
                and type(exc).__module__.startswith(("tasks", "flows", "storage")):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_expected_errors() -> None:
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _ExpectedErrorsWithoutTraceback) for f in lg.filters):
            lg.addFilter(_ExpectedErrorsWithoutTraceback())


def transient_only(task, task_run, state) -> bool:
    """Prefect retry condition: retry a shard only for TransientError (bad input never heals)."""
    from tasks.errors import TransientError

    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False
