"""Sampling logic on the real sources: quotas, seeds, dedup, filters, decontamination."""
from __future__ import annotations

import hashlib

import pytest

from flows.config import load_config
from tasks.errors import InputError
from tasks.sources.config import Decontamination, EvalFile, SamplingConfig, SourceConfig
from tasks.sources.filters import Decontaminator, refers_to_missing_prompt
from tasks.sources.sampling import select
from tests.paths import SCRIPTED_CONFIG

DEMO = SCRIPTED_CONFIG


def _select(overrides=(), **kw):
    cfg = load_config(DEMO, list(overrides))
    return select(cfg.sources, cfg.sampling, kw.get("seed", cfg.seed), kw.get("shard_size", cfg.shard_size)), cfg


def test_quotas_met_ids_unique_and_sha256():
    sel, cfg = _select(["sources.1.quota=40", "sources.4.quota=25"], shard_size=16)
    per_source = {}
    for r in sel.rows:
        per_source[r["source"]] = per_source.get(r["source"], 0) + 1
        assert r["prompt_id"] == hashlib.sha256(r["instruction"].encode()).hexdigest()
    assert per_source == {"truthful_qa": 3, "sharegpt": 40, "ultrachat": 3, "evol_instruct": 3, "flan": 25}
    assert len({r["prompt_id"] for r in sel.rows}) == len(sel.rows)
    assert [s.shard_id for s in sel.shards if s.source == "sharegpt"] == ["sharegpt-00000", "sharegpt-00001", "sharegpt-00002"]
    assert all(s.stop - s.start <= 16 for s in sel.shards)


def test_truthful_qa_references_present():
    sel, _ = _select()
    tqa = [r for r in sel.rows if r["source"] == "truthful_qa"]
    assert len(tqa) == 3
    assert all(r["correct_answers"] and r["incorrect_answers"] for r in tqa)
    flan = [r for r in sel.rows if r["source"] == "flan"]
    assert all("So the answer is" in r["reference_answer"] for r in flan)


def test_seeded_and_reproducible():
    a, _ = _select()
    b, _ = _select()
    c, _ = _select(seed=7)
    assert [r["prompt_id"] for r in a.rows] == [r["prompt_id"] for r in b.rows]
    assert [r["prompt_id"] for r in a.rows] != [r["prompt_id"] for r in c.rows]


def test_raising_a_quota_keeps_earlier_rows_and_shards():
    small, _ = _select(["sources.1.quota=20"], shard_size=8)
    large, _ = _select(["sources.1.quota=30"], shard_size=8)
    ids = lambda sel: [r["prompt_id"] for r in sel.rows if r["source"] == "sharegpt"]  # noqa: E731
    assert ids(large)[:20] == ids(small)
    # the first two sharegpt shards (rows 0-15) hold exactly the same rows
    assert ids(large)[:16] == ids(small)[:16]


def test_quota_above_source_names_field_and_source():
    with pytest.raises(InputError, match=r"sources\.2\.quota: ultrachat asks for 5000 rows but holds only 380"):
        _select(["sources.2.quota=5000"])


def test_counts_report_dedup_filters_and_decontamination():
    sel, _ = _select()
    c = sel.counts
    assert c["sharegpt"]["read"] == 500
    assert c["sharegpt"]["given_prompt"] == 2
    assert c["ultrachat"]["duplicate"] == 4
    assert c["evol_instruct"]["duplicate_across_sources"] == 1
    # prompts equal to a TruthfulQA question are removed from the other sources
    assert c["sharegpt"]["truthfulqa_exact"] + c["ultrachat"]["truthfulqa_exact"] + c["evol_instruct"]["truthfulqa_exact"] == 3
    for name, counts in c.items():
        dropped = sum(counts[k] for k in ("empty", "too_short", "too_long", "given_prompt", "truthfulqa_exact",
                                          "ngram_overlap", "duplicate", "duplicate_across_sources"))
        assert counts["read"] - dropped == counts["available"], name


def test_too_long_and_empty_are_counted(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"q": ""}\n{"q": "   "}\n{"q": "short one"}\n{"q": "%s"}\n' % ("x" * 50))
    src = SourceConfig(name="g", format="jsonl", path=str(path), instruction_column="q")
    sel = select([src], SamplingConfig(max_chars=20), seed=1, shard_size=10)
    assert sel.counts["g"]["empty"] == 2
    assert sel.counts["g"]["too_long"] == 1
    assert [r["instruction"] for r in sel.rows] == ["short one"]


def test_given_prompt_filter():
    assert refers_to_missing_prompt("Rewrite #The Given Prompt# to be harder")
    assert refers_to_missing_prompt("Add one more constraint to the given prompt.")
    assert not refers_to_missing_prompt("Given a prompt from a user, classify it.")


def test_ngram_decontamination(tmp_path, data_dir):
    ev = tmp_path / "eval.jsonl"
    ev.write_text('{"text": "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"}\n')
    dec = Decontaminator(Decontamination(eval_files=[EvalFile(path=str(ev), column="text")]), [])
    hit = "Please: ONE two three four five six seven eight nine ten eleven twelve thirteen, thanks"
    assert dec.reason(hit, "sharegpt", "x.json") == "ngram_overlap"
    assert dec.reason("one two three four five six seven eight nine ten eleven twelve", "sharegpt", "x.json") is None
    assert dec.reason(hit, "sharegpt", "eval.jsonl") is None  # a file is not decontaminated against itself


def test_flan_per_task_stratified(data_dir):
    cot = [str(data_dir / "flan" / f"{t}_train.tsv") for t in ("aqua", "creak", "ecqa")]
    per_task = [str(data_dir / "flan" / f"{t}_train.tsv") for t in ("qasc", "sensemaking", "strategyqa")]
    src = SourceConfig(name="flan", format="flan", path=cot, quota=5, task_path=per_task, per_task=2)
    sel = select([src], SamplingConfig(), seed=3, shard_size=100)
    tasks = {}
    for r in sel.rows:
        tasks[r["task"]] = tasks.get(r["task"], 0) + 1
    assert len(sel.rows) == 5 + 3 * 2
    assert {t: tasks[t] for t in ("cot_qasc", "cot_sensemaking", "cot_strategyqa")} == dict.fromkeys(
        ("cot_qasc", "cot_sensemaking", "cot_strategyqa"), 2)
    assert sum(tasks.get(t, 0) for t in ("cot_aqua", "cot_creak", "cot_ecqa")) == 5
    assert len({r["prompt_id"] for r in sel.rows}) == len(sel.rows)
