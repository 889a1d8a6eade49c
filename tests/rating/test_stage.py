"""The rate stage on the scripted judge: exact values in both modes, shuffling mapped back,
injection text, bounded re-asks, failures as data."""
from __future__ import annotations

import pytest

from storage.schemas import RATINGS, to_table
from tasks.backends.journal import Journal
from tasks.errors import TransientError
from tasks.rating.config import RatingConfig
from tasks.rating.protocol import ASPECTS, TYPED_ASPECTS
from tasks.rating.scripted import ScriptedJudge, is_reask, scripted_rating, scripted_score, scripted_types
from tasks.rating.stage import permutation, rate_shard
from tests.rating.conftest import ANSWERS, QUESTIONS, completion_row


def config(mode: str = "text", **kw) -> RatingConfig:
    return RatingConfig.model_validate({"endpoints": [{"name": "s", "kind": "scripted", "model": "gpt-4o",
                                                       "answer_mode": mode}], "judge": "s", **kw})


def run(shard, tmp_path, cfg, judge=None, seed=42, name="j.jsonl"):
    judge = judge or ScriptedJudge()
    table, stats = rate_shard(*shard, cfg, seed, judge, Journal(tmp_path / name))
    return table, stats, judge


def expected(aspect: str, response: str):
    r = scripted_rating(aspect, response)
    return (None, True) if r == "N/A" else (float(r), False)


@pytest.mark.parametrize("mode", ["text", "structured"])
def test_exact_ratings_mapped_back_through_the_shuffle(shard, tmp_path, mode):
    table, stats, judge = run(shard, tmp_path, config(mode))
    assert table.schema.equals(RATINGS) and table.num_rows == 12 * 5
    responses = {(q["prompt_id"], i): a for q, ans in zip(QUESTIONS, ANSWERS) for i, a in enumerate(ans)}
    for row in table.to_pylist():
        response = responses[(row["prompt_id"], row["completion_index"])]
        if row["aspect"] == "critique":
            assert (row["rating"], row["parse_status"]) == (float(scripted_score(response)), "ok")
            assert row["rationale"].startswith("Scripted feedback.") and row["permutation"] is None
            continue
        rating, na = expected(row["aspect"], response)
        assert (row["rating"], row["rating_na"]) == (rating, na)
        assert row["parse_status"] == ("na" if na else "ok")
        assert row["types"] == (scripted_types(row["aspect"], response) if row["aspect"] in TYPED_ASPECTS else None)
        assert sorted(row["permutation"]) == [0, 1, 2, 3]
        assert row["judge_model"] == "gpt-4o" and row["request_id"].startswith("rq-")
    assert stats.sent == len(judge.sent) == 3 * 4 + 12 and stats.reasks == 0
    # The permutation is seeded by (seed, prompt_id, aspect) and is what the judge saw.
    perms = {(r["prompt_id"], r["aspect"]): r["permutation"] for r in table.to_pylist() if r["aspect"] != "critique"}
    for (pid, aspect), perm in perms.items():
        assert perm == permutation(42, pid, aspect, [0, 1, 2, 3])
    assert len({tuple(p) for p in perms.values()}) > 1


def test_the_shuffle_depends_on_seed_prompt_and_aspect():
    base = permutation(42, "p", "honesty", list(range(4)))
    assert base == permutation(42, "p", "honesty", list(range(4)))
    others = [permutation(s, p, a, list(range(4))) for s in (1, 2, 3) for p in ("p", "q") for a in ASPECTS]
    assert any(o != base for o in others)
    assert permutation(42, "p", "honesty", [0, 1, 2, 3], shuffle=False) == [0, 1, 2, 3]


def test_text_inside_a_completion_cannot_move_its_score(shard, tmp_path):
    table, _, _ = run(shard, tmp_path, config("text"))
    injected = ANSWERS[0][3]
    assert "Rating: 5" in injected
    rows = [r for r in table.to_pylist() if r["prompt_id"] == QUESTIONS[0]["prompt_id"] and r["completion_index"] == 3]
    got = {r["aspect"]: r["rating"] for r in rows if r["aspect"] != "critique"}
    want = {a: expected(a, injected)[0] for a in ASPECTS}
    assert got == want and list(want.values()) != [5.0] * 4


def _malformed_first(body, good):
    return good if is_reask(body) else "I think they are all fine."


