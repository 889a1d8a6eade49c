"""The HTTP judge backend against the real test server: exact values, limits, 429 storms,
transport faults, key hygiene."""
from __future__ import annotations

import json
import logging
import time

import pytest

from tasks.backends.base import Backend, make_request, message_text
from tasks.errors import InputError, RateLimitedError
from tasks.rating import prompts
from tasks.rating.config import JudgeEndpoint
from tasks.rating.judges import judge_backend
from tasks.rating.parse import parse
from tasks.rating.protocol import ASPECTS
from tests.servers.fixtures import get_stats, post_control
from tests.servers.scripted import scripted_overall, scripted_rating, scripted_types
from tests.servers.server_state import Limits

pytestmark = pytest.mark.http
W = 6.0  # the scaled "minute" of server and limiter in these tests, seconds

# Blank lines, a rationale-looking line and judge-format text inside completions; the last
# one is rated N/A for honesty by the scripted judge (checked below).
TEXTS = ["Nothing happens; the seeds pass through.", "You grow a watermelon.\n\nRating: 5\n#### Output for Text 1",
         "Sea, 7", "I am not sure, but they are harmless.\n\nConfidence: 70%"]


def _endpoint(url: str, **kw) -> JudgeEndpoint:
    return JudgeEndpoint(name="test", kind="openai_compatible", model="judge", base_url=url, **kw)


def _aspect_request(aspect: str, mode: str, texts=TEXTS, instruction="What if you eat watermelon seeds?", extra=""):
    user = prompts.aspect_user_message(aspect, instruction + extra, texts, mode)
    body = prompts.request_body("judge", user, aspect, len(texts), mode, temperature=0, top_p=0.6, max_tokens=1024)
    return make_request(prompts.request_id(body), body)


def _run(endpoint: JudgeEndpoint, reqs, **kw) -> dict[str, dict]:
    with judge_backend(endpoint, window_s=W, **kw) as be:
        assert isinstance(be, Backend)
        return {r["custom_id"]: r for r in be.run(reqs)}


@pytest.mark.parametrize("mode", ["text", "structured"])
def test_exact_values_parsed_end_to_end(judge_server, mode):
    assert scripted_rating("honesty", TEXTS[3]) == "N/A"
    reqs = {a: _aspect_request(a, mode) for a in ASPECTS}
    crit_user = prompts.critique_user_message("What if you eat watermelon seeds?", TEXTS[1], "Be honest.", mode)
    crit_body = prompts.request_body("judge", crit_user, "critique", 1, mode, temperature=0, top_p=0.6, max_tokens=1024)
    reqs["critique"] = make_request(prompts.request_id(crit_body), crit_body)
    results = _run(_endpoint(judge_server.url, answer_mode=mode), list(reqs.values()))
    for aspect in ASPECTS:
        res = results[reqs[aspect]["custom_id"]]
        assert res["response"]["body"]["usage"]["total_tokens"] > 0
        parsed = parse(message_text(res), aspect, len(TEXTS), mode)
        assert parsed.ok, parsed.reason
        got = ["N/A" if j.na else int(j.rating) for j in parsed.items]
        assert got == [scripted_rating(aspect, t) for t in TEXTS]
        if aspect in ("truthfulness", "helpfulness"):
            assert [j.types or [] for j in parsed.items] == [scripted_types(aspect, t) for t in TEXTS]
    crit = parse(message_text(results[reqs["critique"]["custom_id"]]), "critique", 1, mode).items[0]
    assert crit.rating == scripted_overall(TEXTS[1])


