"""The one way a stage runs its shard tasks: plan, submit, collect, count, one summary line.

Inputs: the stage name, the shard store, one `ShardJob` per shard the stage must produce
(its id, its cache key and the task's other arguments), the Prefect task that writes one
shard, and optionally `only`, the shard ids a backfill is limited to. Output: a
`ShardOutcome`: the finished shards' references in plan order, the counts (written, kept,
cached, failed, in_flight when provider batches hold a shard's requests, held when `only` is
given), the ids that failed, and each finished
task's returned dict. Along the way: the stage's `_plan.json`, a `.failed` marker per shard
whose task gave up, a progress artifact per stage and one log line.

Every shard task takes a `key` parameter and returns `{"ref": ShardRef, "action": "written"
| "kept", ...}`; it checks the shard's done marker itself, so it is correct when called
alone. Caching has two layers that must agree: Prefect's cache (`key_from_param`, a hit
shows as "Cached" in the UI) and the shard's done marker (which also works without
Prefect's records). A Prefect hit whose shard file was deleted since is submitted again
with `refresh_cache`, so a cache record never stands in for a missing shard.

With `only`, a shard outside it is submitted only when it is already finished for its key
(it returns its shard); an unfinished one is held: not run, left in its state for a later
backfill. Shards named in UF_FAIL_SHARDS are replaced by a failing stand-in (flows/faults.py).

`run_shard_tasks` submits every job at once and collects them. A stage that the next one
runs behind (generate, then rate) uses the parts: `start_shard_tasks` (the plan and an empty
`Submitted`), `Submitted.submit` per job as its inputs finish, a `Collector` that waits for
them in the order they end and calls `on_done` per finished shard, and `StageInFlight`,
what such a stage hands to the next one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from prefect import Task
from prefect.context import TaskRunContext

from flows.common import logger
from flows.faults import failing_stand_in, fault_for, requested_faults
from storage.shards import ShardRef, ShardStore


@dataclass(frozen=True)
class ShardJob:
    shard_id: str
    key: str  # cache key: inputs' hashes, the settings that change the output, code version
    args: dict[str, Any]  # the task's other keyword arguments


@dataclass
class ShardOutcome:
    refs: list[ShardRef]  # finished shards, plan order
    counts: dict[str, int]
    failed: list[str] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)  # shard id -> the task's returned dict
    fresh: set[str] = field(default_factory=set)  # shard ids whose task ran this time (not a cache hit)

    def line(self, stage: str) -> str:
        c = self.counts
        held = f", {c['held']} held back" if c.get("held") else ""
        return (f"{stage}: {sum(c.values())} shards ({c['written']} written, {c['kept']} unchanged, "
                f"{c['cached']} cached, {c['failed']} failed{held})")


@dataclass
class StageInFlight:
    """A stage whose shard tasks are running or about to: the next stage can chain its own
    tasks on them. `collect(on_done)` waits for the stage, calling `on_done(job, output)` as
    each of its shards finishes, and returns the stage's result; `jobs` are the shard jobs it
    will run. Collected once; later calls return the same result."""
    jobs: list[ShardJob]
    run: Callable[[Callable[[ShardJob, dict], None] | None], Any]
    _result: Any = None

    def collect(self, on_done: Callable[[ShardJob, dict], None] | None = None):
        if self._result is None:
            self._result = self.run(on_done)
        return self._result


def settled(stage):
    """A stage's result: collected first if it is still in flight (None stays None)."""
    return stage.collect() if isinstance(stage, StageInFlight) else stage


def key_from_param(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key = the task's name + its `key` parameter (inputs' hashes, config, code)."""
    return f"{context.task.name}:{parameters['key']}"


def result_storage(store: ShardStore) -> Path | None:
    """Keep Prefect's cache records beside a local run (deleted with it); else the default."""
    return Path(store.base) / ".prefect-results" if store.is_local() else None


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


@dataclass
class Submitted:
    """A stage's shard tasks in flight: what `collect_shard_tasks` waits for."""
    stage: str
    store: ShardStore
    task: Task
    faults: dict
    jobs: list[ShardJob] = field(default_factory=list)  # submitted, in submission order
    futures: list = field(default_factory=list)
    held: int | None = None  # jobs `only` left out (None: no `only`)
    order: list[str] = field(default_factory=list)  # the plan's shard ids, in plan order

    def submit(self, job: ShardJob, wait_for: list | None = None, refresh: bool = False):
        """Submit one job (after `wait_for`, Prefect futures that must end first); its future."""
        exc = fault_for(self.stage, job.shard_id, self.faults)
        t = failing_stand_in(self.task, exc) if exc else self.task.with_options(refresh_cache=True) \
            if refresh else self.task
        fut = t.submit(**job.args, key=job.key, wait_for=wait_for or None)
        if not refresh:
            self.jobs.append(job)
            self.futures.append(fut)
        return fut


def chosen_jobs(stage: str, store: ShardStore, jobs: list[ShardJob], only: Iterable[str] | None) -> list[ShardJob]:
    """The jobs to submit: all, or with `only` those chosen plus those finished for their key."""
    if only is None:
        return list(jobs)
    chosen = set(only)
    return [j for j in jobs if j.shard_id in chosen or store.done_with_key(stage, j.shard_id, j.key) is not None]


