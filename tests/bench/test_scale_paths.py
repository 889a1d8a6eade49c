"""The fast paths the scale benchmark led to give the same results as the plain rules.

- request ids are the generic stable hash of the body, computed without its walk;
- a table's content hash does not depend on whether it was built in memory or read back
  from Parquet (list child fields are named differently);
- the columnar assemble (tasks.assemble.join / frames) equals a per-row reference written
  from the documented rules (rating_string, fine_grained_score, the long table's statuses),
  and its pair tables equal binarize's row dicts, on random stage tables.
"""
from __future__ import annotations

import io
import random

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.keys import prompt_id, stable_hash
from storage.schemas import to_table
from storage.shards import table_hash
from tasks.assemble import frames
from tasks.assemble.binarize import PairStats, binarize, choose, drop_truthful_qa_all
from tasks.assemble.config import default_pairs
from tasks.assemble.join import LONG_ASPECTS, dataset_rows, fine_grained_score, join, long_table, rating_string
from tasks.rating.prompts import request_id
from tasks.rating.protocol import ASPECTS, CRITIQUE

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_request_id_is_the_stable_hash_of_the_body(body):
    assert request_id(body) == "rq-" + stable_hash(dict(body), length=32)


def test_content_hash_is_the_same_in_memory_and_read_back():
    rows = [{"prompt_id": prompt_id(f"q{i}"), "source": "s", "source_format": "jsonl", "instruction": f"q{i}",
             "correct_answers": ["a", "b"][: i % 3], "incorrect_answers": [], "reference_answer": None,
             "false_premise": None, "task": None, "source_file": "f", "source_row": i} for i in range(5)]
    table = to_table(rows, "instructions")
    buf = io.BytesIO()
    pq.write_table(table, buf)
    back = pq.read_table(io.BytesIO(buf.getvalue())).replace_schema_metadata(None)
    assert back.schema.field("correct_answers").type.value_field.name == "element"  # what Parquet gives back
    assert table_hash(back) == table_hash(table)
    assert table_hash(back.slice(1, 3)) == table_hash(table.slice(1, 3))


# --- random stage tables -------------------------------------------------------------------

# N/A is frequent on purpose (means over one aspect), a missing or unread rating rarer.
RATING = st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0, 2.5, "N/A", "N/A", "N/A", None, "missing"])
COMPLETION = st.fixed_dictionaries({
    "response": st.sampled_from(["An answer.", "", "  ", None, "Another answer with Rating: 5"]),
    "ratings": st.fixed_dictionaries({a: RATING for a in LONG_ASPECTS}),
    "model": st.sampled_from(["m1", "m2", "m3"]),
})
PROMPT = st.fixed_dictionaries({
    "source": st.sampled_from(["evol_instruct", "truthful_qa", "sharegpt", "flan"]),
    "completions": st.lists(COMPLETION, max_size=4),
    "answers": st.lists(st.text(max_size=5), max_size=2),
})


def build(prompts: list[dict], seed: int):
    rng = random.Random(seed)
    ins, comps, rates = [], [], []
    for i, p in enumerate(prompts):
        text = f"Question {i}?"
        pid = prompt_id(text)
        ins.append({"prompt_id": pid, "source": p["source"], "source_format": p["source"], "instruction": text,
                    "correct_answers": p["answers"], "incorrect_answers": [],
                    "reference_answer": f"Reference {i}." if p["source"] == "flan" else None,
                    "false_premise": None, "task": None, "source_file": "f", "source_row": i})
        indexes = rng.sample(range(8), len(p["completions"]))
        for idx, c in zip(indexes, p["completions"]):
            comps.append({"prompt_id": pid, "completion_index": idx, "model": c["model"], "principle": "helpfulness",
                          "system_prompt": "Be helpful.", "response": c["response"], "finish_reason": "stop",
                          "prompt_tokens": 5, "completion_tokens": 7, "latency_s": 0.1, "backend": "scripted",
                          "request_id": f"g-{pid[:6]}-{idx}", "error": None if c["response"] is not None else "http_500"})
            for aspect, value in c["ratings"].items():
                if value == "missing" or c["response"] is None:
                    continue
                critique = aspect == CRITIQUE
                rating = None if value in (None, "N/A") else (value * 2 if critique else value)
                rates.append({
                    "prompt_id": pid, "completion_index": idx, "model": c["model"], "aspect": aspect,
                    "rating": rating, "rating_na": value == "N/A" and not critique,
                    "types": ([] if rating == 5 else ["1"]) if aspect in ("truthfulness", "helpfulness") and rating
                    else None,
                    "rationale": f"why {aspect}", "rationale_for_rating": "because", "raw_text": "raw",
                    "parse_status": "unparsed" if value is None else ("na" if value == "N/A" else "ok"),
                    "parse_reason": "no rating line" if value is None else None, "permutation": [0, 1],
                    "judge_model": "gpt-4", "prompt_tokens": 10, "completion_tokens": 4, "cost_usd": 0.001,
                    "request_id": f"rq-{pid[:6]}-{aspect}-{idx}"})
    rng.shuffle(comps)
    rng.shuffle(rates)
    return to_table(ins, "instructions"), to_table(comps, "completions"), to_table(rates, "ratings")


