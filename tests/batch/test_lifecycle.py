"""The batch lifecycle against the OpenAI Files + Batches test server, through the openai SDK:
status progression, file limits, expiry and line errors resubmitting only what is missing,
cancellation, a rejected file, and batches left in flight then collected by a new backend."""
from __future__ import annotations

import json

import pytest

from tasks.backends.base import make_request, message_text
from tasks.backends.batch_settings import BatchSettings
from tasks.backends.batch_state import BatchState, in_flight
from tasks.backends.openai_batch import batch_backend, openai_client
from tasks.errors import BatchInFlight, InputError
from tasks.rating.config import RatingConfig
from tasks.rating.stage import _body, build_calls
from tests.batch.conftest import control
from tests.servers.fixtures import get_stats

pytestmark = pytest.mark.http


def judge_requests(shard) -> list[dict]:
    cfg = RatingConfig.model_validate({"endpoints": [{"name": "j", "kind": "scripted", "model": "judge",
                                                      "answer_mode": "text"}], "judge": "j"})
    calls, _ = build_calls(*shard, cfg, 42)
    out = {}
    for call in calls:
        body, request_id = _body(call, cfg)
        out[request_id] = make_request(request_id, body)
    return list(out.values())


def backend(srv, tmp_path, **settings):
    settings = {"poll_interval_s": 0.02, "max_wait_s": 10.0, **settings}
    return batch_backend(openai_client("openai_compatible", srv.url, None), "test", BatchSettings(**settings),
                         tmp_path / "s.batches.jsonl")


def run(srv, tmp_path, reqs, **settings) -> dict[str, dict]:
    with backend(srv, tmp_path, **settings) as be:
        return {r["custom_id"]: r for r in be.run(reqs)}


def input_ids(srv, batch: dict) -> list[str]:
    data = srv.file_data[batch["input_file_id"]]
    return [json.loads(line)["custom_id"] for line in data.splitlines()]


def test_status_progression_and_answers_equal_realtime(batch_server_factory, shard, tmp_path):
    srv = batch_server_factory(polls_per_status=2)
    reqs = judge_requests(shard)
    got = run(srv, tmp_path, reqs)
    assert set(got) == {r["custom_id"] for r in reqs} and len(reqs) == 24
    assert get_stats(srv.url)["duplicates"] == [] and get_stats(srv.url)["answered"] == 24
    import openai

    realtime = openai.OpenAI(base_url=srv.url, api_key="x")
    for req in reqs[:5]:  # the same scripted judge answers the realtime route identically
        live = realtime.chat.completions.create(**req["body"]).choices[0].message.content
        assert message_text(got[req["custom_id"]]) == live
    stats = control(srv.url, "/_batch_stats")
    assert stats["creates"] == 1 and stats["uploads"] == 1 and stats["lines_answered"] == 24
    seen = [json.loads(line) for line in (tmp_path / "s.batches.jsonl").read_text().splitlines()]
    statuses = [e["info"]["status"] for e in seen if e["event"] == "seen"]
    assert statuses == ["validating", "in_progress", "finalizing", "completed"]
    assert seen[-1]["event"] == "closed" and seen[-1]["status"] == "completed"


def test_files_are_split_to_the_line_and_byte_limits(batch_server, shard, tmp_path):
    reqs = judge_requests(shard)
    got = run(batch_server, tmp_path, reqs, max_lines=10)
    assert len(got) == 24
    batches = control(batch_server.url, "/_batch_stats")["batches"]
    assert sorted(len(input_ids(batch_server, b)) for b in batches) == [4, 10, 10]
    biggest = max(len(json.dumps(r)) for r in reqs)
    run(batch_server, tmp_path / "b", reqs, max_bytes=biggest * 3)  # from the journal's view: all new again
    assert all(len(batch_server.file_data[b["input_file_id"]]) <= biggest * 3
               for b in control(batch_server.url, "/_batch_stats")["batches"][3:])


def test_expired_batch_resubmits_only_its_missing_lines(batch_server, shard, tmp_path):
    control(batch_server.url, "/_batch_faults", {"faults": [{"kind": "expire", "answer": 9}]})
    reqs = judge_requests(shard)
    got = run(batch_server, tmp_path, reqs)
    assert all(message_text(r) for r in got.values()) and len(got) == 24
    first, second = control(batch_server.url, "/_batch_stats")["batches"]
    assert first["status"] == "expired" and first["request_counts"] == {"total": 24, "completed": 9, "failed": 15}
    assert sorted(input_ids(batch_server, second)) == sorted(input_ids(batch_server, first)[9:])
    stats = get_stats(batch_server.url)
    assert stats["answered"] == 24 and stats["duplicates"] == []


