"""The one OpenAI-protocol client against the real local HTTP test server: concurrency,
429s, per-request retries of transient faults, fatal answers, the breaker, key hygiene."""
from __future__ import annotations

import socket
import time

import pytest

from tasks.backends.base import make_request, message_text
from tasks.backends.faults import RequestPolicy
from tasks.backends.limiter import reset_limiters
from tasks.backends.openai_http import OpenAIHTTPBackend
from tasks.errors import CircuitOpenError, EndpointFatalError, EngineDiedError, RateLimitedError
from tests.servers.fixtures import Fault, get_stats

pytestmark = pytest.mark.http
FAST = dict(backoff_base_s=0.01, backoff_cap_s=0.05)


@pytest.fixture(autouse=True)
def _fresh_limiters():
    reset_limiters()
    yield
    reset_limiters()


def _reqs(n, model="judge"):
    return [make_request(f"r{i}", {"model": model, "messages": [{"role": "user", "content": f"Say {i}."}],
                                   "max_tokens": 16}) for i in range(n)]


def _backend(url, launched=False, **kw):
    policy = RequestPolicy(**{**FAST, **kw.pop("policy", {})})
    kw.setdefault("max_concurrency", 1)
    return OpenAIHTTPBackend("api", url, policy=policy, launched=launched, rpm=kw.pop("rpm", None) or 6000, **kw)


def test_all_answered_with_bounded_concurrency(judge_server_factory):
    srv = judge_server_factory(latency_s=0.05)
    with _backend(srv.url, max_concurrency=4) as be:
        results = list(be.run(_reqs(24)))
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(24))
    assert all(message_text(r) and r["error"] is None and r["latency_s"] >= 0.05 for r in results)
    stats = get_stats(srv.url)
    assert stats["answered"] == 24 and 1 < stats["max_in_flight"] <= 4


def test_without_known_limits_a_hosted_endpoint_is_probed_from_one_request_in_flight(judge_server_factory):
    srv = judge_server_factory(latency_s=0.05)
    with OpenAIHTTPBackend("api", srv.url, max_concurrency=8) as be:
        assert be.limiter.concurrency == 1  # slow start: no storm before the endpoint has answered
        assert len(list(be.run(_reqs(12)))) == 12
    assert be.limiter.concurrency == 8
    launched = OpenAIHTTPBackend("eng", srv.url, max_concurrency=8, launched=True, limit_key="launched")
    assert launched.limiter.concurrency == 8  # our own engine: full concurrency at once


def test_retry_after_is_honoured(judge_server_factory):
    srv = judge_server_factory(faults=[Fault("429", arg=0.3, count=2)])
    started = time.monotonic()
    with _backend(srv.url) as be:
        results = list(be.run(_reqs(3)))
    assert all(message_text(r) for r in results)
    assert time.monotonic() - started >= 0.6
    assert get_stats(srv.url)["by_status"].get("429") == 2


def test_rate_limit_past_the_budget_raises(judge_server_factory):
    srv = judge_server_factory(faults=[Fault("429", arg=5, count=10)])
    with _backend(srv.url, policy={"max_rate_limit_wait_s": 1}) as be:
        with pytest.raises(RateLimitedError, match="max_rate_limit_wait_s"):
            list(be.run(_reqs(2)))


@pytest.mark.parametrize("kind,code", [("500", "http_500"), ("503", "http_503"), ("reset", "connection_error"),
                                       ("cut", "connection_error"), ("badjson", "bad_response")])
def test_transient_faults_are_retried_per_request_until_answered(judge_server_factory, kind, code):
    srv = judge_server_factory(faults=[Fault(kind, count=3)])
    with _backend(srv.url) as be:
        results = list(be.run(_reqs(2)))
    assert all(message_text(r) for r in results)  # 3 faults, 5 tries per request: all answered
    st = get_stats(srv.url)
    assert st["answered"] == 2 and st["requests"] == 5 and st["duplicates"] == []


@pytest.mark.parametrize("kind,code", [("500", "http_500"), ("reset", "connection_error"),
                                       ("badjson", "bad_response"), ("hang", "timeout")])
