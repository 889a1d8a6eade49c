"""Optional position-bias check: re-rate a sample with the completion order reversed.

Inputs: the stage tables (INSTRUCTIONS, COMPLETIONS, RATINGS), the RatingConfig that
rated the run, a sample size and seed, an unentered judge Backend (any implementation of
tasks.backends.base.Backend) and optionally a Journal so a rerun pays nothing twice.
Output: `BiasResult`, with per-aspect agreement between the original ratings and the
reversed-order ones (exact and within one point) and the judge usage of the check.

The original presentation order is the rating row's `permutation` (completion indexes,
Text 1 first); the check sends the same texts in the opposite order, with the rating
stage's own prompt renderer and parser, so the only thing that changes is position.
N/A against N/A counts as agreement; N/A against a number does not; a pair where either
side has no readable rating is counted as not compared.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.backends.base import Backend, make_request, message_text
from tasks.rating import prompts
from tasks.rating.config import RatingConfig
from tasks.rating.cost import usage_tokens
from tasks.rating.parse import parse
from tasks.rating.protocol import ASPECTS

COLUMNS = ["aspect", "compared", "exact", "within_one", "exact_rate", "within_one_rate", "mean_shift", "not_compared"]


@dataclass
class Recheck:
    prompt_id: str
    aspect: str
    order: list[int]  # completion indexes in the reversed presentation order
    original: dict[int, dict]  # completion_index -> original ratings row
    body: dict
    custom_id: str


@dataclass
class BiasResult:
    table: pd.DataFrame
    prompts: int = 0
    requests: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    details: list[dict] = field(default_factory=list)


def sample_prompts(ratings: pa.Table, sample: int, seed: int) -> list[str]:
    """Seeded sample of prompts that have an aspect call over two or more completions."""
    mask = pc.and_(pc.is_in(ratings["aspect"], value_set=pa.array(ASPECTS)),
                   pc.greater_equal(pc.fill_null(pc.list_value_length(ratings["permutation"]), 0), 2))
    eligible = sorted(pc.unique(ratings.filter(mask)["prompt_id"]).to_pylist())
    return sorted(random.Random(seed).sample(eligible, min(sample, len(eligible))))


def build_rechecks(instructions: pa.Table, completions: pa.Table, ratings: pa.Table, cfg: RatingConfig,
                   prompt_ids: list[str]) -> list[Recheck]:
    wanted = set(prompt_ids)
    ids = pa.array(sorted(wanted), pa.string())

    def mine(table: pa.Table) -> pa.Table:  # only the sampled prompts become Python rows
        return table.filter(pc.is_in(table["prompt_id"], value_set=ids))

    inst = {r["prompt_id"]: r for r in mine(instructions).to_pylist()}
    responses = {(r["prompt_id"], r["completion_index"]): r["response"]
                 for r in mine(completions.select(["prompt_id", "completion_index", "response"])).to_pylist()}
    calls: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in mine(ratings).to_pylist():
        if r["prompt_id"] in wanted and r["aspect"] in cfg.aspects and r["permutation"]:
            calls[(r["prompt_id"], r["aspect"])][r["completion_index"]] = r
    ep = cfg.endpoint
    out = []
    for (pid, aspect), rows in sorted(calls.items()):
        perm = next(iter(rows.values()))["permutation"]
        order = list(reversed(perm))
        if pid not in inst or any((pid, i) not in responses for i in order):
            continue
        knowledge = prompts.world_knowledge(inst[pid]) if aspect == "truthfulness" else None
        user = prompts.aspect_user_message(aspect, inst[pid]["instruction"], [responses[(pid, i)] for i in order],
                                           ep.answer_mode, knowledge)
        body = prompts.request_body(ep.request_model, user, aspect, len(order), ep.answer_mode,
                                    temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
        out.append(Recheck(pid, aspect, order, rows, body, prompts.request_id(body)))
    return out


def _value(rating: float | None, na: bool) -> float | str | None:
    return "N/A" if na else rating


def compare(rechecks: list[Recheck], answers: dict[str, str | None], mode: str) -> list[dict]:
    """One record per (prompt, aspect, completion): original vs reversed-order rating."""
    details = []
    for rc in rechecks:
        parsed = parse(answers.get(rc.custom_id), rc.aspect, len(rc.order), mode)
        for pos, idx in enumerate(rc.order):
            orig = rc.original.get(idx)
            j = parsed.items[pos] if pos < len(parsed.items) else None
            details.append({
                "prompt_id": rc.prompt_id, "aspect": rc.aspect, "completion_index": idx,
                "original_position": rc.order[::-1].index(idx) + 1, "reversed_position": pos + 1,
                "original": _value(orig["rating"], orig["rating_na"]) if orig else None,
                "reversed": _value(j.rating, j.na) if j is not None and j.parsed else None,
            })
    return details


def agreement(details: list[dict]) -> pd.DataFrame:
    rows = []
    for aspect in ASPECTS:
        recs = [d for d in details if d["aspect"] == aspect]
        if not recs:
            continue
        both = [d for d in recs if d["original"] is not None and d["reversed"] is not None]
        exact = sum(d["original"] == d["reversed"] for d in both)
        numeric = [d for d in both if not isinstance(d["original"], str) and not isinstance(d["reversed"], str)]
        within = sum(abs(d["original"] - d["reversed"]) <= 1 for d in numeric) + \
            sum(d["original"] == d["reversed"] == "N/A" for d in both)
        shift = sum(d["reversed"] - d["original"] for d in numeric) / len(numeric) if numeric else None
        n = len(both)
        rows.append({"aspect": aspect, "compared": n, "exact": exact, "within_one": within,
                     "exact_rate": round(exact / n, 4) if n else None,
                     "within_one_rate": round(within / n, 4) if n else None,
                     "mean_shift": round(shift, 4) if shift is not None else None,
                     "not_compared": len(recs) - n})
    return pd.DataFrame(rows, columns=COLUMNS)


def position_bias_check(instructions: pa.Table, completions: pa.Table, ratings: pa.Table, cfg: RatingConfig,
                        backend: Backend, sample: int, seed: int, journal=None) -> BiasResult:
    """Re-rate `sample` prompts with reversed completion order and measure agreement."""
    pids = sample_prompts(ratings, sample, seed)
    rechecks = build_rechecks(instructions, completions, ratings, cfg, pids)
    runner = backend
    if journal is not None:
        from tasks.backends.journal import JournaledBackend
        runner = JournaledBackend(backend, journal)
    answers: dict[str, str | None] = {}
    result = BiasResult(table=pd.DataFrame(columns=COLUMNS), prompts=len(pids), requests=len(rechecks))
    with runner as b:
        for res in b.run([make_request(rc.custom_id, rc.body) for rc in rechecks]):
            text = message_text(res)
            answers[res["custom_id"]] = text
            result.failed_requests += text is None
            p, c = usage_tokens(res)
            result.prompt_tokens += p or 0
            result.completion_tokens += c or 0
    result.details = compare(rechecks, answers, cfg.endpoint.answer_mode)
    result.table = agreement(result.details)
    return result