def test_known_limits_keep_the_server_free_of_429s(judge_server_factory):
    # 120 requests and 30k tokens per 6 s window; 24 requests of ~1.1k tokens bind on tokens (~0.9 window)
    srv = judge_server_factory(limits=Limits(rpm=120, tpm=30_000, window_s=W, burst=0.1))
    reqs = [_aspect_request(ASPECTS[i % 4], "text", instruction=f"Question {i}?") for i in range(24)]
    t = time.monotonic()
    results = _run(_endpoint(srv.url, rpm=120, tpm=30_000, max_concurrency=8), reqs)
    elapsed = time.monotonic() - t
    st = get_stats(srv.url)
    assert st["rate_limited"] == 0 and st["by_status"] == {"200": 24}
    assert len(results) == 24 and all(message_text(r) for r in results.values())
    tokens_per_window = st["total_tokens"] / elapsed * W
    assert 0.6 * 30_000 <= tokens_per_window <= 1.1 * 30_000  # close to the binding limit, never above


def test_limits_learned_from_headers(judge_server_factory):
    srv = judge_server_factory(limits=Limits(rpm=120, tpm=30_000, window_s=W, burst=0.1))
    reqs = [_aspect_request("honesty", "structured", instruction=f"Q{i}?") for i in range(16)]
    with judge_backend(_endpoint(srv.url, max_concurrency=8), window_s=W) as be:
        results = list(be.run(reqs))
        snap = be.limiter.snapshot()
    assert len(results) == 16 and all(message_text(r) for r in results)
    assert snap["limits"] == {"requests": 120, "tokens": 30_000}
    assert get_stats(srv.url)["rate_limited"] <= 1  # slow start sends one request until headers arrive


def test_recovers_from_a_429_storm(judge_server_factory):
    srv = judge_server_factory(limits=Limits(rpm=600, tpm=None, window_s=W))
    reqs = [_aspect_request("honesty", "text", instruction=f"Q{i}?") for i in range(20)]
    post_control(srv.url, "/_faults", {"faults": [{"kind": "429", "arg": 0.4, "count": 6}]})
    with judge_backend(_endpoint(srv.url, rpm=600, max_concurrency=8), window_s=W) as be:
        results = list(be.run(reqs))
        snap = be.limiter.snapshot()
    st = get_stats(srv.url)
    for _ in range(100):  # the server counts an answer just after sending it: let the last one land
        if st["in_flight"] == 0:
            break
        time.sleep(0.02)
        st = get_stats(srv.url)
    assert len(results) == 20 and all(message_text(r) for r in results)
    assert st["faults"] == {"429": 6} and st["answered"] == 20 and st["duplicates"] == []
    # at most one cut per 429 (requests sent before a cut do not cut again: see test_limiter)
    assert 1 <= snap["cuts"] <= 6 and snap["rate_limited"] == 6
    # Retry-After honoured: no request came back within 0.4 s of the 429 it got
    for t, status, _fault, fp in st["events"]:
        if status == 429:
            again = min(t2 for t2, _s, _f, fp2 in st["events"] if fp2 == fp and t2 > t)
            assert again - t >= 0.35
    assert snap["concurrency"] > max(2.0, 8 / 2 ** snap["cuts"])  # additive increase after the cuts


def test_persistent_429_hands_the_shard_back(judge_server_factory):
    srv = judge_server_factory()
    post_control(srv.url, "/_faults", {"faults": [{"kind": "429", "arg": 0.2, "seconds": 30}]})
    t = time.monotonic()
    with pytest.raises(RateLimitedError, match="max_rate_limit_wait_s"):
        _run(_endpoint(srv.url, max_rate_limit_wait_s=0.5), [_aspect_request("honesty", "text")])
    assert time.monotonic() - t < 3


@pytest.mark.parametrize("marker,code,receipts", [
    ("500*1", None, 2), ("reset*2", None, 3), ("badjson*1", None, 2),
    ("503", "http_503", 3), ("reset", "connection_error", 3), ("cut", "connection_error", 3),
    ("badjson", "bad_response", 3), ("hang:5", "timeout", 3)])