def test_a_request_past_its_budget_is_a_transient_error(judge_server_factory, kind, code):
    srv = judge_server_factory(faults=[Fault(kind, arg=2 if kind == "hang" else None, count=3)])
    with _backend(srv.url, policy={"retry_attempts": 3, "timeout_s": 0.3}) as be:
        results = {r["custom_id"]: r for r in be.run(_reqs(2))}
    failed = [r for r in results.values() if r["error"]]
    assert len(failed) == 1 and failed[0]["error"]["code"] == code and failed[0]["error"]["transient"] is True
    assert "after 3 tries" in failed[0]["error"]["message"] and failed[0]["response"] is None


def test_a_400_is_the_rows_permanent_error_and_not_retried(judge_server_factory):
    srv = judge_server_factory()
    reqs = _reqs(2)
    reqs[0]["body"]["messages"] = []  # the server refuses this request with a 400
    with _backend(srv.url) as be:
        results = {r["custom_id"]: r for r in be.run(reqs)}
    assert results["r0"]["error"]["code"] == "http_400" and results["r0"]["error"]["transient"] is False
    assert message_text(results["r1"]) and get_stats(srv.url)["requests"] == 2


@pytest.mark.parametrize("status", ["401", "404"])
def test_wrong_key_or_unknown_model_stops_the_endpoint_in_one_line(judge_server_factory, status):
    srv = judge_server_factory(api_key="sk-right-key" if status == "401" else None, models=("judge",),
                               strict_models=True)
    be = _backend(srv.url, api_key="sk-wrong-key", key_env="MY_KEY_VAR", max_concurrency=4)
    with pytest.raises(EndpointFatalError) as info:
        list(be.run(_reqs(20, model="judge" if status == "401" else "no-such-model")))
    msg = str(info.value)
    assert "\n" not in msg and "api" in msg and srv.url in msg and "$MY_KEY_VAR" in msg and f"HTTP {status}" in msg
    assert "sk-wrong-key" not in msg
    assert get_stats(srv.url)["requests"] <= 4  # stopped at once, no retries


def test_a_dead_endpoint_opens_the_circuit(judge_server_factory):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    be = _backend(url, max_concurrency=2, policy={"retry_attempts": 3, "breaker_failures": 8})
    with pytest.raises(CircuitOpenError, match="circuit open"):
        list(be.run(_reqs(50)))
    assert be.breaker.opened == 1
    with pytest.raises(CircuitOpenError):  # still open: the next shard is not even sent
        list(_backend(url, policy={"retry_attempts": 3, "breaker_failures": 8}).run(_reqs(1)))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_launched_engine_is_a_dead_engine():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(EngineDiedError):
        list(_backend(url, launched=True, alive=lambda: False).run(_reqs(3)))


def test_dropped_connection_of_a_healthy_engine_is_retried(judge_server_factory):
    srv = judge_server_factory(faults=[Fault("reset", count=1)])
    with _backend(srv.url, launched=True, alive=lambda: True) as be:
        results = list(be.run(_reqs(3)))
    assert all(message_text(r) for r in results) and get_stats(srv.url)["requests"] == 4
    srv2 = judge_server_factory(faults=[Fault("reset", count=1)])
    with pytest.raises(EngineDiedError):
        list(_backend(srv2.url, launched=True, alive=lambda: False).run(_reqs(3)))


def test_api_key_is_sent_and_never_shown(judge_server_factory):
    srv = judge_server_factory(api_key="sk-test-secret")
    good = _backend(srv.url, api_key="sk-test-secret", max_concurrency=2)
    assert "sk-test-secret" not in repr(good)
    assert all(message_text(r) for r in good.run(_reqs(2)))


def test_a_key_echoed_in_an_error_body_is_redacted(judge_server_factory):
    srv = judge_server_factory()
    reqs = _reqs(1)
    reqs[0]["body"]["messages"] = "sk-test-FAKE123"  # the 400 echoes the bad field, here the key
    with _backend(srv.url, api_key="sk-test-FAKE123") as be:
        (out,) = list(be.run(reqs))
    assert out["error"]["code"] == "http_400" and "sk-test-FAKE123" not in repr(out)
    assert "[redacted]" in out["error"]["message"]


def test_consumer_stopping_early_ends_the_client(judge_server_factory):
    srv = judge_server_factory(latency_s=0.05)
    be = _backend(srv.url, max_concurrency=2)
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
