"""Cost accounting: per-request prices, per-model summaries that count each request once."""
from __future__ import annotations

import pytest

from tasks.backends.journal import Journal
from tasks.rating.config import Price, RatingConfig
from tasks.rating.cost import format_summary, merge, request_cost, summarize, summarize_table
from tasks.rating.scripted import ScriptedJudge
from tasks.rating.stage import rate_shard


def test_request_cost():
    price = Price(input_per_1m=2.5, output_per_1m=10.0)
    assert request_cost(1_000_000, 0, price) == 2.5
    assert request_cost(2000, 500, price) == pytest.approx(0.005 + 0.005)
    assert request_cost(2000, 500, None) is None and request_cost(None, 5, price) is None


def test_summary_counts_each_request_once_and_reports_unpriced():
    rows = [
        {"judge_model": "gpt-4o", "prompt_tokens": 100, "completion_tokens": 10, "cost_usd": 0.5, "request_id": "a"},
        {"judge_model": "gpt-4o", "prompt_tokens": 100, "completion_tokens": 10, "cost_usd": 0.5, "request_id": "a"},
        {"judge_model": "gpt-4o", "prompt_tokens": 7, "completion_tokens": 3, "cost_usd": 0.25, "request_id": "b"},
        {"judge_model": "local", "prompt_tokens": 5, "completion_tokens": 5, "cost_usd": None, "request_id": "c"},
    ]
    s = summarize(rows, "rate", model_key="judge_model")
    assert s == [
        {"stage": "rate", "model": "gpt-4o", "requests": 2, "prompt_tokens": 107, "completion_tokens": 13, "usd": 0.75,
         "unpriced_requests": 0},
        {"stage": "rate", "model": "local", "requests": 1, "prompt_tokens": 5, "completion_tokens": 5, "usd": None,
         "unpriced_requests": 1},
    ]
    both = merge(s, s)
    assert both[0]["requests"] == 4 and both[0]["usd"] == 1.5 and both[1]["usd"] is None
    text = format_summary(both)
    assert "| rate | gpt-4o | 4 | 214 | 26 | 1.5000 |" in text and "| rate | local | 2 | 10 | 10 | unpriced |" in text
    assert text.endswith("Total: 1.5000 USD plus unpriced requests")


def test_shard_cost_matches_the_tokens_the_judge_reported(shard, tmp_path):
    cfg = RatingConfig.model_validate({
        "endpoints": [{"name": "s", "kind": "scripted", "model": "judge-x", "answer_mode": "text"}], "judge": "s",
        "prices": {"judge-x": {"input_per_1m": 3.0, "output_per_1m": 15.0}}})
    judge = ScriptedJudge(answer_fn=lambda body, good: good if "attempt 2" in body["messages"][1]["content"]
                          or "Aspect: honesty" not in body["messages"][1]["content"] else "unreadable")
    table, stats = rate_shard(*shard, cfg, 42, judge, Journal(tmp_path / "j.jsonl"))
    [line] = summarize_table(table, "rate")
    used = judge.usage_total
    assert line["requests"] == 24  # 3 honesty answers were re-asked: their rows carry both attempts
    assert (line["prompt_tokens"], line["completion_tokens"]) == (used["prompt_tokens"], used["completion_tokens"])
    assert line["usd"] == pytest.approx((used["prompt_tokens"] * 3.0 + used["completion_tokens"] * 15.0) / 1e6)
    assert stats.cost_usd == pytest.approx(line["usd"]) and stats.reasks == 3