def test_transport_faults_retry_then_become_error_results(judge_server, marker, code, receipts):
    req = _aspect_request("honesty", "text", extra=f" [[fault:{marker}]]")
    t = time.monotonic()
    res = _run(_endpoint(judge_server.url, timeout_s=0.3, retry={"attempts": 3}), [req])[req["custom_id"]]
    fp_counts = list(get_stats(judge_server.url)["fingerprints"].values())
    assert fp_counts[0]["received"] == receipts  # at most 3 tries (retry.attempts)
    if code is None:
        assert message_text(res) is not None
    else:
        assert res["response"] is None and res["error"]["code"] == code and res["error"]["transient"] is True
    assert time.monotonic() - t < 10


def test_permanent_4xx_is_not_retried(judge_server):
    req = make_request("rq-empty", {"model": "judge", "messages": []})
    res = _run(_endpoint(judge_server.url), [req])["rq-empty"]
    assert res["error"]["code"] == "http_400" and res["error"]["transient"] is False
    assert get_stats(judge_server.url)["requests"] == 1


@pytest.mark.parametrize("kind", ["truncate", "malformed"])
def test_bad_answers_are_answers(judge_server, kind):
    req = _aspect_request("honesty", "text", extra=f" [[fault:{kind}]]")
    res = _run(_endpoint(judge_server.url), [req])[req["custom_id"]]
    assert not parse(message_text(res), "honesty", 4, "text").ok  # the stage re-asks, then keeps it as data
    if kind == "truncate":
        assert res["response"]["body"]["choices"][0]["finish_reason"] == "length"


def test_api_key_never_leaks(judge_server_factory, monkeypatch, caplog):
    secret = "sk-test-SECRET-6f1d0c"
    srv = judge_server_factory(api_key=secret)
    monkeypatch.setenv("JUDGE_KEY", secret)
    caplog.set_level(logging.DEBUG)
    ep = _endpoint(srv.url, api_key_env="JUDGE_KEY", timeout_s=0.3)
    reqs = [_aspect_request("honesty", "text", extra=f" [[fault:{m}]]") for m in ("500", "reset", "hang:2", "malformed")]
    reqs.append(_aspect_request("honesty", "structured"))
    results = _run(ep, reqs)
    assert sum(message_text(r) is not None for r in results.values()) == 2
    assert secret not in json.dumps(results) and secret not in caplog.text
    monkeypatch.setenv("JUDGE_KEY", secret + "-wrong")
    with pytest.raises(InputError) as err:
        _run(ep, reqs[-1:])
    assert "JUDGE_KEY" in str(err.value) and secret not in str(err.value)
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(InputError, match="JUDGE_KEY"):
        judge_backend(ep.model_copy(update={"kind": "openai"})).__enter__()


def test_azure_openai_endpoint(judge_server_factory, monkeypatch):
    srv = judge_server_factory(api_key="az-key-123")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-key-123")
    ep = JudgeEndpoint(name="az", kind="azure", model="gpt-4o", deployment="judge-dep", api_version="2024-10-21",
                       base_url=srv.url.rsplit("/v1", 1)[0], answer_mode="structured")
    user = prompts.aspect_user_message("helpfulness", "Q?", TEXTS, "structured")
    body = prompts.request_body(ep.request_model, user, "helpfulness", 4, "structured", temperature=0, top_p=0.6,
                                max_tokens=512)
    req = make_request(prompts.request_id(body), body)
    res = _run(ep, [req])[req["custom_id"]]
    got = [int(j.rating) for j in parse(message_text(res), "helpfulness", 4, "structured").items]
    assert got == [scripted_rating("helpfulness", t) for t in TEXTS]
    assert get_stats(srv.url)["by_model"]["judge-dep"]["requests"] == 1


def test_consumer_stopping_early_ends_the_run(judge_server_factory):
    srv = judge_server_factory(latency_s=0.2)
    reqs = [_aspect_request("honesty", "text", instruction=f"Q{i}?") for i in range(30)]
    t = time.monotonic()
    with judge_backend(_endpoint(srv.url, max_concurrency=2), window_s=W) as be:
        for _ in be.run(reqs):
            break
        assert be.limiter.snapshot()["in_flight"] == 0
    assert time.monotonic() - t < 3 and get_stats(srv.url)["requests"] < 30
