"""Position-bias check: original ratings come from the real rate-stage logic with the
scripted judge; the check re-rates with the completion order reversed."""
from __future__ import annotations

import json

import pytest

from assemble_fixtures import evol_rows, instruction_records, truthfulqa_rows
from storage.schemas import to_table
from tasks.assemble.position_bias import position_bias_check, sample_prompts
from tasks.backends.scripted_judge import ScriptedJudge
from tasks.rating.config import JudgeEndpoint, RatingConfig
from tasks.backends.journal import Journal
from tasks.rating.protocol import find_texts
from tasks.rating.stage import rate_shard


def _tables(n_prompts=6, k=4):
    prompts = evol_rows(n_prompts - 2) + truthfulqa_rows(2)
    ins = instruction_records(prompts)
    comps = [{"prompt_id": r["prompt_id"], "completion_index": j, "model": f"model-{j}", "principle": "helpfulness",
              "system_prompt": "Be helpful.", "response": f"Completion {j}: an answer to '{r['instruction'][:30]}'.",
              "finish_reason": "stop", "prompt_tokens": 10, "completion_tokens": 20, "latency_s": 0.1,
              "backend": "scripted", "request_id": f"g-{r['prompt_id'][:6]}-{j}", "error": None}
             for r in ins for j in range(k)]
    return to_table(ins, "instructions"), to_table(comps, "completions")


@pytest.fixture(params=["text", "structured"])
def rated(request, tmp_path):
    cfg = RatingConfig(endpoints=[JudgeEndpoint(name="s", kind="scripted", model="scripted-judge",
                                                answer_mode=request.param)], judge="s")
    ins, comps = _tables()
    ratings, _ = rate_shard(ins, comps, cfg, 42, ScriptedJudge(), Journal(tmp_path / "rate.jsonl"))
    return cfg, ins, comps, ratings


def test_position_independent_judge_agrees_fully(rated, tmp_path):
    cfg, ins, comps, ratings = rated
    judge = ScriptedJudge()
    res = position_bias_check(ins, comps, ratings, cfg, judge, sample=4, seed=1, journal=Journal(tmp_path / "pb.jsonl"))
    assert res.prompts == 4 and res.requests == 4 * 4 and len(judge.sent) == 16
    table = res.table.set_index("aspect")
    assert list(table.index) == ["instruction_following", "honesty", "truthfulness", "helpfulness"]
    assert (table["compared"] == 16).all() and (table["exact_rate"] == 1.0).all()
    assert (table["within_one_rate"] == 1.0).all() and (table["not_compared"] == 0).all()
    # Each re-rating really presented the texts in the opposite order.
    assert all(d["reversed_position"] == 5 - d["original_position"] for d in res.details)
    # A rerun is answered from the journal: nothing is sent (or paid) again.
    again = ScriptedJudge()
    position_bias_check(ins, comps, ratings, cfg, again, sample=4, seed=1, journal=Journal(tmp_path / "pb.jsonl"))
    assert again.sent == []


def _first_text_gets_five(body, answer):
    """A judge that gives 5 to whatever text it sees first and 1 to the rest."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    texts = find_texts(user)
    if not texts:
        return None  # a critique: keep the scripted answer
    ratings = ["5"] + ["1"] * (len(texts) - 1)
    if "response_format" in body:
        data = json.loads(answer)
        for item, r in zip(data["outputs"], ratings):
            item["rating"] = r
        return json.dumps(data)
    return "\n\n".join(f"Output for Text {k}\nType: None\nRationale: x\nRating: {r}\nRationale: y"
                       if "Type:" in answer else f"Output for Text {k}\nRating: {r}\nRationale: y"
                       for k, r in enumerate(ratings, 1))


def test_biased_judge_disagrees_where_position_changed(tmp_path):
    cfg = RatingConfig(endpoints=[JudgeEndpoint(name="s", kind="scripted", model="scripted-judge",
                                                answer_mode="structured")], judge="s")
    ins, comps = _tables(n_prompts=5)
    biased = ScriptedJudge(answer_fn=_first_text_gets_five)
    ratings, _ = rate_shard(ins, comps, cfg, 42, biased, Journal(tmp_path / "rate.jsonl"))
    res = position_bias_check(ins, comps, ratings, cfg, ScriptedJudge(answer_fn=_first_text_gets_five),
                              sample=5, seed=3)
    # Per call of 4 texts: the first and last swap places (5<->1), the middle two stay 1.
    t = res.table.set_index("aspect")
    assert (t["compared"] == 20).all()
    assert (t["exact"] == 10).all() and (t["exact_rate"] == 0.5).all()
    assert (t["within_one"] == 10).all() and (t["mean_shift"] == 0.0).all()


def test_failed_requests_are_not_compared(rated):
    cfg, ins, comps, ratings = rated
    judge = ScriptedJudge(error_fn=lambda body: ("server_error", "boom"))
    res = position_bias_check(ins, comps, ratings, cfg, judge, sample=2, seed=1)
    assert res.failed_requests == res.requests == 8
    assert (res.table["compared"] == 0).all() and (res.table["not_compared"] == 8).all()
    assert res.table["exact_rate"].isna().all()


def test_sample_is_seeded_and_bounded(rated):
    _, _, _, ratings = rated
    assert sample_prompts(ratings, 3, 5) == sample_prompts(ratings, 3, 5)
    assert len(sample_prompts(ratings, 100, 5)) == 6
