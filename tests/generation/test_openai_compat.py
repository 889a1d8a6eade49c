"""The OpenAI-compatible client against the real local HTTP test server."""
from __future__ import annotations

import socket
import time

import pytest

from tasks.backends.base import make_request, message_text
from tasks.backends.openai_compat import OpenAICompatBackend
from tasks.errors import EngineDiedError, RateLimitedError, TransientError
from tests.servers.fixtures import Fault, get_stats


def _reqs(n, model="judge"):
    return [make_request(f"r{i}", {"model": model, "messages": [{"role": "user", "content": f"Say {i}."}],
                                   "max_tokens": 16}) for i in range(n)]


def test_all_answered_with_bounded_concurrency(judge_server_factory):
    srv = judge_server_factory(latency_s=0.05)
    with OpenAICompatBackend("api", srv.url, concurrency=4) as be:
        results = list(be.run(_reqs(24)))
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(24))
    assert all(message_text(r) and r["error"] is None and r["latency_s"] >= 0.05 for r in results)
    stats = get_stats(srv.url)
    assert stats["answered"] == 24 and 1 < stats["max_in_flight"] <= 4


def test_retry_after_is_honoured(judge_server_factory):
    srv = judge_server_factory(faults=[Fault("429", arg=0.3, count=2)])
    started = time.monotonic()
    with OpenAICompatBackend("api", srv.url, concurrency=1) as be:
        results = list(be.run(_reqs(3)))
    assert all(message_text(r) for r in results)
    assert time.monotonic() - started >= 0.6
    assert get_stats(srv.url)["by_status"].get("429") == 2


def test_rate_limit_past_the_budget_raises(judge_server_factory):
    srv = judge_server_factory(faults=[Fault("429", arg=5, count=10)])
    with OpenAICompatBackend("api", srv.url, concurrency=1, max_rate_limit_wait_s=1) as be:
        with pytest.raises(RateLimitedError, match="max_rate_limit_wait_s"):
            list(be.run(_reqs(2)))


def test_server_errors_and_timeouts_become_error_records(judge_server_factory):
    srv = judge_server_factory(faults=[Fault("500", count=2)])
    with OpenAICompatBackend("api", srv.url, concurrency=1) as be:
        results = {r["custom_id"]: r for r in be.run(_reqs(5))}
    errors = [r for r in results.values() if r["error"]]
    assert len(errors) == 2 and all(e["error"]["code"] == "http_500" and e["response"]["status_code"] == 500
                                    for e in errors)
    srv2 = judge_server_factory(faults=[Fault("hang", arg=3, count=1)])
    with OpenAICompatBackend("api", srv2.url, concurrency=2, timeout_s=0.5) as be:
        results = list(be.run(_reqs(3)))
    assert [r["error"]["code"] for r in results if r["error"]] == ["timeout"]