def test_line_errors_are_resubmitted_and_a_budget_bounds_it(batch_server, shard, tmp_path):
    reqs = judge_requests(shard)
    control(batch_server.url, "/_batch_faults", {"faults": [{"kind": "line_errors", "count": 3, "status": 500}]})
    got = run(batch_server, tmp_path, reqs)
    assert all(message_text(r) for r in got.values())
    first, second = control(batch_server.url, "/_batch_stats")["batches"]
    assert first["error_file_id"] and len(input_ids(batch_server, second)) == 3
    # With no resubmits left the lines come back as transient errors (the orchestrator retries).
    control(batch_server.url, "/_batch_faults", {"faults": [{"kind": "line_errors", "count": 2, "status": 503}]})
    got = run(batch_server, tmp_path / "b", reqs, resubmits=0)
    errors = [r for r in got.values() if r["error"]]
    assert [e["error"]["code"] for e in errors] == ["http_503", "http_503"] and len(got) == 24


def test_cancelled_batch_resubmits_what_it_did_not_answer(batch_server, shard, tmp_path):
    srv = batch_server
    control(srv.url, "/_batch_faults", {"faults": [{"kind": "hold"}]})  # stays in_progress
    reqs = judge_requests(shard)
    with pytest.raises(BatchInFlight):
        run(srv, tmp_path, reqs, max_wait_s=0)
    batch_id = BatchState(tmp_path / "s.batches.jsonl").load().open_groups()[0].batch_id
    import openai

    openai.OpenAI(base_url=srv.url, api_key="x").batches.cancel(batch_id)  # someone cancels it in the console
    got = run(srv, tmp_path, reqs)
    assert all(message_text(r) for r in got.values()) and len(got) == 24
    first, second = control(srv.url, "/_batch_stats")["batches"]
    assert first["status"] == "cancelled" and first["request_counts"]["completed"] == 12
    assert len(input_ids(srv, second)) == 12 and get_stats(srv.url)["duplicates"] == []


def test_rejected_file_stops_with_the_providers_message(batch_server, shard, tmp_path):
    reqs = judge_requests(shard)
    bad = [dict(reqs[0]), *reqs[1:3]]
    bad[0]["body"] = {**bad[0]["body"], "model": "other-model"}  # one file, two models: OpenAI refuses it
    with pytest.raises(InputError, match=r"rejected by the provider: mismatched_model"):
        run(batch_server, tmp_path, bad)
    assert get_stats(batch_server.url)["answered"] == 0
    assert [g.closed for g in BatchState(tmp_path / "s.batches.jsonl").load().groups.values()] == ["rejected"]
    assert len(run(batch_server, tmp_path, reqs[:3])) == 3  # fixed input: a new batch, nothing left behind


def test_in_flight_batches_are_collected_by_a_later_backend(batch_server_factory, shard, tmp_path):
    srv = batch_server_factory()
    control(srv.url, "/_batch_faults", {"faults": [{"kind": "hold"}]})
    reqs = judge_requests(shard)
    with pytest.raises(BatchInFlight) as info:
        run(srv, tmp_path, reqs, max_wait_s=0.1)
    assert info.value.batches[0]["status"] == "in_progress" and info.value.batches[0]["requests"] == 24
    listed = in_flight([tmp_path / "s.batches.jsonl"])
    assert [(r["status"], r["requests"]) for r in listed] == [("in_progress", 24)] and listed[0]["batch_id"]
    control(srv.url, "/_batch_release", {})
    got = run(srv, tmp_path, reqs)  # a new process: adopts the recorded batch, creates nothing
    assert len(got) == 24 and control(srv.url, "/_batch_stats")["creates"] == 1
    assert in_flight([tmp_path / "s.batches.jsonl"]) == []


def test_azure_openai_batch_paths_and_deployment(batch_server, shard, tmp_path, monkeypatch):
    """kind azure: AzureOpenAI client (api-key header, /openai/... paths, api-version), lines
    with url /chat/completions and the deployment as the model."""
    from tasks.backends.batch_state import state_path
    from tasks.rating.config import JudgeEndpoint
    from tasks.rating.judges import open_judge

    monkeypatch.setenv("UF_TEST_AZURE_KEY", "azure-key")
    batch_server.api_key = "azure-key"
    ep = JudgeEndpoint(name="az", kind="azure", model="gpt-4o", deployment="my-gpt4o", api_version="2024-10-21",
                       base_url=batch_server.url.rsplit("/v1", 1)[0], api_key_env="UF_TEST_AZURE_KEY", mode="batch",
                       batch={"poll_interval_s": 0.02, "max_wait_s": 10})
    reqs = [{**r, "body": {**r["body"], "model": ep.request_model}} for r in judge_requests(shard)]
    with open_judge(ep, str(tmp_path), state_path(tmp_path / "j.jsonl")) as be:
        got = {r["custom_id"]: r for r in be.run(reqs)}
    assert len(got) == 24 and all(message_text(r) for r in got.values())
    (batch,) = control(batch_server.url, "/_batch_stats")["batches"]
    assert batch["endpoint"] == "/chat/completions"
    lines = [json.loads(x) for x in batch_server.file_data[batch["input_file_id"]].splitlines()]
    assert {(x["url"], x["body"]["model"]) for x in lines} == {("/chat/completions", "my-gpt4o")}
