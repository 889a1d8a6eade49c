"""The one place where the Parquet schemas of every stage live.

Inputs: nothing. Outputs: explicit pyarrow schemas (one per stage artifact) and
`validate_table`, which every shard write calls so that a malformed row fails with a
message naming the column and row instead of being written.

Bump SCHEMA_VERSION whenever a schema changes; it is stored in each file's metadata and
part of every shard's cache key, so old shards are recomputed rather than mixed in.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"

_str_list = pa.list_(pa.string())

INSTRUCTIONS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),  # sha256 of instruction
        pa.field("source", pa.string(), nullable=False),  # source name from the config
        pa.field("source_format", pa.string(), nullable=False),  # adapter, e.g. truthful_qa
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("correct_answers", _str_list, nullable=False),
        pa.field("incorrect_answers", _str_list, nullable=False),
        pa.field("reference_answer", pa.string()),  # FLAN target / rationale
        pa.field("false_premise", pa.bool_()),  # FalseQA label
        pa.field("task", pa.string()),  # FLAN task, ShareGPT id, Evol skill ...
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
    ]
)

COMPLETIONS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("completion_index", pa.int32(), nullable=False),
        pa.field("model", pa.string(), nullable=False),  # pool entry name
        pa.field("principle", pa.string(), nullable=False),
        pa.field("system_prompt", pa.string(), nullable=False),
        pa.field("response", pa.string()),  # null when the request failed
        pa.field("finish_reason", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("latency_s", pa.float64()),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ]
)

# The values of RATINGS.aspect: UltraFeedback's four 1-5 aspects (the keys of DATASET's
# annotations; the two typed ones carry a Type list) and the critique with its 1-10 score.
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
TYPED_ASPECTS = ("truthfulness", "helpfulness")
CRITIQUE = "critique"

# One row per (completion, aspect); the critique is aspect "critique" with a 1-10 score.
RATINGS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("completion_index", pa.int32(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("aspect", pa.string(), nullable=False),
        pa.field("rating", pa.float64()),  # null: N/A or unparsed (see parse_status)
        pa.field("rating_na", pa.bool_(), nullable=False),
        pa.field("types", _str_list),
        pa.field("rationale", pa.string()),
        pa.field("rationale_for_rating", pa.string()),
        pa.field("raw_text", pa.string()),
        pa.field("parse_status", pa.string(), nullable=False),  # ok | na | unparsed | failed
        pa.field("parse_reason", pa.string()),
        pa.field("permutation", pa.list_(pa.int32())),
        pa.field("judge_model", pa.string(), nullable=False),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),
        pa.field("request_id", pa.string(), nullable=False),
    ]
)

def _annotation(typed: bool) -> pa.StructType:
    """One aspect's annotation as openbmb/UltraFeedback stores it: Rating and Rationale,
    plus Type and "Rationale For Rating" for the two typed aspects only."""
    fields = [pa.field("Rating", pa.string()), pa.field("Rationale", pa.string())]
    if typed:
        fields += [pa.field("Rationale For Rating", pa.string()), pa.field("Type", _str_list)]
    return pa.struct(fields)


# Field order as in the re-uploads of openbmb/UltraFeedback (alphabetical inside
# completions and annotations); `datasets` compares features by name, so order is cosmetic.
_completion = pa.struct(
    [
        pa.field(
            "annotations",
            pa.struct(
                [
                    pa.field("helpfulness", _annotation(True)),
                    pa.field("honesty", _annotation(False)),
                    pa.field("instruction_following", _annotation(False)),
                    pa.field("truthfulness", _annotation(True)),
                ]
            ),
        ),
        pa.field("critique", pa.string()),
        pa.field("custom_system_prompt", pa.string()),
        pa.field("fine-grained_score", pa.float64()),
        pa.field("model", pa.string()),
        pa.field("overall_score", pa.float64()),
        pa.field("principle", pa.string()),
        pa.field("response", pa.string()),
    ]
)

# openbmb/UltraFeedback, exactly its features: one row per instruction. Ratings are strings
# ("1".."5", "N/A"; null where no rating could be read), Type a list of digit strings or
# ["None"], answers ["None"] where a source has none. Our ids live in DATASET_IDS.
DATASET = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("models", _str_list, nullable=False),
        pa.field("completions", pa.list_(_completion), nullable=False),
        pa.field("correct_answers", _str_list, nullable=False),
        pa.field("incorrect_answers", _str_list, nullable=False),
    ]
)

# Sidecar of DATASET, row for row (same files, same order): what openbmb's layout has no
# room for. prompt_id = sha256(instruction); completion i of the dataset row has
# completion_request_ids[i] and can be found in dataset_long by (prompt_id, index).
DATASET_IDS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("completion_indexes", pa.list_(pa.int32()), nullable=False),
        pa.field("completion_request_ids", _str_list, nullable=False),
    ]
)

# The message struct of H4 and Argilla (field order as their cards list it).
_message = pa.struct([pa.field("content", pa.string()), pa.field("role", pa.string())])
_messages = pa.list_(_message)

# HuggingFaceH4/ultrafeedback_binarized, exactly: prompt is the instruction (a string),
# chosen/rejected are [user turn, assistant turn], messages = chosen (in *_gen: the user
# turn only), scores are overall_score unless configured otherwise.
PREFERENCES_H4 = pa.schema(
    [
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("chosen", _messages, nullable=False),
        pa.field("rejected", _messages, nullable=False),
        pa.field("messages", _messages, nullable=False),
        pa.field("score_chosen", pa.float64(), nullable=False),
        pa.field("score_rejected", pa.float64(), nullable=False),
    ]
)

# TRL's explicit-prompt conversational preference format: prompt = [user turn],
# chosen/rejected = [assistant turn], messages = the chosen conversation. (TRL 1.16's
# DPOTrainer fails with a TypeError on H4's mix of a string prompt and full conversations.)
PREFERENCES_TRL = pa.schema(
    [
        pa.field("prompt", _messages, nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("chosen", _messages, nullable=False),
        pa.field("rejected", _messages, nullable=False),
        pa.field("messages", _messages, nullable=False),
        pa.field("score_chosen", pa.float64(), nullable=False),
        pa.field("score_rejected", pa.float64(), nullable=False),
    ]
)

# argilla/ultrafeedback-binarized-preferences-cleaned, exactly: no prompt_id, no messages.
PREFERENCES_ARGILLA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", _messages, nullable=False),
        pa.field("chosen-rating", pa.float64(), nullable=False),
        pa.field("chosen-model", pa.string(), nullable=False),
        pa.field("rejected", _messages, nullable=False),
        pa.field("rejected-rating", pa.float64(), nullable=False),
        pa.field("rejected-model", pa.string(), nullable=False),
    ]
)

# Pair sets made by tasks.assemble.pair_rules (tulu3, delta, on-policy), in the same TRL
# conversational format; scores are null for a rule that asks no judge (delta), and
# policy_side says which side the policy model's answer is on (null: no policy entry).
PREFERENCES_RULES = pa.schema(
    [
        pa.field("prompt", pa.list_(_message), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("chosen", pa.list_(_message), nullable=False),
        pa.field("rejected", pa.list_(_message), nullable=False),
        pa.field("messages", pa.list_(_message), nullable=False),
        pa.field("score_chosen", pa.float64()),
        pa.field("score_rejected", pa.float64()),
        pa.field("chosen_model", pa.string(), nullable=False),
        pa.field("rejected_model", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),  # tulu3 | delta
        pa.field("policy_side", pa.string()),  # chosen | rejected | null
    ]
)

# Flat analysis table: one row per (completion, aspect), the critique as aspect "critique";
# parse_status "missing" where the rating stage produced no row for the pair, "no_response"
# where the completion failed to generate (and so was never rated).
RATINGS_LONG = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("completion_index", pa.int32(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("principle", pa.string(), nullable=False),
        pa.field("aspect", pa.string(), nullable=False),
        pa.field("rating", pa.float64()),
        pa.field("rating_na", pa.bool_(), nullable=False),
        pa.field("types", _str_list),
        pa.field("parse_status", pa.string(), nullable=False),  # ok|na|unparsed|failed|missing|no_response
        pa.field("parse_reason", pa.string()),
        pa.field("judge_model", pa.string()),
        pa.field("judge_prompt_tokens", pa.int64()),
        pa.field("judge_completion_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),  # of the whole judge call: sum once per request_id
        pa.field("request_id", pa.string()),
        pa.field("response_tokens", pa.int64()),
        pa.field("finish_reason", pa.string()),
    ]
)

# What the assemble stage published: one row per output file (its shard is the stage's
# completion marker).
OUTPUTS = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),  # relative to the output root
        pa.field("schema", pa.string(), nullable=False),  # schema name, or png / markdown
        pa.field("rows", pa.int64(), nullable=False),
    ]
)

# Judge audit (tasks.audit): one row per text an audit call rated. probe is rate (the rate
# stage's own rating of a sampled text, copied with origin "rate": its tokens were counted
# there) | position | second_judge | human (asked by the audit, origin "audit").
AUDIT_RATINGS = pa.schema(
    [
        pa.field("probe", pa.string(), nullable=False),
        pa.field("set", pa.string(), nullable=False),  # "run", or the human set's name
        pa.field("item_id", pa.string(), nullable=False),  # prompt_id, or the human set's row id
        pa.field("aspect", pa.string(), nullable=False),
        pa.field("variant", pa.int32(), nullable=False),  # presentation order; 0 = the rate stage's
        pa.field("completion_index", pa.int32(), nullable=False),  # human pairwise: 0 = response a, 1 = b
        pa.field("model", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),  # 1 = shown as Text 1
        pa.field("n_texts", pa.int32(), nullable=False),
        pa.field("response_chars", pa.int64(), nullable=False),
        pa.field("rating", pa.float64()),  # null: N/A, unparsed or failed (see parse_status)
        pa.field("rating_na", pa.bool_(), nullable=False),
        pa.field("parse_status", pa.string(), nullable=False),  # ok | na | unparsed | failed
        pa.field("judge_model", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),  # rate | audit
        pa.field("human_label", pa.float64()),  # pointwise: mapped to 1-5; pairwise: majority 1 | 2 | 0 (tie)
        pa.field("human_votes", pa.list_(pa.int32())),  # pairwise: each annotator's 1 | 2 | 0
        pa.field("baseline_label", pa.string()),  # another judge's published verdict (PandaLM: gpt-3.5)
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),  # of the whole call: sum once per request_id
        pa.field("request_id", pa.string(), nullable=False),
    ]
)

# The audit's figures: one row per (probe, set, aspect, metric[, position]) with a
# bootstrap interval where one is defined.
AUDIT_RESULTS = pa.schema(
    [
        pa.field("probe", pa.string(), nullable=False),  # position | verbosity | self_preference | second_judge | human
        pa.field("set", pa.string(), nullable=False),
        pa.field("aspect", pa.string(), nullable=False),  # an aspect, or "preference" (pairwise human sets)
        pa.field("metric", pa.string(), nullable=False),
        pa.field("position", pa.int32()),
        pa.field("value", pa.float64()),
        pa.field("low", pa.float64()),
        pa.field("high", pa.float64()),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("note", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "instructions": INSTRUCTIONS,
    "completions": COMPLETIONS,
    "ratings": RATINGS,
    "dataset": DATASET,
    "dataset_ids": DATASET_IDS,
    "preferences_h4": PREFERENCES_H4,
    "preferences_trl": PREFERENCES_TRL,
    "preferences_argilla": PREFERENCES_ARGILLA,
    "preferences_rules": PREFERENCES_RULES,
    "ratings_long": RATINGS_LONG,
    "outputs": OUTPUTS,
    "audit_ratings": AUDIT_RATINGS,
    "audit_results": AUDIT_RESULTS,
}


class SchemaError(ValueError):
    """A table does not match the schema it is written under."""


def to_table(rows: list[dict], schema_name: str) -> pa.Table:
    """Build a table from row dicts under the named schema, never by inference."""
    schema = SCHEMAS[schema_name]
    missing = [f.name for f in schema if any(f.name not in r for r in rows[:1])]
    if missing:
        raise SchemaError(f"{schema_name}: rows lack columns {missing}")
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"{schema_name}: {_locate(rows, schema) or exc}") from exc
    validate_table(table, schema_name)
    return table


def validate_table(table: pa.Table, schema_name: str) -> None:
    """Raise SchemaError naming the column (and row) that breaks the schema."""
    schema = SCHEMAS[schema_name]
    if table.schema.names != schema.names:
        raise SchemaError(
            f"{schema_name}: columns {table.schema.names} differ from {schema.names}"
        )
    for field in schema:
        col = table.column(field.name)
        if col.type != field.type:
            raise SchemaError(f"{schema_name}: column {field.name!r} is {col.type}, expected {field.type}")
        if not field.nullable and col.null_count:
            row = next(i for i, v in enumerate(col.to_pylist()) if v is None)
            raise SchemaError(f"{schema_name}: column {field.name!r} is null in row {row}")


def _locate(rows: list[dict], schema: pa.Schema) -> str | None:
    for i, row in enumerate(rows):
        for field in schema:
            try:
                pa.array([row.get(field.name)], type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                return f"row {i}, column {field.name!r}: {exc}"
    return None
