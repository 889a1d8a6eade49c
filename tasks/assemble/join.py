"""Join the three stage tables on prompt_id into the published layouts.

Inputs: pyarrow tables under the INSTRUCTIONS, COMPLETIONS and RATINGS schemas (every
shard of a stage concatenated). Outputs:
- `dataset_table`: the openbmb/UltraFeedback layout (schema "dataset"), one row per
  instruction, completions nested in completion_index order, ratings as strings ("N/A"
  where the judge said so, null where no rating could be read), the critique, the overall
  score and the fine-grained score;
- `long_table`: one row per (completion, aspect) (schema "ratings_long"), with a row of
  parse_status "missing" wherever the rating stage has none, so gaps stay visible
  ("no_response" where the completion itself failed and so was never rated).

Every instruction stays, even one whose completions or ratings are missing: nulls mark
what is absent and the pair builders leave such completions out.
"""
from __future__ import annotations

import math
from collections import defaultdict

import pyarrow as pa

from storage.schemas import SCHEMAS, to_table
from tasks.errors import InputError
from tasks.rating.protocol import ASPECTS, CRITIQUE

LONG_ASPECTS = (*ASPECTS, CRITIQUE)


def rating_string(row: dict | None) -> str | None:
    """The rating as the original's string: "4", "N/A", or None when none was read."""
    if row is None:
        return None
    if row["rating_na"]:
        return "N/A"
    value = row["rating"]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


def fine_grained_score(aspect_rows: dict[str, dict]) -> float | None:
    """Mean of the aspect ratings that are not N/A; None when any aspect has no rating.

    A completion with an unreadable aspect gets no fine-grained score rather than a mean
    over fewer aspects, which would rank it on a different basis than its siblings.
    """
    values = []
    for aspect in ASPECTS:
        row = aspect_rows.get(aspect)
        if row is None:
            return None
        if row["rating_na"]:
            continue
        if row["rating"] is None:
            return None
        values.append(float(row["rating"]))
    return sum(values) / len(values) if values else None


def _annotation(aspect: str, row: dict | None) -> dict:
    if row is None:
        return {"Rating": None, "Rationale": None, "Type": None, "Rationale For Rating": None}
    typed = aspect in ("truthfulness", "helpfulness")
    return {
        "Rating": rating_string(row),
        "Rationale": row.get("rationale"),
        "Type": list(row["types"]) if typed and row.get("types") is not None else None,
        "Rationale For Rating": row.get("rationale_for_rating") if typed else None,
    }


def index_ratings(ratings: pa.Table) -> dict[tuple[str, int], dict[str, dict]]:
    """(prompt_id, completion_index) -> aspect -> ratings row; a repeated row is an error."""
    out: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    for row in ratings.to_pylist():
        slot = out[(row["prompt_id"], row["completion_index"])]
        if row["aspect"] in slot:
            raise InputError(
                f"ratings: two rows for prompt_id {row['prompt_id']} completion {row['completion_index']} "
                f"aspect {row['aspect']!r}; a rating shard was written twice under different shard ids")
        slot[row["aspect"]] = row
    return out


def index_completions(completions: pa.Table) -> dict[str, list[dict]]:
    """prompt_id -> its completions in completion_index order."""
    out: dict[str, list[dict]] = defaultdict(list)
    for row in completions.to_pylist():
        out[row["prompt_id"]].append(row)
    for pid, rows in out.items():
        rows.sort(key=lambda r: r["completion_index"])
        seen = [r["completion_index"] for r in rows]
        if len(set(seen)) != len(seen):
            raise InputError(f"completions: prompt_id {pid} has repeated completion_index values {seen}")
    return out


def _completion_entry(comp: dict, rated: dict[str, dict]) -> dict:
    critique = rated.get(CRITIQUE)
    overall = critique["rating"] if critique is not None else None
    return {
        "model": comp["model"],
        "principle": comp["principle"],
        "custom_system_prompt": comp["system_prompt"],
        "response": comp["response"],
        "annotations": {aspect: _annotation(aspect, rated.get(aspect)) for aspect in ASPECTS},
        "critique": critique.get("rationale") if critique is not None else None,
        "overall_score": float(overall) if overall is not None else None,
        "fine-grained_score": fine_grained_score(rated),
    }


def _answers(values: list[str] | None) -> list[str]:
    # The original writes ["None"] where a source has no reference answers.
    return list(values) if values else ["None"]


def dataset_rows(instructions: pa.Table, completions: pa.Table, ratings: pa.Table) -> list[dict]:
    comps = index_completions(completions)
    rates = index_ratings(ratings)
    rows = []
    for ins in instructions.to_pylist():
        pid = ins["prompt_id"]
        entries = [_completion_entry(c, rates.get((pid, c["completion_index"]), {})) for c in comps.get(pid, [])]
        rows.append({
            "source": ins["source"],
            "prompt_id": pid,
            "instruction": ins["instruction"],
            "models": [e["model"] for e in entries],
            "correct_answers": _answers(ins["correct_answers"]),
            "incorrect_answers": _answers(ins["incorrect_answers"]),
            "completions": entries,
        })
    return rows


def dataset_table(instructions: pa.Table, completions: pa.Table, ratings: pa.Table) -> pa.Table:
    """The openbmb/UltraFeedback-layout table (schema "dataset")."""
    return _table(dataset_rows(instructions, completions, ratings), "dataset")


def long_rows(instructions: pa.Table, completions: pa.Table, ratings: pa.Table) -> list[dict]:
    source = {r["prompt_id"]: r["source"] for r in instructions.select(["prompt_id", "source"]).to_pylist()}
    rates = index_ratings(ratings)
    rows = []
    for comp in sorted(completions.to_pylist(), key=lambda c: (c["prompt_id"], c["completion_index"])):
        pid, idx = comp["prompt_id"], comp["completion_index"]
        if pid not in source:
            continue  # a completion of an instruction no longer in the plan
        rated = rates.get((pid, idx), {})
        # A completion that failed to generate is never rated: that is not a rating failure.
        unrated, why = ("missing", "no rating row") if comp["response"] is not None else \
            ("no_response", f"generation failed: {comp['error'] or 'no response'}")
        for aspect in LONG_ASPECTS:
            r = rated.get(aspect)
            rows.append({
                "prompt_id": pid, "source": source[pid], "completion_index": idx,
                "model": comp["model"], "principle": comp["principle"], "aspect": aspect,
                "rating": r["rating"] if r else None,
                "rating_na": bool(r["rating_na"]) if r else False,
                "types": r["types"] if r else None,
                "parse_status": r["parse_status"] if r else unrated,
                "parse_reason": r["parse_reason"] if r else why,
                "judge_model": r["judge_model"] if r else None,
                "judge_prompt_tokens": r["prompt_tokens"] if r else None,
                "judge_completion_tokens": r["completion_tokens"] if r else None,
                "cost_usd": r["cost_usd"] if r else None,
                "request_id": r["request_id"] if r else None,
                "response_tokens": comp["completion_tokens"],
                "finish_reason": comp["finish_reason"],
            })
    return rows


def long_table(instructions: pa.Table, completions: pa.Table, ratings: pa.Table) -> pa.Table:
    """One row per (completion, aspect) (schema "ratings_long")."""
    return _table(long_rows(instructions, completions, ratings), "ratings_long")


def _table(rows: list[dict], schema_name: str) -> pa.Table:
    if not rows:
        return SCHEMAS[schema_name].empty_table()
    return to_table(rows, schema_name)