def test_bad_json_is_an_error_record(judge_server_factory):
    srv = judge_server_factory(faults=[Fault("badjson", count=1)])
    with OpenAICompatBackend("api", srv.url, concurrency=1) as be:
        results = list(be.run(_reqs(2)))
    assert [r["error"]["code"] for r in results if r["error"]] == ["bad_response"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_raises_transient():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(TransientError, match="unreachable") as err:
        list(OpenAICompatBackend("api", url).run(_reqs(3)))
    assert not isinstance(err.value, EngineDiedError)
    with pytest.raises(EngineDiedError):
        list(OpenAICompatBackend("eng", url, launched=True, alive=lambda: False).run(_reqs(3)))


def test_dropped_connection_of_a_healthy_engine_is_one_error(judge_server_factory):
    srv = judge_server_factory(faults=[Fault("reset", count=1)])
    with OpenAICompatBackend("eng", srv.url, concurrency=1, launched=True, alive=lambda: True) as be:
        results = list(be.run(_reqs(3)))
    assert [r["error"]["code"] for r in results if r["error"]] == ["connection_dropped"]
    srv2 = judge_server_factory(faults=[Fault("reset", count=1)])
    with pytest.raises(EngineDiedError):
        list(OpenAICompatBackend("eng", srv2.url, concurrency=1, launched=True, alive=lambda: False).run(_reqs(3)))


def test_api_key_is_sent_and_never_shown(judge_server_factory, monkeypatch):
    srv = judge_server_factory(api_key="sk-test-secret")
    good = OpenAICompatBackend("api", srv.url, api_key="sk-test-secret", concurrency=2)
    assert "sk-test-secret" not in repr(good)
    assert all(message_text(r) for r in good.run(_reqs(2)))
    bad = list(OpenAICompatBackend("api", srv.url, api_key="wrong", concurrency=2).run(_reqs(2)))
    assert all(r["error"]["code"] == "http_401" and "wrong" not in r["error"]["message"] for r in bad)


def test_consumer_stopping_early_ends_the_client(judge_server_factory):
    srv = judge_server_factory(latency_s=0.05)
    be = OpenAICompatBackend("api", srv.url, concurrency=2)
    started = time.monotonic()
    for i, _ in enumerate(be.run(_reqs(200))):
        if i == 3:
            break
    assert time.monotonic() - started < 3
    time.sleep(0.3)
    assert get_stats(srv.url)["requests"] < 20


def test_stage_on_an_existing_endpoint_reads_the_key_from_the_named_variable(judge_server_factory, monkeypatch,
                                                                            tmp_path):
    from storage.shards import ShardStore
    from tasks.errors import InputError
    from tasks.generation.config import GenerationConfig
    from tasks.generation.engines import engine_groups
    from tasks.generation.stage import merge_shard, run_group
    from tests.generation.conftest import write_instruction_shards

    srv = judge_server_factory(api_key="sk-endpoint-secret", completion_words=30)
    store = ShardStore(str(tmp_path / "run"))
    refs = write_instruction_shards(store, per_shard=2, shards=2)
    cfg = GenerationConfig.model_validate({"k": 1, "models": [
        {"name": "api-model", "serve": "openai", "model": "judge", "base_url": srv.url,
         "api_key_env": "UF_TEST_ENDPOINT_KEY", "concurrency": 2, "sampling": {"max_tokens": 64}}]})
    (group,) = engine_groups(cfg)
    monkeypatch.delenv("UF_TEST_ENDPOINT_KEY", raising=False)
    with pytest.raises(InputError, match="generation.models.api_key_env: environment variable UF_TEST_ENDPOINT_KEY"):
        run_group(store, group, refs, cfg, 42, {}, str(tmp_path))
    monkeypatch.setenv("UF_TEST_ENDPOINT_KEY", "sk-endpoint-secret")
    res = run_group(store, group, refs, cfg, 42, {}, str(tmp_path))
    assert (res.written, res.requests, res.failed_requests) == (2, 4, 0)
    rows = [r for ref in refs for r in store.read_shard(merge_shard(store, ref, cfg, 42, {})).to_pylist()]
    assert len(rows) == 4 and all(r["backend"] == "openai" and r["response"] and r["completion_tokens"] for r in rows)
    assert get_stats(srv.url)["by_model"]["judge"]["requests"] == 4
    assert not any("sk-endpoint-secret" in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())


def test_a_key_echoed_in_an_error_body_is_redacted():
    from tasks.backends.openai_compat import OpenAICompatBackend

    backend = OpenAICompatBackend("m", "http://127.0.0.1:1/v1", api_key="sk-test-FAKE123")
    echoed = {"custom_id": "x", "response": {"status_code": 401, "body": {"error": {"message": "bad key sk-test-FAKE123"}}},
              "error": {"code": "http_401", "message": "bad key sk-test-FAKE123"}, "latency_s": 0.1}
    out = backend._scrub(echoed)
    assert "sk-test-FAKE123" not in repr(out)
    assert out["error"]["message"] == "bad key [redacted]"
    assert out["response"]["body"]["error"]["message"] == "bad key [redacted]"