def start_shard_tasks(stage: str, store: ShardStore, task: Task, plan: dict[str, str]) -> Submitted:
    """Write the stage's plan and an empty `Submitted` to submit jobs into as their inputs finish."""
    store.write_plan(stage, plan)
    return Submitted(stage, store, task.with_options(result_storage=result_storage(store)), requested_faults(),
                     order=list(plan))


def submit_shard_tasks(stage: str, store: ShardStore, jobs: list[ShardJob], task: Task,
                       only: Iterable[str] | None = None,
                       wait_for: Callable[[ShardJob], list] | None = None) -> Submitted:
    """Plan and submit one task per job, all at once (`wait_for(job)`: the futures it waits on)."""
    sub = start_shard_tasks(stage, store, task, {j.shard_id: j.key for j in jobs})
    run = chosen_jobs(stage, store, jobs, only)
    sub.held = None if only is None else len(jobs) - len(run)
    for job in run:  # all at once: the task runner runs them side by side (after their wait_for)
        sub.submit(job, wait_for(job) if wait_for else None)
    return sub


class Collector:
    """Collects a stage's shard tasks into one `ShardOutcome`, a batch at a time as they are
    submitted (`add`), then `finish`es it: plan order, the progress artifact, one log line."""

    def __init__(self, sub: Submitted, total: int):
        from flows.progress import track

        self.sub = sub
        self.outcome = ShardOutcome([], {"written": 0, "kept": 0, "cached": 0, "failed": 0})
        if sub.held is not None:
            self.outcome.counts["held"] = sub.held
        self.progress = track(sub.stage, total)
        self._seen = 0

    def add(self, pairs: list[tuple[ShardJob, Any]], on_done: Callable[[ShardJob, dict], None] | None = None) -> None:
        """Wait for these (job, future) pairs in the order they finish; `on_done(job, output)`
        for each finished shard, so the next stage's task of that shard can start at once."""
        from prefect.futures import as_completed

        job_of = {id(f): j for j, f in pairs}
        for fut in as_completed([f for _, f in pairs]):
            if self._seen:
                self.progress.update(self.outcome.counts)
            self._seen += 1
            job = job_of[id(fut)]
            _collect_one(self.sub.stage, self.sub.store, job, fut, self.outcome,
                         lambda job=job: self.sub.submit(job, refresh=True))
            if on_done is not None and job.shard_id in self.outcome.outputs:
                on_done(job, self.outcome.outputs[job.shard_id])

    def finish(self, detail: Callable[[ShardOutcome], str] | None = None) -> ShardOutcome:
        out = self.outcome
        if self.sub.held is not None:
            out.counts["held"] = self.sub.held
        order = {s: i for i, s in enumerate(self.sub.order)}
        out.refs.sort(key=lambda r: order.get(r.shard_id, len(order)))  # plan order, whatever order they finished in
        self.progress.finish(out.counts)
        logger().info("%s%s", out.line(self.sub.stage), f", {detail(out)}" if detail else "")
        return out


def collect_shard_tasks(sub: Submitted, detail: Callable[[ShardOutcome], str] | None = None,
                        on_done: Callable[[ShardJob, dict], None] | None = None) -> ShardOutcome:
    """Wait for every submitted task, in the order they finish, and count them (see the module
    docstring and `Collector.add`). Logs one line, the counts plus `detail(outcome)`."""
    collector = Collector(sub, len(sub.jobs))
    collector.add(list(zip(sub.jobs, sub.futures)), on_done)
    return collector.finish(detail)


def run_shard_tasks(stage: str, store: ShardStore, jobs: list[ShardJob], task: Task,
                    only: Iterable[str] | None = None,
                    detail: Callable[[ShardOutcome], str] | None = None) -> ShardOutcome:
    """Run one task per job and collect them (see the module docstring); logs one line,
    the counts plus `detail(outcome)`."""
    return collect_shard_tasks(submit_shard_tasks(stage, store, jobs, task, only), detail)


def _collect_one(stage: str, store: ShardStore, job: ShardJob, fut, outcome: ShardOutcome, resubmit=None) -> None:
    from tasks.errors import BatchInFlight

    state = fut.wait() or fut.state
    if state.is_failed() or state.is_crashed():
        try:
            state.result()
        except BatchInFlight:
            # Its requests wait in provider batches: not failed, pending for a later run to collect.
            outcome.counts["in_flight"] = outcome.counts.get("in_flight", 0) + 1
            return
        except Exception as exc:  # the shard's own error, kept for status, the run summary and a backfill
            store.mark_failed(stage, job.shard_id, f"{type(exc).__name__}: {exc}")
        outcome.counts["failed"] += 1
        outcome.failed.append(job.shard_id)
        return
    out = state.result()
    if state.name == "Cached" and store.done_with_key(stage, job.shard_id, job.key) is None and resubmit:
        # Prefect remembers a shard whose file is gone: compute it again, bypassing the cache.
        return _collect_one(stage, store, job, resubmit(), outcome)
    if state.name == "Cached":
        outcome.counts["cached"] += 1
    else:
        outcome.counts[out["action"]] += 1
        outcome.fresh.add(job.shard_id)
    outcome.outputs[job.shard_id] = out
    outcome.refs.append(out["ref"])
