"""A thread-pool task runner that can hold back or break chosen shard tasks.

Inputs: each task submission (task name + parameters), the `UF_FAIL_SHARDS` environment
variable and the backfill selection (`select_shards`). Output: the usual task futures.

Two uses, both outside the normal path (a run with neither set submits exactly what it is
given, like Prefect's ThreadPoolTaskRunner):

- Fault injection, for tests and drills. `UF_FAIL_SHARDS="sample:sharegpt-00001,rate:*"`
  makes the named shard tasks fail with `InjectedFault` before they do any work, on every
  attempt, so the flow records them as failed and a backfill has something to do. Entries
  are `stage:shard_id`; `*` matches every shard of the stage. The `ultrafeedback` flow only
  installs this runner when the variable is set at import (a worker's job env, the CLI's
  env); in-process tests use `ultrafeedback.with_options(task_runner=ShardGateTaskRunner())`.
- Backfill selection. Inside `select_shards(store, ids, known)`, a shard task of one of the
  run's shards (`known`) that is not finished for its key and is not among `ids` fails at
  once with `ShardNotSelected` instead of running, so a backfill of some shards leaves the
  others undone (their state becomes failed with that reason; a later backfill picks them
  up). Shard ids outside `known`, such as the assemble stage's single output, always run.

A shard task is recognised by its name (`<stage>-...`) and its parameters: a `shard_id`
string, a `ShardRef` or a dict with `shard_id`. Tasks that fit neither (a generation
engine, a planning task) always run.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from dataclasses import dataclass
from typing import Any, Iterator

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import STAGES
from storage.shards import ShardRef, ShardStore
from tasks.errors import UltraFeedbackError

FAULT_ENV = "UF_FAIL_SHARDS"


class InjectedFault(UltraFeedbackError):
    """Raised in place of a shard task named in UF_FAIL_SHARDS (a test hook, never a real error)."""


class ShardNotSelected(UltraFeedbackError):
    """A backfill limited to some shards skipped this unfinished one."""


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


def shard_of(task_name: str, parameters: dict[str, Any]) -> tuple[str, str] | None:
    """(stage, shard_id) of a shard task, None for any other task."""
    stage = task_name.split("-", 1)[0]
    if stage not in STAGES:
        return None
    if isinstance(parameters.get("shard_id"), str):
        return stage, parameters["shard_id"]
    for value in parameters.values():
        if isinstance(value, ShardRef):
            return stage, value.shard_id
        if isinstance(value, dict) and isinstance(value.get("shard_id"), str):
            return stage, value["shard_id"]
    return None


@dataclass(frozen=True)
class _Selection:
    store: ShardStore
    shard_ids: frozenset[str]
    known: frozenset[str]  # the run's instruction shard ids; others (a stage's single output) always run


_SELECTION: contextvars.ContextVar[_Selection | None] = contextvars.ContextVar("uf_shard_selection", default=None)


@contextlib.contextmanager
def select_shards(store: ShardStore, shard_ids: list[str], known: list[str]) -> Iterator[None]:
    """Within this block, unfinished shard tasks of `known` ids outside `shard_ids` are skipped."""
    token = _SELECTION.set(_Selection(store, frozenset(shard_ids), frozenset(known)))
    try:
        yield
    finally:
        _SELECTION.reset(token)


def _stand_in(task: Task, exc: Exception) -> Task:
    """A task with the original's name and signature that raises `exc` and caches nothing."""
    @functools.wraps(task.fn)
    def refuse(*args, **kwargs):
        raise exc

    return Task(fn=refuse, name=task.name, retries=0, cache_policy=NO_CACHE, persist_result=False,
                tags=set(task.tags))


def _verdict(task: Task, parameters: dict[str, Any]) -> Exception | None:
    spec = os.environ.get(FAULT_ENV)
    selection = _SELECTION.get()
    if not spec and selection is None:
        return None
    found = shard_of(task.name, parameters)
    if found is None:
        return None
    stage, shard_id = found
    faults = parse_faults(spec)
    if (stage, shard_id) in faults or (stage, "*") in faults:
        return InjectedFault(f"{FAULT_ENV} forces {stage}:{shard_id} to fail")
    if selection is None or shard_id in selection.shard_ids or shard_id not in selection.known:
        return None
    key = parameters.get("key")
    if isinstance(key, str) and selection.store.done_with_key(stage, shard_id, key) is not None:
        return None  # finished: let it run, it returns its existing shard
    return ShardNotSelected(f"backfill limited to {sorted(selection.shard_ids)}; {stage}:{shard_id} left unfinished")


class ShardGateTaskRunner(ThreadPoolTaskRunner):
    """ThreadPoolTaskRunner + fault injection + backfill selection (see the module docstring)."""

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        exc = _verdict(task, parameters)
        if exc is not None:
            task = _stand_in(task, exc)
        return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)


def default_task_runner() -> ThreadPoolTaskRunner:
    """The `ultrafeedback` flow's runner: the gate only when a fault is asked for at import."""
    if os.environ.get(FAULT_ENV):
        parse_faults(os.environ[FAULT_ENV])  # a typo fails here, not silently at run time
        return ShardGateTaskRunner()
    return ThreadPoolTaskRunner()
