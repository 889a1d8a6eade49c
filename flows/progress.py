"""Progress where people look: Prefect artifacts on the flow run, a rich display on the CLI.

Inputs: shard outcomes as a stage collects them (`track`), and at the end of a run the
manifest and the run summary (`publish_artifacts`). Outputs:

- per stage, a Prefect progress artifact (0-100 % of its shard tasks collected) whose
  description carries the written / unchanged / cached / failed counts;
- a table artifact `<run>-shard-states` (stage, shard, state, rows, error) and a markdown
  artifact `<run>-run-summary` (counts per stage, judge cost, unfinished shards and the
  backfill command), keyed by run name so the Artifacts page shows their history;
- events for in-process listeners, such as the rich display of `ultrafeedback run`.

Every function is safe outside a flow run: artifacts are created only inside a flow or
task run, and an API error is logged, never raised (an artifact is a view, the shards and
the manifest are the record).
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator, Protocol

from storage.keys import artifact_key  # one naming rule for every artifact of a run

log = logging.getLogger("ultrafeedback.progress")
UPDATE_EVERY_S = 2.0  # progress artifact updates are API calls; thousands of shards must not mean thousands
MAX_TABLE_ROWS = 1000  # beyond this the table lists only unfinished shards


class Listener(Protocol):
    def stage_started(self, stage: str, total: int) -> None: ...
    def shard_finished(self, stage: str, done: int, total: int, counts: dict[str, int]) -> None: ...
    def stage_finished(self, stage: str, counts: dict[str, int]) -> None: ...


_listeners: list[Listener] = []


@contextlib.contextmanager
def listen(listener: Listener) -> Iterator[Listener]:
    _listeners.append(listener)
    try:
        yield listener
    finally:
        _listeners.remove(listener)


def _emit(event: str, *args: Any) -> None:
    for listener in list(_listeners):
        try:
            getattr(listener, event)(*args)
        except Exception as exc:  # a display must never stop a run
            log.warning("progress listener %s.%s failed: %s", type(listener).__name__, event, exc)


def in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _artifact(fn_name: str, **kwargs: Any) -> Any:
    """Call a prefect.artifacts function inside a run; None outside one or on any API error."""
    if not in_run():
        return None
    try:
        import prefect.artifacts

        return getattr(prefect.artifacts, fn_name)(**kwargs)
    except Exception as exc:
        log.warning("could not write the %s artifact: %s", fn_name, exc)
        return None


def describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {label}" for label, n in (
        ("written", counts.get("written", 0)), ("unchanged", counts.get("kept", 0)),
        ("cached", counts.get("cached", 0)), ("failed", counts.get("failed", 0)),
        ("in provider batches", counts.get("in_flight", 0))) if n)


class StageProgress:
    """Progress of one stage's shard tasks; `update` after each, `finish` at the end."""

    def __init__(self, stage: str, total: int):
        self.stage, self.total, self.done = stage, total, 0
        self._last = 0.0
        self.artifact_id = _artifact("create_progress_artifact", progress=0.0 if total else 100.0,
                                     description=f"{stage}: 0/{total} shards")
        _emit("stage_started", stage, total)

    def update(self, counts: dict[str, int], final: bool = False) -> None:
        self.done = sum(counts.get(k, 0) for k in ("written", "kept", "cached", "failed", "in_flight"))
        _emit("shard_finished", self.stage, self.done, self.total, dict(counts))
        now = time.monotonic()
        if self.artifact_id is not None and (final or now - self._last >= UPDATE_EVERY_S):
            self._last = now
            self._push(counts)

    def finish(self, counts: dict[str, int]) -> None:
        self.update(counts, final=True)
        _emit("stage_finished", self.stage, dict(counts))

    def _push(self, counts: dict[str, int]) -> None:
        pct = 100.0 if not self.total else round(100.0 * self.done / self.total, 1)
        text = f"{self.stage}: {self.done}/{self.total} shards" + (f" ({describe(counts)})" if describe(counts) else "")
        _artifact("update_progress_artifact", artifact_id=self.artifact_id, progress=pct, description=text)


def track(stage: str, total: int) -> StageProgress:
    return StageProgress(stage, total)


def shard_rows(manifest: dict) -> tuple[list[dict], int]:
    """Table rows of every shard's state (only unfinished ones past MAX_TABLE_ROWS) and the total."""
    rows = [{"stage": stage, "shard": shard_id, "state": st.get("state"), "rows": st.get("rows"),
             "error": (st.get("error") or "")[:300]}
            for stage, shards in manifest.get("stages", {}).items() for shard_id, st in shards.items()]
    if len(rows) > MAX_TABLE_ROWS:
        return [r for r in rows if r["state"] != "done"], len(rows)
    return rows, len(rows)