def reference_dataset(ins: pa.Table, comps: pa.Table, rates: pa.Table) -> list[dict]:
    """The dataset rows, one Python dict at a time, straight from the rules."""
    by_pid: dict[str, list[dict]] = {}
    for c in comps.to_pylist():
        by_pid.setdefault(c["prompt_id"], []).append(c)
    rated = {(r["prompt_id"], r["completion_index"], r["aspect"]): r for r in rates.to_pylist()}
    out = []
    for row in ins.to_pylist():
        entries = []
        for c in sorted(by_pid.get(row["prompt_id"], []), key=lambda c: c["completion_index"]):
            mine = {a: rated.get((row["prompt_id"], c["completion_index"], a)) for a in LONG_ASPECTS}
            ann = {}
            for a in sorted(ASPECTS):
                r = mine[a]
                ann[a] = {"Rating": rating_string(r), "Rationale": r["rationale"] if r else None}
                if a in ("truthfulness", "helpfulness"):  # openbmb: only these two carry types
                    types = r["types"] if r else None
                    ann[a].update({"Rationale For Rating": r["rationale_for_rating"] if r else None,
                                   "Type": ["None"] if types == [] else types})
            crit = mine[CRITIQUE]
            entries.append({"annotations": ann, "critique": crit["rationale"] if crit else None,
                            "custom_system_prompt": c["system_prompt"],
                            "fine-grained_score": fine_grained_score({a: v for a, v in mine.items() if v}),
                            "model": c["model"], "overall_score": crit["rating"] if crit else None,
                            "principle": c["principle"], "response": c["response"]})
        reference = [row["reference_answer"]] if row["source_format"] == "flan" and row["reference_answer"] else None
        out.append({"source": row["source"], "instruction": row["instruction"],
                    "models": [e["model"] for e in entries], "completions": entries,
                    "correct_answers": row["correct_answers"] or reference or ["None"],
                    "incorrect_answers": row["incorrect_answers"] or ["None"]})
    return out


def reference_long(ins: pa.Table, comps: pa.Table, rates: pa.Table) -> list[tuple]:
    source = {r["prompt_id"]: r["source"] for r in ins.to_pylist()}
    rated = {(r["prompt_id"], r["completion_index"], r["aspect"]): r for r in rates.to_pylist()}
    out = []
    for c in sorted(comps.to_pylist(), key=lambda c: (c["prompt_id"], c["completion_index"])):
        for a in LONG_ASPECTS:
            r = rated.get((c["prompt_id"], c["completion_index"], a))
            if r:
                status, reason = r["parse_status"], r["parse_reason"]
            elif c["response"] is None:
                status, reason = "no_response", f"generation failed: {c['error'] or 'no response'}"
            else:
                status, reason = "missing", "no rating row"
            out.append((c["prompt_id"], source[c["prompt_id"]], c["completion_index"], a, r["rating"] if r else None,
                        bool(r and r["rating_na"]), r["types"] if r else None, status, reason,
                        r["request_id"] if r else None))
    return out


@settings(max_examples=60, deadline=None)
@given(prompts=st.lists(PROMPT, max_size=6), seed=st.integers(0, 1000))
def test_columnar_assemble_equals_the_per_row_rules(prompts, seed):
    ins, comps, rates = build(prompts, seed)
    assert dataset_rows(ins, comps, rates) == reference_dataset(ins, comps, rates)
    cols = ["prompt_id", "source", "completion_index", "aspect", "rating", "rating_na", "types", "parse_status",
            "parse_reason", "request_id"]
    got = long_table(ins, comps, rates).select(cols).to_pylist()
    assert [tuple(r[c] for c in cols) for r in got] == reference_long(ins, comps, rates)


@settings(max_examples=60, deadline=None)
@given(prompts=st.lists(PROMPT, max_size=6), seed=st.integers(0, 1000),
       score=st.sampled_from(["overall", "fine_grained", "honesty", "helpfulness"]))
def test_columnar_pairs_equal_binarize_rows(prompts, seed, score):
    ins, comps, rates = build(prompts, seed)
    questions = {"Question 1?"}
    sets = {n: ps.model_copy(update={"score": score}) if n != "h4" else ps for n, ps in default_pairs().items()}
    want, want_stats = binarize(dataset_rows(ins, comps, rates), sets, seed, lambda n: n // 3,
                                truthful_sources={"truthful_qa"}, truthful_questions=questions)
    j = join(ins, comps, rates)
    stats = PairStats()
    scores = sorted({ps.score for ps in sets.values()})
    by_score = frames.prompts_by_score(j, frames.completion_frame(j), scores, stats)
    by_score = drop_truthful_qa_all(by_score, {"truthful_qa"}, questions, stats)
    got = choose(by_score, sets, seed, lambda n: n // 3, stats)
    assert got.stats == want_stats
    for name, splits in got.sets.items():
        for split, picks in splits.items():
            built = frames.pair_table(j, picks, sets[name].layout, split)
            assert built.to_pylist() == want[name][split], (name, split)
