"""Generation stage logic, without Prefect: run one engine over many shards, then merge.

Inputs: finished instruction shards (ShardRefs in a ShardStore), the generation config,
the run seed and the source -> principle-row mapping.
Outputs:
- `generate_parts/<model>/<shard_id>`: the completions one pool entry produced for one
  instruction shard (COMPLETIONS schema, marker written last), so a retry resumes at
  shard granularity and a dead engine costs only the shards it had not finished;
- `generate/<shard_id>`: every completion of the instruction shard (k per instruction),
  sorted by prompt_id and completion_index, checked complete before it is written.

As in the original, generation is grouped by model: `run_group` brings an engine up once
for every shard that drew any of its entries and stops it afterwards. Nothing is started
when all of a group's parts are already done.

No completion is lost to a transient fault: a part with a request that still failed
transiently after the backend's per-request retries is not written (TransientError once
every other part is done; the orchestrator's retry or a backfill re-sends exactly what is
missing). Only permanent errors (a 4xx: the endpoint refused that request) become failed
rows. Requests to a hosted endpoint (`serve: openai`) go through the request journal
(`<output>/journal/generate/<model>/<shard_id>.jsonl`), so an answer paid for before a
crash is never asked again.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import tasks.generation.draws
import tasks.generation.principles
import tasks.generation.requests
from storage.keys import code_version, shard_key, stable_hash
from storage.schemas import to_table
from storage.shards import ShardRef, ShardStore
from tasks.backends.faults import is_transient
from tasks.backends.journal import Journal, JournaledBackend, JournalSet, journal_path
from tasks.errors import TransientError, UltraFeedbackError
from tasks.generation.config import GenerationConfig, ModelEntry
from tasks.generation.engines import EngineGroup, open_backend
from tasks.generation.principles import system_prompts
from tasks.generation.requests import Planned, build_request, completion_row, plan_shard

STAGE = "generate"


def part_stage(model: str) -> str:
    return f"{STAGE}_parts/{model}"


def code() -> str:
    import tasks.generation.stage as me

    return code_version(tasks.generation.draws, tasks.generation.principles, tasks.generation.requests, me)


def _output_settings(entry: ModelEntry) -> dict:
    """The parts of a pool entry that change what it generates (not timeouts or logs)."""
    return entry.model_dump(mode="json", include={"name", "serve", "model", "served_name", "base_url", "dtype",
                                                  "max_model_len", "chat_template", "sampling", "script"})


def draw_settings(cfg: GenerationConfig, seed: int, rows_by_source: dict[str, str]) -> dict:
    """Everything the draws depend on: a change re-plans every shard."""
    return {"seed": seed, "k": cfg.k, "allow_repeats": cfg.allow_repeats, "pool": sorted(m.name for m in cfg.models),
            "principles": cfg.principles, "rows": rows_by_source, "prompts": stable_hash(system_prompts()),
            **({"policy": cfg.policy} if cfg.policy else {})}


def part_key(instr: ShardRef, entry: ModelEntry, cfg: GenerationConfig, seed: int, rows_by_source: dict) -> str:
    return shard_key(part_stage(entry.name), [instr.sha256],
                     {"draws": draw_settings(cfg, seed, rows_by_source), "entry": _output_settings(entry)}, code())


def merge_key(instr: ShardRef, cfg: GenerationConfig, seed: int, rows_by_source: dict) -> str:
    entries = [_output_settings(m) for m in cfg.models]
    return shard_key(STAGE, [instr.sha256], {"draws": draw_settings(cfg, seed, rows_by_source),
                                             "entries": entries}, code())


@dataclass
class GroupResult:
    engine_id: str
    refs: list[ShardRef] = field(default_factory=list)
    written: int = 0
    kept: int = 0
    requests: int = 0
    failed_requests: int = 0  # permanent errors, kept as failed rows
    transient_failures: int = 0  # requests left for the retry (their parts are not written)
    from_journal: int = 0
    completion_tokens: int = 0
    engine_s: float = 0.0  # engine start to stop (0 when nothing had to run)
    generate_s: float = 0.0  # first request sent to last result received


@dataclass
class _Todo:
    entry: ModelEntry
    shard_id: str
    key: str
    planned: list[Planned]
    results: dict = field(default_factory=dict)


class _Plans:
    """The plans of instruction shards drawn in this process, shared by the engine groups and
    the merge: each shard is read and drawn once, not once per group and again for the merge
    (with a pool of 4 that was half of the stage's CPU). Threads asking for the same shard at
    once wait for the one drawing it. Bounded by planned completions (about one full-size
    run); the merge, the last reader, drops its shard's plan."""

    def __init__(self, max_items: int = 300_000):
        self.max_items = max_items
        self._lock = threading.Lock()
        self._plans: OrderedDict[tuple, list[Planned]] = OrderedDict()
        self._drawing: dict[tuple, threading.Lock] = {}
        self._items = 0

    @staticmethod
    def key(ref: ShardRef, cfg: GenerationConfig, seed: int, rows_by_source: dict) -> tuple:
        return ref.sha256, stable_hash(draw_settings(cfg, seed, rows_by_source), length=32)

    def get(self, store: ShardStore, ref: ShardRef, cfg: GenerationConfig, seed: int, rows_by_source: dict,
            key: tuple) -> list[Planned]:
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
            drawing = self._drawing.setdefault(key, threading.Lock())
        with drawing:
            with self._lock:
                if key in self._plans:
                    return self._plans[key]
            plan = plan_shard(store.read_shard(ref), cfg, seed, rows_by_source)
            with self._lock:
                self._plans[key] = plan
                self._items += len(plan)
                while self._items > self.max_items and len(self._plans) > 1:
                    self._items -= len(self._plans.popitem(last=False)[1])
                self._drawing.pop(key, None)
        return plan

    def drop(self, key: tuple) -> None:
        with self._lock:
            plan = self._plans.pop(key, None)
            self._items -= len(plan) if plan is not None else 0


_PLANS = _Plans()


def _plan_todo(store: ShardStore, group: EngineGroup, instr_refs: list[ShardRef], cfg: GenerationConfig,
               seed: int, rows_by_source: dict, out: GroupResult) -> list[_Todo]:
    todo = []
    draws = stable_hash(draw_settings(cfg, seed, rows_by_source), length=32)  # the same for every shard
    for ref in instr_refs:
        planned = _PLANS.get(store, ref, cfg, seed, rows_by_source, (ref.sha256, draws))
        for entry in group.entries:
            mine = [p for p in planned if p.model == entry.name]
            if not mine:
                continue
            key = part_key(ref, entry, cfg, seed, rows_by_source)
            done = store.done_with_key(part_stage(entry.name), ref.shard_id, key)
            if done is not None:
                out.refs.append(done)
                out.kept += 1
            else:
                todo.append(_Todo(entry, ref.shard_id, key, mine))
    return todo


def _write_part(store: ShardStore, item: _Todo, max_error_fraction: float,
                out: GroupResult) -> tuple[bool, str] | None:
    """Write a finished part; else (transient?, why not)."""
    results = [item.results.get(p.request_id) for p in item.planned]
    transient = [r for r in results if r is None or (r.get("error") and is_transient(r["error"]))]
    if transient:
        out.transient_failures += len(transient)
        err = (transient[0] or {}).get("error") or {"code": "missing", "message": "no result"}
        return True, (f"{item.entry.name}/{item.shard_id}: {len(transient)} requests failed transiently "
                      f"(e.g. {err['code']}: {str(err['message'])[:200]})")
    rows = [completion_row(p, r, item.entry.serve) for p, r in zip(item.planned, results)]
    failed = sum(r["response"] is None for r in rows)
    out.failed_requests += failed
    out.completion_tokens += sum(r["completion_tokens"] or 0 for r in rows if r["response"] is not None)
    if failed and failed / len(rows) > max_error_fraction:
        examples = sorted({r["error"] for r in rows if r["error"]})[:3]
        return False, (f"{item.entry.name}/{item.shard_id}: {failed}/{len(rows)} requests refused "
                       f"(generation.max_error_fraction={max_error_fraction}); e.g. {examples}")
    table = to_table(rows, "completions")
    out.refs.append(store.write_shard(part_stage(item.entry.name), item.shard_id, table, "completions", item.key))
    out.written += 1
    return None


def _journaled(store: ShardStore, todo: list[_Todo], backend):
    """Hosted generation answers cost money: journal them per model and instruction shard."""
    route = {}
    for item in todo:
        journal = Journal(journal_path(store.root, item.shard_id, stage=f"generate/{item.entry.name}"))
        route.update({p.request_id: journal for p in item.planned})
    return JournaledBackend(backend, JournalSet(route))


def run_group(store: ShardStore, group: EngineGroup, instr_refs: list[ShardRef], cfg: GenerationConfig,
              seed: int, rows_by_source: dict[str, str], log_dir: str, backend=None,
              on_part: Callable[[str], None] | None = None) -> GroupResult:
    """Generate every unfinished part of one engine group; parts are written as they complete.

    An exception (engine died, transient failures, too many refusals) leaves the finished
    parts in place; the orchestrator's retry redoes only the rest. `backend` replaces the
    configured one (tests). `on_part(shard_id)` is called once the group has every part it
    owes that shard (at once for parts finished earlier), so the shard can be merged while
    the engine still works on others.
    """
    out = GroupResult(group.engine_id)
    todo = _plan_todo(store, group, instr_refs, cfg, seed, rows_by_source, out)
    pending = Counter(item.shard_id for item in todo)
    for shard_id in dict.fromkeys(r.shard_id for r in out.refs):
        if not pending[shard_id] and on_part:
            on_part(shard_id)
    if not todo:
        return out
    owner = {p.request_id: item for item in todo for p in item.planned}
    entries = {e.name: e for e in group.entries}

    def requests():
        for item in todo:
            for p in item.planned:
                yield build_request(p, entries[p.model])

    engine = backend or open_backend(group, log_dir, output_root=store.root)
    if group.serve == "openai" and group.entries[0].mode != "batch":  # a batch backend journals its own answers
        engine = _journaled(store, todo, engine)
    problems: list[tuple[bool, str]] = []
    started = time.monotonic()
    with engine:
        sent = time.monotonic()
        for result in engine.run(requests()):
            item = owner.get(result["custom_id"])
            if item is None:
                continue  # not ours: an engine must not invent ids, and a stray one must not corrupt a shard
            item.results[result["custom_id"]] = result
            out.requests += 1
            if len(item.results) == len(item.planned):
                problem = _write_part(store, item, cfg.max_error_fraction, out)
                if problem:
                    problems.append(problem)  # the shard's count stays above 0: it waits for the engine's end
                else:
                    pending[item.shard_id] -= 1
                    if not pending[item.shard_id] and on_part:
                        on_part(item.shard_id)
        # A batch engine reports its own generation time (its wall time includes the model load).
        out.generate_s = getattr(engine, "generate_s", None) or time.monotonic() - sent
        out.from_journal = getattr(engine, "from_journal", 0)
    out.engine_s = time.monotonic() - started
    unfinished = [f"{i.entry.name}/{i.shard_id}" for i in todo if len(i.results) < len(i.planned)]
    if unfinished:
        raise TransientError(f"engine {group.engine_id} returned no result for some requests of {unfinished}")
    refused = [why for transient, why in problems if not transient]
    if refused:  # resending a refused request gets the same refusal: no retry, a failed shard
        raise UltraFeedbackError(f"engine {group.engine_id}: {'; '.join(refused[:3])}")
    if problems:
        raise TransientError(f"engine {group.engine_id}: {len(problems)} parts unfinished, "
                             f"{'; '.join(why for _, why in problems[:2])}; a retry sends only the missing requests")
    return out


def merge_shard(store: ShardStore, instr: ShardRef, cfg: GenerationConfig, seed: int,
                rows_by_source: dict[str, str]) -> ShardRef:
    """Combine the parts of one instruction shard into `generate/<shard_id>`."""
    key = merge_key(instr, cfg, seed, rows_by_source)
    existing = store.done_with_key(STAGE, instr.shard_id, key)
    if existing is not None:
        return existing
    plan_key = _Plans.key(instr, cfg, seed, rows_by_source)
    planned = _PLANS.get(store, instr, cfg, seed, rows_by_source, plan_key)
    _PLANS.drop(plan_key)  # the last reader of this plan
    rows: list[dict] = []
    for name in sorted({p.model for p in planned}):
        entry = cfg.entry(name)
        ref = store.done_with_key(part_stage(name), instr.shard_id, part_key(instr, entry, cfg, seed, rows_by_source))
        if ref is None:
            raise TransientError(f"shard {instr.shard_id}: part of model {name} is not finished")
        rows.extend(store.read_shard(ref).to_pylist())
    want = sorted((p.prompt_id, p.completion_index, p.model) for p in planned)
    have = sorted((r["prompt_id"], r["completion_index"], r["model"]) for r in rows)
    if want != have:
        raise TransientError(f"shard {instr.shard_id}: parts hold {len(have)} completions, plan has {len(want)}")
    rows.sort(key=lambda r: (r["prompt_id"], r["completion_index"]))
    return store.write_shard(STAGE, instr.shard_id, to_table(rows, "completions"), "completions", key)
