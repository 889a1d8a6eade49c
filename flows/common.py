"""What the flow modules share that is not about shard tasks (those are in flows/shard_tasks.py).

- `StageResult`: what a stage hands to the next one and to the run summary: the stage's
  finished shard references, the ids whose task failed this time, and its summary (counts
  and totals for the manifest and the dataset card).
- `logger()`: the Prefect run logger inside a run, a plain logger outside one.
- `quiet_expected_errors()`: a log filter that prints bad input as its message, without a
  traceback.
- `rows_by_source(cfg)`: each source's principle source, as generation draws principles.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger

from storage.shards import ShardRef


@dataclass
class StageResult:
    stage: str
    refs: list[ShardRef]
    summary: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # shard ids whose task failed in this run


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # outside a run (unit tests calling .fn)
        return logging.getLogger("ultrafeedback")


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


def rows_by_source(cfg) -> dict[str, str]:
    return {s.name: s.principle_source for s in cfg.sources}
