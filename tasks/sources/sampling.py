"""The sampling stage's logic: load every source, filter, dedup, decontaminate, select
per-source quotas with a seeded ranking, and cut the selection into shards.

Inputs: the run config's `sources`, `sampling`, `seed` and `shard_size`.
Outputs: a `Selection` (rows in INSTRUCTIONS layout, per-source counts, the shard plan).
All checks (missing files, broken rows, quotas above what a source holds) happen here,
before the flow writes anything.

Selection is by rank = sha256(seed, prompt_id): raising a quota keeps every row already
chosen and appends the new ones at the end, so only the last shards of that source change.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from storage.keys import prompt_id
from tasks.errors import InputError
from tasks.sources.adapters import ADAPTERS, flan_tasks, generic
from tasks.sources.config import SamplingConfig, SourceConfig
from tasks.sources.filters import Decontaminator, norm_hash, refers_to_missing_prompt

COUNT_KEYS = ("read", "empty", "too_short", "too_long", "given_prompt", "truthfulqa_exact",
              "ngram_overlap", "duplicate", "duplicate_across_sources", "available", "selected")


@dataclass
class ShardPlan:
    shard_id: str
    source: str
    start: int  # slice of the selection's rows
    stop: int


@dataclass
class Selection:
    rows: list[dict]
    counts: dict[str, dict[str, int]]
    shards: list[ShardPlan] = field(default_factory=list)


def load_source(src: SourceConfig) -> list[dict]:
    """Raw rows of one source; `part` says whether a FLAN row is chain-of-thought or per-task."""
    rows: list[dict] = []
    for path in src.files():
        if src.format in ("jsonl", "csv", "parquet"):
            part = generic(path, src.instruction_column or "", src.id_column)
        else:
            part = ADAPTERS[src.format](path)
        rows.extend(dict(r, part="main") for r in part)
    for path in src.task_files():
        rows.extend(dict(r, part="task") for r in flan_tasks(path))
    return rows


def _rank(seed: int, pid: str) -> str:
    return hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()


def prepare_source(src: SourceConfig, cfg: SamplingConfig, decon: Decontaminator, seed: int) -> tuple[list[dict], Counter]:
    """Filtered, within-source deduplicated candidates of one source, ranked."""
    counts: Counter = Counter({k: 0 for k in COUNT_KEYS})
    seen: set[str] = set()
    out = []
    for row in load_source(src):
        counts["read"] += 1
        text = row["instruction"]
        if not text:
            counts["empty"] += 1
            continue
        if len(text) < cfg.min_chars:
            counts["too_short"] += 1
            continue
        if len(text) > cfg.max_chars:
            counts["too_long"] += 1
            continue
        if cfg.given_prompt_filter and refers_to_missing_prompt(text):
            counts["given_prompt"] += 1
            continue
        reason = decon.reason(text, src.format, row["source_file"])
        if reason:
            counts[reason] += 1
            continue
        h = norm_hash(text)
        if cfg.dedup and h in seen:
            counts["duplicate"] += 1
            continue
        seen.add(h)
        pid = prompt_id(text)
        out.append({**row, "prompt_id": pid, "norm_hash": h, "rank": _rank(seed, pid)})
    return out, counts


def _take(src: SourceConfig, index: int, cands: list[dict]) -> list[dict]:
    main = sorted((c for c in cands if c["part"] == "main"), key=lambda c: c["rank"])
    if src.quota == "all":
        chosen = main
    elif src.quota > len(main):
        raise InputError(
            f"sources.{index}.quota: {src.name} asks for {src.quota} rows but holds only {len(main)} "
            f"usable ones (after filters and dedup); lower the quota or use 'all'")
    else:
        chosen = main[: src.quota]
    if src.per_task:
        by_task: dict[str, list[dict]] = defaultdict(list)
        for c in cands:
            if c["part"] == "task":
                by_task[c["task"] or ""].append(c)
        picked = {c["prompt_id"] for c in chosen}
        for task in sorted(by_task):
            ranked = [c for c in sorted(by_task[task], key=lambda c: c["rank"]) if c["prompt_id"] not in picked]
            chosen.extend(ranked[: src.per_task])
    return sorted(chosen, key=lambda c: c["rank"])


def _instruction_row(src: SourceConfig, c: dict) -> dict:
    return {
        "prompt_id": c["prompt_id"], "source": src.name, "source_format": src.format,
        "instruction": c["instruction"], "correct_answers": c["correct_answers"],
        "incorrect_answers": c["incorrect_answers"], "reference_answer": c["reference_answer"],
        "false_premise": c["false_premise"], "task": None if c["task"] is None else str(c["task"]),
        "source_file": c["source_file"], "source_row": int(c["source_row"]),
    }


def truthful_questions(sources: list[SourceConfig]) -> list[str]:
    from tasks.sources.adapters import truthful_qa

    return [r["instruction"] for s in sources if s.format == "truthful_qa" for p in s.files() for r in truthful_qa(p)]


def select(sources: list[SourceConfig], cfg: SamplingConfig, seed: int, shard_size: int) -> Selection:
    """Run the whole sampling logic; raises InputError before anything is written."""
    decon = Decontaminator(cfg.decontamination, truthful_questions(sources))
    earlier: set[str] = set()
    rows: list[dict] = []
    counts: dict[str, dict[str, int]] = {}
    shards: list[ShardPlan] = []
    for index, src in enumerate(sources):
        cands, c = prepare_source(src, cfg, decon, seed)
        if cfg.dedup:
            kept = [x for x in cands if x["norm_hash"] not in earlier]
            c["duplicate_across_sources"] = len(cands) - len(kept)
            earlier.update(x["norm_hash"] for x in cands)
            cands = kept
        c["available"] = len(cands)
        chosen = _take(src, index, cands)
        c["selected"] = len(chosen)
        counts[src.name] = dict(c)
        start = len(rows)
        rows.extend(_instruction_row(src, x) for x in chosen)
        for k, lo in enumerate(range(start, len(rows), shard_size)):
            shards.append(ShardPlan(f"{src.name}-{k:05d}", src.name, lo, min(lo + shard_size, len(rows))))
    return Selection(rows, counts, shards)