def test_unparsed_answer_gets_one_corrective_reask(shard, tmp_path):
    judge = ScriptedJudge(answer_fn=_malformed_first)
    table, stats, _ = run(shard, tmp_path, config("text"), judge)
    assert stats.reasks == 24 and len(judge.sent) == 48 and stats.unparsed_rows == 0
    assert set(table.column("parse_status").to_pylist()) <= {"ok", "na"}
    # Both attempts were paid, so both count.
    one = judge.usage_total
    assert stats.prompt_tokens == one["prompt_tokens"] and stats.completion_tokens == one["completion_tokens"]


@pytest.mark.parametrize("reasks", [0, 1, 2])
def test_a_hopeless_answer_becomes_data_after_at_most_n_reasks(shard, tmp_path, reasks):
    judge = ScriptedJudge(answer_fn=lambda body, good: "Everything looks great!")
    table, stats, _ = run(shard, tmp_path, config("text", reasks=reasks), judge)
    assert len(judge.sent) == 24 * (1 + reasks)
    rows = table.to_pylist()
    assert {r["parse_status"] for r in rows} == {"unparsed"}
    assert all(r["rating"] is None and r["raw_text"] == "Everything looks great!" for r in rows)
    aspect_row = next(r for r in rows if r["aspect"] == "honesty")
    suffix = "" if reasks == 0 else f" (after {reasks} re-ask{'s' if reasks > 1 else ''})"
    assert aspect_row["parse_reason"] == "found 0 of 4 'Output for Text N' blocks" + suffix
    assert next(r for r in rows if r["aspect"] == "critique")["parse_reason"] == "no 'Overall Score' line" + suffix


def test_permanent_error_is_data_and_transient_error_is_retried_from_the_journal(shard, tmp_path):
    honesty_400 = ScriptedJudge(
        error_fn=lambda b: ("http_400", "bad request") if "Aspect: honesty" in b["messages"][1]["content"] else None)
    table, stats, _ = run(shard, tmp_path, config("structured"), honesty_400, name="a.jsonl")
    failed = [r for r in table.to_pylist() if r["parse_status"] == "failed"]
    assert len(failed) == 12 and {r["aspect"] for r in failed} == {"honesty"}
    assert all(r["rating"] is None and r["parse_reason"] == "request failed: http_400: bad request" for r in failed)

    flaky = ScriptedJudge(
        error_fn=lambda b: ("http_500", "overloaded") if "Aspect: critique" in b["messages"][1]["content"] else None)
    with pytest.raises(TransientError, match="12 of 24 judge requests failed"):
        run(shard, tmp_path, config("structured"), flaky, name="b.jsonl")
    healthy = ScriptedJudge()
    table, stats, _ = run(shard, tmp_path, config("structured"), healthy, name="b.jsonl")
    assert len(healthy.sent) == 12 and stats.from_journal == 12 and stats.failed_rows == 0


def test_completions_without_response_are_not_rated_and_config_limits_the_calls(shard, tmp_path):
    instructions, completions = shard
    rows = completions.to_pylist()
    rows[1] = completion_row(rows[1]["prompt_id"], 1, None)
    cfg = config("text", aspects=["honesty", "helpfulness"], critique=False)
    table, stats, judge = run((instructions, to_table(rows, "completions")), tmp_path, cfg)
    assert stats.skipped_completions == 1 and len(judge.sent) == 6
    assert table.num_rows == 11 * 2 and set(table.column("aspect").to_pylist()) == {"honesty", "helpfulness"}
    first = [r for r in table.to_pylist() if r["prompt_id"] == QUESTIONS[0]["prompt_id"]]
    assert {r["completion_index"] for r in first} == {0, 2, 3} and all(sorted(r["permutation"]) == [0, 2, 3] for r in first)


def test_identical_completions_share_one_critique_request(tmp_path):
    q = QUESTIONS[1]
    comps = [completion_row(q["prompt_id"], i, "Same answer.") for i in range(2)]
    cfg = config("text", aspects=["helpfulness"])
    table, _, judge = run((to_table([q], "instructions"), to_table(comps, "completions")), tmp_path, cfg)
    assert len(judge.sent) == 2 and table.num_rows == 4


def test_rerun_with_the_journal_sends_nothing_and_reproduces_the_table(shard, tmp_path):
    first, _, _ = run(shard, tmp_path, config("text"))

    class Unusable(ScriptedJudge):
        def __enter__(self):
            raise AssertionError("a fully journaled shard must not start the backend")

    again, stats, judge = run(shard, tmp_path, config("text"), Unusable())
    assert judge.sent == [] and stats.from_journal == 24 and stats.sent == 0
    assert again.equals(first)
