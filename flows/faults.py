"""Fault injection for tests and drills: make chosen shard tasks fail on purpose.

Input: the `UF_FAIL_SHARDS` environment variable, read when a stage submits its shard
tasks (a worker's job env, the CLI's env, a test's monkeypatch). Output: for each shard
named there, a stand-in task with the original's name that raises `InjectedFault` before
doing any work, on every attempt, so the run records the shard as failed and a retry or a
backfill has something to do. A run without the variable submits exactly its own tasks.

`UF_FAIL_SHARDS="sample:sharegpt-00001,rate:*"`: entries are `stage:shard_id`; `*`
matches every shard of the stage. A typo is an error at the start of the run, before
anything is written.
"""
from __future__ import annotations

import functools
import os

from prefect import Task
from prefect.cache_policies import NO_CACHE

from flows.config import STAGES
from tasks.errors import UltraFeedbackError

FAULT_ENV = "UF_FAIL_SHARDS"


class InjectedFault(UltraFeedbackError):
    """Raised in place of a shard task named in UF_FAIL_SHARDS (a drill, never a real error)."""


def parse_faults(spec: str | None) -> set[tuple[str, str]]:
    """`"sample:a-00001, rate:*"` -> {("sample", "a-00001"), ("rate", "*")}."""
    out = set()
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        stage, sep, shard = item.partition(":")
        if not sep or stage not in STAGES or not shard:
            raise ValueError(f"{FAULT_ENV}: {item!r} is not stage:shard_id with stage in {list(STAGES)}")
        out.add((stage, shard))
    return out


def requested_faults() -> set[tuple[str, str]]:
    """The faults asked for in the environment now (raises ValueError on a malformed spec)."""
    return parse_faults(os.environ.get(FAULT_ENV))


def fault_for(stage: str, shard_id: str, faults: set[tuple[str, str]]) -> InjectedFault | None:
    if (stage, shard_id) in faults or (stage, "*") in faults:
        return InjectedFault(f"{FAULT_ENV} forces {stage}:{shard_id} to fail")
    return None


def failing_stand_in(task: Task, exc: Exception) -> Task:
    """A task with the original's name and signature that raises `exc` and caches nothing."""
    @functools.wraps(task.fn)
    def refuse(*args, **kwargs):
        raise exc

    return Task(fn=refuse, name=task.name, retries=0, cache_policy=NO_CACHE, persist_result=False,
                tags=set(task.tags))
