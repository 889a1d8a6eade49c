"""The audit's sample and the calls of its run probes (position, second judge).

Inputs: the run's INSTRUCTIONS, COMPLETIONS and RATINGS tables, the audited aspects, the
sample size and seed. Outputs: the sampled prompt ids, the rate stage's own rows for them
(AUDIT_RATINGS rows, probe "rate", origin "rate": already paid) and `AuditCall`s.

The sample is drawn from prompts with an aspect call over two or more texts, seeded by
the audit seed alone, so it does not depend on shard order. Position calls show the same
texts as the rate stage's call in rotated orders: with all n-1 rotations every text is
shown exactly once at every position, so a judge without position bias has a mean shift
of exactly zero at each position whatever its ratings.
"""
from __future__ import annotations

import random
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from tasks.audit.calls import AuditCall, Text


def sample_prompts(ratings: pa.Table, aspects: list[str], sample: int, seed: int) -> list[str]:
    """Seeded sample of prompts that have an aspect call over two or more completions."""
    mask = pc.and_(pc.is_in(ratings["aspect"], value_set=pa.array(aspects, pa.string())),
                   pc.greater_equal(pc.fill_null(pc.list_value_length(ratings["permutation"]), 0), 2))
    eligible = sorted(pc.unique(ratings.filter(mask)["prompt_id"]).to_pylist())
    return sorted(random.Random(seed).sample(eligible, min(sample, len(eligible))))


def _mine(table: pa.Table, ids: list[str]) -> list[dict]:
    return table.filter(pc.is_in(table["prompt_id"], value_set=pa.array(ids, pa.string()))).to_pylist()


class RunSample:
    """The sampled prompts' instructions, responses and rate-stage calls."""

    def __init__(self, instructions: pa.Table, completions: pa.Table, ratings: pa.Table, aspects: list[str],
                 prompt_ids: list[str]):
        self.aspects = aspects
        self.instructions = {r["prompt_id"]: r for r in _mine(instructions, prompt_ids)}
        self.completions = {(r["prompt_id"], r["completion_index"]): r for r in _mine(completions, prompt_ids)}
        calls: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
        for r in _mine(ratings, prompt_ids):
            if r["aspect"] in aspects and r["permutation"] and len(r["permutation"]) >= 2:
                calls[(r["prompt_id"], r["aspect"])][r["completion_index"]] = r
        # Only calls whose texts are all still there can be shown again.
        self.calls = {k: v for k, v in sorted(calls.items()) if k[0] in self.instructions and all(
            (k[0], i) in self.completions for i in next(iter(v.values()))["permutation"])}

    def order(self, key: tuple[str, str]) -> list[int]:
        return list(next(iter(self.calls[key].values()))["permutation"])

    def texts(self, pid: str, order: list[int]) -> list[Text]:
        return [Text(i, self.completions[(pid, i)]["model"], self.completions[(pid, i)]["response"]) for i in order]

    def rate_rows(self) -> list[dict]:
        """The rate stage's ratings of the sampled calls, as AUDIT_RATINGS rows (variant 0)."""
        out = []
        for (pid, aspect), rows in self.calls.items():
            order = self.order((pid, aspect))
            for pos, idx in enumerate(order):
                r = rows.get(idx)
                if r is None:
                    continue
                out.append({
                    "probe": "rate", "set": "run", "item_id": pid, "aspect": aspect, "variant": 0,
                    "completion_index": idx, "model": r["model"], "position": pos + 1, "n_texts": len(order),
                    "response_chars": len(self.completions[(pid, idx)]["response"]),
                    "rating": r["rating"] if r["parse_status"] == "ok" else None, "rating_na": r["rating_na"],
                    "parse_status": r["parse_status"], "judge_model": r["judge_model"], "origin": "rate",
                    "human_label": None, "human_votes": None, "baseline_label": None,
                    "prompt_tokens": None, "completion_tokens": None, "cost_usd": None,
                    "request_id": r["request_id"],
                })
        return out

    def position_calls(self, rotations: int | None) -> list[AuditCall]:
        out = []
        for (pid, aspect) in self.calls:
            order = self.order((pid, aspect))
            n = len(order)
            for r in range(1, min(n - 1, rotations or n - 1) + 1):
                rotated = order[r:] + order[:r]
                out.append(AuditCall("position", "run", pid, aspect, r, self.instructions[pid],
                                     self.texts(pid, rotated)))
        return out

    def second_judge_calls(self) -> list[AuditCall]:
        return [AuditCall("second_judge", "run", pid, aspect, 0, self.instructions[pid],
                          self.texts(pid, self.order((pid, aspect)))) for (pid, aspect) in self.calls]