def summary_markdown(manifest: dict, summary: dict, output: str) -> str:
    """Counts per stage, cost, and what is left to backfill."""
    from tasks.rating.cost import format_summary

    lines = [f"# Run `{summary.get('run')}` (seed {summary.get('seed')})", "", f"Output: `{output}`", "",
             "Shard states now, then what the stage's last run did (written, unchanged, cached, failed).", "",
             "| stage | planned | done | failed | pending/stale | written | unchanged | cached | failed | rows |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cost_lines: list[dict] = []
    unfinished: list[str] = []
    for stage, shards in manifest.get("stages", {}).items():
        states = [st.get("state") for st in shards.values()]
        run = (summary.get("stages", {}).get(stage) or {})
        c = run.get("shards") or {}
        rows = sum(st.get("rows") or 0 for st in shards.values())
        lines.append(f"| {stage} | {len(states)} | {states.count('done')} | {states.count('failed')} | "
                     f"{len(states) - states.count('done') - states.count('failed')} | {c.get('written', 0)} | "
                     f"{c.get('kept', 0)} | {c.get('cached', 0)} | {c.get('failed', 0)} | {rows:,} |")
        cost_lines += run.get("cost") or []
        unfinished += [f"- `{stage}:{sid}` {st.get('state')}" + (f": {st['error'][:200]}" if st.get("error") else "")
                       for sid, st in shards.items() if st.get("state") != "done"]
    if cost_lines:
        lines += ["", "## Judge cost", "", format_summary(cost_lines)]
    if unfinished:
        lines += ["", f"## Unfinished shards ({len(unfinished)})", "", *unfinished[:50]]
        if len(unfinished) > 50:
            lines.append(f"- ... and {len(unfinished) - 50} more (see the shard-states table)")
        lines += ["", "Retry this flow run (its finished shards come back from the cache), or backfill them:", "",
                  f"    ultrafeedback backfill --out {output}",
                  f"    prefect deployment run 'ultrafeedback-backfill/backfill' --param output={output}"]
    return "\n".join(lines) + "\n"


def publish_artifacts(manifest: dict, summary: dict, output: str) -> list[str]:
    """Table and markdown artifacts of a finished run; [] outside a flow run."""
    if not in_run():
        return []
    name = str(summary.get("run") or "ultrafeedback")
    rows, total = shard_rows(manifest)
    made = []
    table_key = artifact_key(name, "shard-states")
    shown = "all" if len(rows) == total else f"{len(rows)} unfinished of {total}"
    if _artifact("create_table_artifact", table=rows, key=table_key,
                 description=f"{name}: shard states ({shown})") is not None:
        made.append(table_key)
    md_key = artifact_key(name, "run-summary")
    if _artifact("create_markdown_artifact", markdown=summary_markdown(manifest, summary, output), key=md_key,
                 description=f"{name}: counts, cost and unfinished shards") is not None:
        made.append(md_key)
    return made


class RichDisplay:
    """A rich progress bar per stage for `ultrafeedback run` / `backfill` on a terminal."""

    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = console or Console(stderr=True)  # stdout carries the JSON summary
        self.progress = Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("shards {task.fields[detail]}"), TimeElapsedColumn(),
                                 console=console, transient=False)
        self.tasks: dict[str, Any] = {}

    def stage_started(self, stage: str, total: int) -> None:
        self.tasks[stage] = self.progress.add_task(stage, total=total, detail="")

    def shard_finished(self, stage: str, done: int, total: int, counts: dict[str, int]) -> None:
        if stage in self.tasks:
            self.progress.update(self.tasks[stage], completed=done, detail=describe(counts))

    def stage_finished(self, stage: str, counts: dict[str, int]) -> None:
        if stage in self.tasks:
            t = self.progress.tasks[self.tasks[stage]]
            self.progress.update(self.tasks[stage], completed=t.total, detail=describe(counts) or "none")


@contextlib.contextmanager
def cli_display(enabled: bool = True, console=None) -> Iterator[RichDisplay | None]:
    """Show stage progress bars while the block runs (nothing when disabled)."""
    if not enabled:
        yield None
        return
    display = RichDisplay(console)
    with display.progress, listen(display):
        yield display
