"""Join the three stage tables on prompt_id into the published layouts.

Inputs: pyarrow tables under the INSTRUCTIONS, COMPLETIONS and RATINGS schemas (every
shard of a stage concatenated). Outputs:
- `dataset_table`: exactly openbmb/UltraFeedback's features (schema "dataset"), one row per
  instruction, completions nested in completion_index order, ratings as strings ("N/A"
  where the judge said so, null where no rating could be read), Type only for the two
  typed aspects (["None"] where the judge named none), the critique, the overall and the
  fine-grained score; FLAN's reference in correct_answers, ["None"] where a source has none;
- `ids_from`: its sidecar (schema "dataset_ids"), row for row: prompt_id, where the row
  came from and the completions' request ids;
- `long_table`: one row per (completion, aspect) (schema "ratings_long"), with a row of
  parse_status "missing" wherever the rating stage has none, so gaps stay visible
  ("no_response" where the completion itself failed and so was never rated);
- `join` / `Joined`: the shared step both are built from, which the publisher also uses
  for the pairs and the statistics (tasks.assemble.frames).

Every instruction stays, even one whose completions or ratings are missing: nulls mark
what is absent and the pair builders leave such completions out.

Everything is columnar (Arrow joins, takes and numpy), never a Python object per row: at
the original's scale the ratings table has 1.3 million rows, and a dict per row cost
gigabytes. `rating_string` and `fine_grained_score` state the rules on one row; the
columnar code follows them exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.schemas import ASPECTS, CRITIQUE, DATASET, DATASET_IDS, RATINGS_LONG
from tasks.errors import InputError

LONG_ASPECTS = (*ASPECTS, CRITIQUE)
# What the assemble stage reads of a ratings shard (raw_text, the largest column, is not).
RATING_COLUMNS = ["prompt_id", "completion_index", "aspect", "rating", "rating_na", "types", "rationale",
                  "rationale_for_rating", "parse_status", "parse_reason", "judge_model", "prompt_tokens",
                  "completion_tokens", "cost_usd", "request_id"]
COMPLETION_COLUMNS = ["prompt_id", "completion_index", "model", "principle", "system_prompt", "response",
                      "finish_reason", "prompt_tokens", "completion_tokens", "latency_s", "error", "request_id"]


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


@dataclass
class Joined:
    """Completions of the run's prompts, sorted by (prompt_id, completion_index), with the
    row of each aspect's rating; and where each instruction's completions are."""

    instructions: pa.Table
    comps: pa.Table  # COMPLETION_COLUMNS, sorted
    ratings: pa.Table  # RATING_COLUMNS
    rows: dict[str, pa.Array]  # aspect -> ratings row per completion (null: none)
    order: np.ndarray  # completions in instruction order (indexes into comps)
    offsets: np.ndarray  # instruction i owns order[offsets[i]:offsets[i + 1]]
    source: pa.Array  # per completion: its instruction's source


def _a(col) -> pa.Array:
    """One contiguous Array (StructArray and ListArray builders take no ChunkedArray)."""
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _check_unique(table: pa.Table, keys: list[str], what) -> None:
    counts = table.group_by(keys).aggregate([([], "count_all")])
    dup = counts.filter(pc.greater(counts["count_all"], 1))
    if dup.num_rows:
        raise InputError(what(dup.slice(0, 1).to_pylist()[0]))


def _completions_error(table: pa.Table):
    def message(first: dict) -> str:
        pid = first["prompt_id"]
        seen = table.filter(pc.equal(table["prompt_id"], pid))["completion_index"].to_pylist()
        return f"completions: prompt_id {pid} has repeated completion_index values {sorted(seen)}"
    return message


def _ratings_error(first: dict) -> str:
    return (f"ratings: two rows for prompt_id {first['prompt_id']} completion {first['completion_index']} "
            f"aspect {first['aspect']!r}; a rating shard was written twice under different shard ids")


def _row_of(comps: pa.Table, ratings: pa.Table, aspect: str) -> pa.Array:
    """Per completion, the row of its `aspect` rating (null when there is none)."""
    mine = ratings.select(["prompt_id", "completion_index"]).append_column(
        "_r", pa.array(np.arange(ratings.num_rows, dtype=np.int64))).filter(pc.equal(ratings["aspect"], aspect))
    left = comps.select(["prompt_id", "completion_index"]).append_column(
        "_c", pa.array(np.arange(comps.num_rows, dtype=np.int64)))
    joined = left.join(mine, keys=["prompt_id", "completion_index"], join_type="left outer")
    joined = joined.sort_by("_c")
    return joined["_r"].combine_chunks()


def join(instructions: pa.Table, completions: pa.Table, ratings: pa.Table) -> Joined:
    """Check for repeated rows, sort, and look every rating up (see `Joined`)."""
    _check_unique(completions.select(["prompt_id", "completion_index"]), ["prompt_id", "completion_index"],
                  _completions_error(completions))
    ratings = ratings.select(RATING_COLUMNS).combine_chunks()
    _check_unique(ratings.select(["prompt_id", "completion_index", "aspect"]),
                  ["prompt_id", "completion_index", "aspect"], _ratings_error)
    ins_ids = instructions["prompt_id"].combine_chunks()
    comps = completions.select(COMPLETION_COLUMNS)
    comps = comps.filter(pc.is_in(comps["prompt_id"], value_set=ins_ids))  # prompts no longer in the plan go
    comps = comps.sort_by([("prompt_id", "ascending"), ("completion_index", "ascending")]).combine_chunks()
    rows = {aspect: _row_of(comps, ratings, aspect) for aspect in LONG_ASPECTS}
    order, offsets = _instruction_order(ins_ids, comps["prompt_id"].combine_chunks())
    source = instructions["source"].combine_chunks().take(pc.index_in(comps["prompt_id"], value_set=ins_ids))
    return Joined(instructions, comps, ratings, rows, order, offsets, source)


def _instruction_order(ins_ids: pa.Array, comp_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Completions regrouped in instruction order (a repeated instruction repeats them)."""
    n = len(comp_ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(len(ins_ids) + 1, dtype=np.int64)
    change = np.ones(n, dtype=bool)
    if n > 1:
        change[1:] = pc.not_equal(comp_ids.slice(1), comp_ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(change)
    counts = np.diff(np.append(starts, n))
    where = pc.index_in(ins_ids, value_set=comp_ids.take(pa.array(starts)))
    found = where.is_valid().to_numpy(zero_copy_only=False)
    pos = where.fill_null(0).to_numpy(zero_copy_only=False)
    per_ins = np.where(found, counts[pos], 0)
    first = np.where(found, starts[pos], 0)
    offsets = np.zeros(len(ins_ids) + 1, dtype=np.int64)
    np.cumsum(per_ins, out=offsets[1:])
    order = np.repeat(first - offsets[:-1], per_ins) + np.arange(offsets[-1], dtype=np.int64)
    return order, offsets


def rating_strings(rating: pa.Array, na: pa.Array) -> pa.Array:
    """`rating_string` over columns: "N/A", the rating's string, or null."""
    values = pc.unique(rating.drop_null())
    text = [rating_string({"rating_na": False, "rating": v}) for v in values.to_pylist()]
    mapped = pa.array(text, pa.string()).take(pc.index_in(rating, value_set=values))
    return pc.if_else(pc.fill_null(na, False), pa.scalar("N/A"), mapped)


def _rows(j: Joined, aspect: str, idx: pa.Array | None) -> pa.Array:
    """Ratings rows of `aspect` for the completions `idx` (all when None)."""
    return j.rows[aspect] if idx is None else j.rows[aspect].take(idx)


def types_strings(types: pa.Array) -> pa.Array:
    """Type lists as openbmb writes them: a judge's "None" (no type applies, an empty list
    here) becomes ["None"]; a list stays; null (nothing read) stays null."""
    empty = pc.equal(pc.list_value_length(types), 0)
    none = pa.array([["None"]] * len(types), _STR_LIST) if len(types) else pa.array([], _STR_LIST)
    return pc.if_else(pc.fill_null(empty, False), none, types)


_STR_LIST = pa.list_(pa.string())


def _annotation(j: Joined, aspect: str, idx: pa.Array | None) -> pa.StructArray:
    t = j.ratings.take(_rows(j, aspect, idx))
    arrays = {"Rating": rating_strings(_a(t["rating"]), _a(t["rating_na"])), "Rationale": _a(t["rationale"]),
              "Rationale For Rating": _a(t["rationale_for_rating"]), "Type": types_strings(_a(t["types"]))}
    fields = list(_ANNOTATIONS.field(aspect).type)
    return pa.StructArray.from_arrays([arrays[f.name] for f in fields], fields=fields)


def fine_grained_scores(j: Joined, idx: pa.Array | None = None) -> pa.Array:
    """`fine_grained_score` over columns (the sum runs in aspect order, as there)."""
    n = j.comps.num_rows if idx is None else len(idx)
    invalid = np.zeros(n, dtype=bool)
    count = np.zeros(n, dtype=np.int64)
    total = np.zeros(n, dtype=np.float64)
    for aspect in ASPECTS:
        rows = _rows(j, aspect, idx)
        t = j.ratings.select(["rating", "rating_na"]).take(rows)
        present = rows.is_valid().to_numpy(zero_copy_only=False)
        na = t["rating_na"].fill_null(False).to_numpy(zero_copy_only=False)
        missing_value = t["rating"].is_null().to_numpy(zero_copy_only=False)
        value = t["rating"].fill_null(0.0).to_numpy(zero_copy_only=False)
        invalid |= ~present | (~na & missing_value)
        use = present & ~na
        total = total + np.where(use, value, 0.0)
        count += use
    ok = ~invalid & (count > 0)
    score = np.divide(total, count, out=np.zeros(n), where=ok)
    return pa.array(score, pa.float64(), mask=~ok)


_COMPLETION = DATASET.field("completions").type.value_type
_ANNOTATIONS = _COMPLETION.field("annotations").type


def completion_structs(j: Joined, idx: pa.Array) -> pa.StructArray:
    """The completions `idx` (rows of `comps`) as the dataset's nested completion structs."""
    crit = j.ratings.select(["rating", "rationale"]).take(_rows(j, CRITIQUE, idx))
    annotations = pa.StructArray.from_arrays([_annotation(j, f.name, idx) for f in _ANNOTATIONS],
                                             fields=list(_ANNOTATIONS))
    c = j.comps.select(["model", "principle", "system_prompt", "response"]).take(idx)
    arrays = {"annotations": annotations, "critique": _a(crit["rationale"]),
              "custom_system_prompt": _a(c["system_prompt"]), "fine-grained_score": fine_grained_scores(j, idx),
              "model": _a(c["model"]), "overall_score": _a(crit["rating"]), "principle": _a(c["principle"]),
              "response": _a(c["response"])}
    return pa.StructArray.from_arrays([arrays[f.name] for f in _COMPLETION], fields=list(_COMPLETION))


def answers_column(answers: pa.ChunkedArray, reference: pa.ChunkedArray | None = None) -> pa.Array:
    """Reference answers as the original writes them: the source's list, else (FLAN) the
    reference answer as a one-item list, else ["None"]."""
    refs = reference.to_pylist() if reference is not None else [None] * len(answers)
    return pa.array([list(v) if v else [r] if r else ["None"] for v, r in zip(answers.to_pylist(), refs)],
                    _STR_LIST)


def _flan_reference(ins: pa.Table) -> pa.ChunkedArray:
    """The reference answer of FLAN rows (null elsewhere): openbmb puts it in correct_answers."""
    is_flan = pc.equal(ins["source_format"], "flan")
    return pc.if_else(is_flan, ins["reference_answer"], pa.scalar(None, pa.string()))


def _slice(j: Joined, lo: int, hi: int | None):
    hi = j.instructions.num_rows if hi is None else hi
    first, last = int(j.offsets[lo]), int(j.offsets[hi])
    offsets = pa.array((j.offsets[lo:hi + 1] - first).astype(np.int32))
    return j.instructions.slice(lo, hi - lo), offsets, pa.array(j.order[first:last])


def dataset_from(j: Joined, lo: int = 0, hi: int | None = None) -> pa.Table:
    """Rows [lo, hi) of the openbmb/UltraFeedback-layout table (schema "dataset") of a join."""
    ins, offsets, take = _slice(j, lo, hi)
    arrays = {
        "source": _a(ins["source"]), "instruction": _a(ins["instruction"]),
        "models": pa.ListArray.from_arrays(offsets, _a(j.comps["model"]).take(take)),
        "completions": pa.ListArray.from_arrays(offsets, completion_structs(j, take)),
        "correct_answers": answers_column(ins["correct_answers"], _flan_reference(ins)),
        "incorrect_answers": answers_column(ins["incorrect_answers"]),
    }
    return pa.Table.from_arrays([arrays[f.name] for f in DATASET], schema=DATASET)


def ids_from(j: Joined, lo: int = 0, hi: int | None = None) -> pa.Table:
    """Rows [lo, hi) of the dataset's sidecar (schema "dataset_ids"), aligned with dataset_from."""
    ins, offsets, take = _slice(j, lo, hi)
    c = j.comps.select(["completion_index", "request_id"]).take(take)
    arrays = {
        "prompt_id": _a(ins["prompt_id"]), "source": _a(ins["source"]), "task": _a(ins["task"]),
        "source_file": _a(ins["source_file"]), "source_row": _a(ins["source_row"]),
        "completion_indexes": pa.ListArray.from_arrays(offsets, _a(c["completion_index"])),
        "completion_request_ids": pa.ListArray.from_arrays(offsets, _a(c["request_id"])),
    }
    return pa.Table.from_arrays([arrays[f.name] for f in DATASET_IDS], schema=DATASET_IDS)


def dataset_table(instructions: pa.Table, completions: pa.Table, ratings: pa.Table) -> pa.Table:
    return dataset_from(join(instructions, completions, ratings))


def dataset_rows(instructions: pa.Table, completions: pa.Table, ratings: pa.Table) -> list[dict]:
    """The dataset as row dicts (small inputs: tests, examples)."""
    return dataset_table(instructions, completions, ratings).to_pylist()


def long_rows(j: Joined) -> int:
    return j.comps.num_rows * len(LONG_ASPECTS)


def long_from(j: Joined, lo: int = 0, hi: int | None = None) -> pa.Table:
    """Rows [lo, hi) of the long table (schema "ratings_long"): one row per (completion,
    aspect), completions in (prompt_id, completion_index) order."""
    k = len(LONG_ASPECTS)
    hi = long_rows(j) if hi is None else hi
    c_lo, c_hi = lo // k, -(-hi // k)
    table = _long_of(j, c_lo, c_hi)
    return table.slice(lo - c_lo * k, hi - lo)


def _long_of(j: Joined, c_lo: int, c_hi: int) -> pa.Table:
    """The long rows of completions [c_lo, c_hi)."""
    n, k = c_hi - c_lo, len(LONG_ASPECTS)
    each = pa.array(np.repeat(np.arange(c_lo, c_hi, dtype=np.int64), k))
    rows = np.stack([j.rows[a].slice(c_lo, n).to_numpy(zero_copy_only=False) for a in LONG_ASPECTS],
                    axis=1).reshape(-1) if n else np.zeros(0)
    valid = ~np.isnan(rows) if rows.dtype.kind == "f" else np.ones(len(rows), dtype=bool)
    r_idx = pa.array(np.where(valid, rows, 0).astype(np.int64), mask=~valid)
    c = {name: _a(col) for name, col in zip(j.comps.column_names, j.comps.take(each).columns)}
    t = {name: _a(col) for name, col in zip(j.ratings.column_names, j.ratings.take(r_idx).columns)}
    has = pa.array(valid)
    # A completion that failed to generate is never rated: that is not a rating failure.
    failed = c["response"].is_null()
    error = pc.if_else(pc.equal(pc.fill_null(c["error"], ""), ""), pa.scalar("no response"), c["error"])
    unrated = pc.if_else(failed, pa.scalar("no_response"), pa.scalar("missing"))
    why = pc.if_else(failed, pc.binary_join_element_wise("generation failed: ", error, ""), pa.scalar("no rating row"))
    columns = {
        "prompt_id": c["prompt_id"], "source": j.source.take(each), "completion_index": c["completion_index"],
        "model": c["model"], "principle": c["principle"],
        "aspect": pa.array(np.tile(np.array(LONG_ASPECTS, dtype=object), n), pa.string()),
        "rating": t["rating"], "rating_na": pc.fill_null(t["rating_na"], False), "types": t["types"],
        "parse_status": pc.if_else(has, t["parse_status"], unrated),
        "parse_reason": pc.if_else(has, t["parse_reason"], why),
        "judge_model": t["judge_model"], "judge_prompt_tokens": t["prompt_tokens"],
        "judge_completion_tokens": t["completion_tokens"], "cost_usd": t["cost_usd"], "request_id": t["request_id"],
        "response_tokens": c["completion_tokens"], "finish_reason": c["finish_reason"],
    }
    return pa.Table.from_arrays([columns[f.name] for f in RATINGS_LONG], schema=RATINGS_LONG)


def long_table(instructions: pa.Table, completions: pa.Table, ratings: pa.Table) -> pa.Table:
    return long_from(join(instructions, completions, ratings))
