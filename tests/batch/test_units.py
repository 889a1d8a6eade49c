"""Pure parts of batch mode: the batch record (torn lines, reloading), file splitting, batch
prices, the config rules, and the OpenAI <-> Anthropic mapping."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.backends.anthropic_messages import to_completion, to_params
from tasks.backends.base import result_error
from tasks.backends.batch_lifecycle import resubmittable, split
from tasks.backends.batch_state import BatchState, in_flight, state_path
from tasks.errors import InputError
from tasks.rating import prompts
from tasks.rating.config import JudgeEndpoint, Price, RatingConfig
from tasks.rating.cost import format_summary, with_realtime_equivalent
from tasks.rating.parse import parse


def test_state_survives_a_torn_line_and_reloads_every_step(tmp_path):
    path = state_path(tmp_path / "journal" / "shard-00001.jsonl")
    assert path.name == "shard-00001.batches.jsonl"
    st = BatchState(path)
    g = st.intend(["rq-a", "rq-b"], 0)
    st.uploaded(g, "file-1")
    with open(path, "ab") as fh:
        fh.write(b'{"event": "created", "gro')  # a kill mid-write
    st.created(g, "batch_1")
    again = BatchState(path).load()
    assert again.torn_lines == 1
    (h,) = again.groups.values()
    assert (h.ids, h.file_id, h.batch_id, h.open) == (["rq-a", "rq-b"], "file-1", "batch_1", True)
    st.seen(g, {"status": "in_progress", "completed": 1, "failed": 0})
    assert [(r["batch_id"], r["status"], r["requests"]) for r in in_flight([path])] == [("batch_1", "in_progress", 2)]
    st.close(g, "completed")
    assert BatchState(path).load().open_groups() == [] and in_flight([path]) == []
    assert st.intend(["rq-a", "rq-b"], 0).group != g.group  # the same ids later: a new group


def test_split_respects_lines_and_bytes():
    lines = [(f"rq-{i}", b"x" * 10) for i in range(7)]
    assert [len(p) for p in split(lines, 3, 10**6)] == [3, 3, 1]
    assert [len(p) for p in split(lines, 100, 25)] == [2, 2, 2, 1]
    with pytest.raises(InputError, match="batch.max_bytes"):
        split([("rq-big", b"x" * 30)], 100, 25)


def test_which_errors_go_into_a_new_batch():
    assert resubmittable(result_error("a", "batch_expired", ""))
    assert resubmittable(result_error("a", "http_500", "")) and resubmittable(result_error("a", "http_429", ""))
    assert not resubmittable(result_error("a", "http_400", ""))
    assert not resubmittable(result_error("a", "invalid_request_error", ""))


def test_batch_price_defaults_to_half_and_can_be_set():
    p = Price(input_per_1m=2.5, output_per_1m=10.0)
    assert p.for_mode("realtime") is p
    assert (p.for_mode("batch").input_per_1m, p.for_mode("batch").output_per_1m) == (1.25, 5.0)
    q = Price(input_per_1m=3.0, output_per_1m=15.0, batch_input_per_1m=1.0, batch_discount=0.4)
    assert (q.for_mode("batch").input_per_1m, q.for_mode("batch").output_per_1m) == (1.0, 6.0)
    cfg = RatingConfig.model_validate({"endpoints": [{"name": "j", "kind": "openai", "model": "gpt-4o", "mode": "batch"}],
                                       "judge": "j"})
    assert cfg.price("gpt-4o", "batch").input_per_1m == 1.25 and cfg.price("gpt-4o").input_per_1m == 2.5
    lines = with_realtime_equivalent([{"stage": "rate", "model": "gpt-4o", "requests": 2, "prompt_tokens": 10**6,
                                       "completion_tokens": 10**5, "usd": 1.75, "unpriced_requests": 0}],
                                      cfg.prices, "batch")
    assert lines[0]["realtime_usd"] == pytest.approx(3.5)
    text = format_summary(lines)
    assert "| rate | gpt-4o | batch | 2 |" in text and "1.7500 USD paid; 3.5000 USD at realtime prices, 50% less" in text


def test_batch_mode_needs_a_provider_batch_api():
    with pytest.raises(ValidationError, match="mode: batch needs a provider Batch API"):
        JudgeEndpoint(name="j", kind="local_vllm", model="m", mode="batch")
    assert JudgeEndpoint(name="a", kind="anthropic", model="claude", mode="batch").key_env == "ANTHROPIC_API_KEY"


@pytest.mark.parametrize("mode", ["text", "structured"])
def test_openai_bodies_map_onto_messages_and_back(mode):
    user = prompts.aspect_user_message("honesty", "Is the sea salty?", ["Yes.", "No."], mode)
    body = prompts.request_body("claude", user, "honesty", 2, mode, temperature=0.0, top_p=0.6, max_tokens=512)
    params = to_params(body)
    assert params["system"] == body["messages"][0]["content"] and params["messages"] == body["messages"][1:]
    assert (params["max_tokens"], params["temperature"], params["top_p"]) == (512, 0.0, 0.6)
    if mode == "structured":
        assert params["tool_choice"] == {"type": "tool", "name": "answer"}
        assert params["tools"][0]["input_schema"] == body["response_format"]["json_schema"]["schema"]
        answer = {"outputs": [{"rating": "4", "rationale": "ok"}, {"rating": "N/A", "rationale": "unsure"}]}
        content = [{"type": "tool_use", "id": "t", "name": "answer", "input": answer}]
    else:
        assert "tools" not in params
        content = [{"type": "text", "text": "#### Output for Text 1\nRating: 4\nRationale: ok\n\n"
                                            "#### Output for Text 2\nRating: N/A\nRationale: unsure"}]
    done = to_completion({"id": "msg", "model": "claude", "content": content, "stop_reason": "end_turn",
                          "usage": {"input_tokens": 100, "output_tokens": 20}})
    assert done["usage"] == {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    parsed = parse(done["choices"][0]["message"]["content"], "honesty", 2, mode)
    assert parsed.ok and [j.rating for j in parsed.items][0] == 4 and parsed.items[1].na
    cut = to_completion({"content": content, "stop_reason": "max_tokens", "usage": {}})
    assert cut["choices"][0]["finish_reason"] == "length"


def test_status_lists_batches_in_flight(tmp_path, capsys):
    from flows.cli import main

    st = BatchState(tmp_path / "journal" / "rate" / "flan-00000.batches.jsonl")
    g = st.intend(["rq-a", "rq-b", "rq-c"], 0)
    st.created(g, "batch_42")
    st.seen(g, {"status": "in_progress", "total": 3, "completed": 1, "failed": 0})
    assert main(["status", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "provider batches in flight: 1" in out
    assert "flan-00000: batch_42 in_progress, 3 requests, 1 completed, 0 failed" in out
