"""The bookkeeping fast paths give exactly what the plain rules give.

- a judge request's id from the cached frame equals the hash of its whole body;
- the fence and instruction cleaning that skip the regex when no tag can match equal the
  regex pass; the plain-rating and plain-JSON shortcuts of the parser equal the full parse;
- journal lines written by orjson read back as the json module reads them, and lines only
  json can write (NaN) or read still load;
- the column-wise cost summary equals the per-record one;
- a shard's plan drawn once and shared equals the plan drawn afresh, and the merge drops it.
"""
from __future__ import annotations

import json
import math
import re

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.backends.journal import Journal
from tasks.rating import cost, parse, prompts, protocol
from tasks.rating.protocol import ASPECTS, CRITIQUE

# Text near the fences: tags, slashes, case and whitespace variants, NUL, quotes, non-ASCII.
FENCY = st.lists(st.sampled_from(list("<>/ \n\t\"\\\x00éxtTeEsponR") + ["text", "response", "instruction",
                                 "</text>", "< /Text >", "<response", "```"]), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(user=FENCY | st.text(max_size=200), aspect=st.sampled_from([*ASPECTS, CRITIQUE]),
       n=st.integers(1, 5), mode=st.sampled_from(["text", "structured"]),
       temperature=st.sampled_from([0, 0.0, 0.7, 1, 1.0]), top_p=st.sampled_from([0.6, 1, 1.0]),
       max_tokens=st.sampled_from([512, 1024]), model=st.sampled_from(["gpt-4o", "judé", 'a"b']))
def test_request_id_from_the_frame_is_the_hash_of_the_body(user, aspect, n, mode, temperature, top_p,
                                                            max_tokens, model):
    kw = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    body, rid = prompts.body_and_id(model, user, aspect, n, mode, **kw)
    assert body == prompts.request_body(model, user, aspect, n, mode, **kw)
    assert rid == prompts.request_id(body)


def _clean_by_regex(text: str) -> str:
    return re.sub(r"<\s*(/?)\s*(text|response|instruction)\b", r"< \1\2", text, flags=re.I)


def _neutralise_by_regex(content: str, tag: str) -> str:
    return re.sub(rf"</\s*{tag}\s*>", f"</ {tag}>", content, flags=re.I)


@settings(max_examples=500, deadline=None)
@given(text=FENCY)
def test_cleaning_without_the_regex_pass_equals_the_regex_pass(text):
    assert prompts._clean(text) == _clean_by_regex(text)
    for tag in ("text", "response"):
        assert protocol._neutralise(text, tag) == _neutralise_by_regex(text, tag)


def _rating_value_by_regex(value: str, aspect: str):
    saved = parse._PLAIN_RATINGS
    parse._PLAIN_RATINGS = {}
    try:
        return parse.rating_value(value, aspect)
    finally:
        parse._PLAIN_RATINGS = saved


@given(value=st.sampled_from(["1", "2", "3", "4", "5", " 4", "4 ", "**4**", "4/5", "N/A", "0", "6", "3.0"]),
       aspect=st.sampled_from(ASPECTS))
def test_plain_ratings_parse_as_the_full_rule_does(value, aspect):
    assert parse.rating_value(value, aspect) == _rating_value_by_regex(value, aspect)


@settings(max_examples=200, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
       fence=st.sampled_from(["", "```json\n", "```\n", "  ```json "]), close=st.sampled_from(["", "\n```", "```  "]))
def test_json_answers_load_the_same_with_and_without_fences(payload, fence, close):
    answer = fence + json.dumps(payload) + close
    by_regex = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", answer.strip())
    try:
        want = (json.loads(by_regex), None)
    except json.JSONDecodeError as exc:
        want = (None, f"not valid JSON ({exc.msg} at char {exc.pos})")
    assert parse._load_json(answer) == want


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15)


@settings(max_examples=100, deadline=None)
@given(bodies=st.lists(json_values, min_size=1, max_size=5))
def test_journal_lines_read_back_as_json_reads_them(tmp_path_factory, bodies):
    path = tmp_path_factory.mktemp("journal") / "j.jsonl"
    results = [{"custom_id": f"rq-{i}", "response": {"status_code": 200, "body": b}} for i, b in enumerate(bodies)]
    j = Journal(path).open()
    for r in results:
        j.append(r)
    j.close()
    assert [json.loads(line) for line in path.read_bytes().splitlines()] == results
    assert Journal(path).load() == {r["custom_id"]: r for r in results}


def test_journal_keeps_what_only_json_writes_or_reads(tmp_path):
    path = tmp_path / "j.jsonl"
    huge = {"custom_id": "rq-huge", "response": {"status_code": 200, "body": {"n": 2**70}}}
    j = Journal(path).open()
    j.append(huge)  # beyond 64 bits: orjson refuses, json writes it
    j.close()
    with open(path, "ab") as fh:  # a line the json module wrote before: NaN is not JSON, orjson refuses it
        fh.write(json.dumps({"custom_id": "rq-nan", "response": {"status_code": 200, "body": {"x": math.nan}}})
                 .encode() + b"\n")
        fh.write(b'{"custom_id": "rq-torn", "resp')
    loaded = Journal(path)
    got = loaded.load()
    assert got["rq-huge"] == huge and math.isnan(got["rq-nan"]["response"]["body"]["x"])
    assert set(got) == {"rq-huge", "rq-nan"} and loaded.torn_lines == 1


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["judge-a", "judge-b", None]), st.none() | st.integers(0, 10**6),
                               st.none() | st.integers(0, 10**6), st.none() | st.floats(0, 10),
                               st.none() | st.sampled_from(["rq-1", "rq-2", "rq-3", "rq-4"])), max_size=30))
def test_cost_summary_by_columns_equals_the_one_by_records(rows):
    names = ["judge_model", "prompt_tokens", "completion_tokens", "cost_usd", "request_id"]
    table = pa.table({n: pa.array([r[i] for r in rows], type=t) for i, (n, t) in enumerate(
        zip(names, [pa.string(), pa.int64(), pa.int64(), pa.float64(), pa.string()]))})
    records = [dict(zip(names, r)) for r in rows]
    assert cost.summarize_table(table, "rate") == cost.summarize(records, "rate", model_key="judge_model")
