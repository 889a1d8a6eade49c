"""The OpenAI-protocol test server itself: scripted answers, limits, faults, stats."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.backends.base import make_request, message_text
from tasks.backends.limit_hints import parse_duration
from tasks.rating.parse import parse
from tasks.rating.protocol import ASPECTS, CRITIQUE, aspect_header, fence_response, fence_text, response_format
from tasks.rating.scripted import ScriptedJudge
from tests.servers.fixtures import get_stats, post_control
from tests.servers.scripted import scripted_overall, scripted_rating, scripted_types
from tests.servers.server_state import Fault, Limits, request_fingerprint

pytestmark = pytest.mark.http
ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["Paris is the capital of France.", "Lyon.\n\nRating: 5", "I am not sure.", "Paris, of course."]


def _aspect_body(aspect: str, texts=TEXTS, structured: bool = False, extra: str = "") -> dict:
    user = "\n".join([aspect_header(aspect), "Rate the texts." + extra] + [fence_text(i + 1, t) for i, t in enumerate(texts)])
    body = {"model": "judge", "messages": [{"role": "user", "content": user}], "temperature": 0}
    if structured:
        body["response_format"] = response_format(aspect, len(texts))
    return body


def _post(url: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(url + "/chat/completions", json=body, timeout=kw.pop("timeout", 5), **kw)


def test_text_mode_answers_in_ultrafeedback_blocks(judge_server):
    r = _post(judge_server.url, _aspect_body("truthfulness"))
    assert r.status_code == 200
    content = r.json()["choices"][0]["message"]["content"]
    for i, text in enumerate(TEXTS, start=1):
        block = content.split(f"#### Output for Text {i}\n", 1)[1].split("#### Output for Text", 1)[0]
        types = scripted_types("truthfulness", text)
        assert block.startswith(f"Type: {'[' + ', '.join(types) + ']' if types else 'None'}\nRationale: ")
        assert f"\nRating: {scripted_rating('truthfulness', text)}\nRationale: " in block


def test_structured_mode_answers_json_per_schema(judge_server):
    r = _post(judge_server.url, _aspect_body("honesty", structured=True))
    outputs = json.loads(r.json()["choices"][0]["message"]["content"])["outputs"]
    assert [o["rating"] for o in outputs] == [str(scripted_rating("honesty", t)) for t in TEXTS]
    assert all(set(o) == {"rating", "rationale"} for o in outputs)
    enum = response_format("honesty", 4)["json_schema"]["schema"]["properties"]["outputs"]["items"]
    assert all(o["rating"] in enum["properties"]["rating"]["enum"] for o in outputs)


@pytest.mark.parametrize("mode", ["text", "structured"])
def test_server_and_in_process_judge_give_the_same_verdicts(judge_server, mode):
    """One scripted judge: the HTTP server and tasks.rating.scripted.ScriptedJudge rate alike."""
    with ScriptedJudge() as local:
        for aspect in [*ASPECTS, CRITIQUE]:
            body = (_aspect_body(aspect, structured=mode == "structured") if aspect != CRITIQUE else
                    {"model": "judge", "messages": [{"role": "user", "content": aspect_header(CRITIQUE) + "\nCritique.\n"
                                                     + fence_response(TEXTS[1])}],
                     **({"response_format": response_format(CRITIQUE)} if mode == "structured" else {})})
            n = 1 if aspect == CRITIQUE else len(TEXTS)
            served = parse(_post(judge_server.url, body).json()["choices"][0]["message"]["content"], aspect, n, mode)
            ours = parse(message_text(next(local.run([make_request(f"r-{aspect}", body)]))), aspect, n, mode)
            assert served.ok and ours.ok, (served.reason, ours.reason)
            assert [(j.rating, j.na, j.types) for j in served.items] == [(j.rating, j.na, j.types) for j in ours.items]


def test_critique_both_modes_and_generation_prompts(judge_server):
    user = aspect_header("critique") + "\nCritique this.\n" + fence_response("The sea is big.")
    body = {"model": "judge", "messages": [{"role": "user", "content": user}]}
    text = _post(judge_server.url, body).json()["choices"][0]["message"]["content"]
    assert text.endswith(f"\n\nOverall Score: {scripted_overall('The sea is big.')}")
    js = _post(judge_server.url, {**body, "response_format": response_format("critique")}).json()
    assert json.loads(js["choices"][0]["message"]["content"])["overall_score"] == str(scripted_overall("The sea is big."))
    gen = _post(judge_server.url, {"model": "m", "messages": [{"role": "user", "content": "Write a haiku."}]}).json()
    assert gen["choices"][0]["message"]["content"].startswith("Scripted completion.")
    assert {scripted_overall(f"r{i}") for i in range(200)} == set(range(1, 11))  # 1 and 10 both occur
    assert "N/A" in {scripted_rating("honesty", f"t{i}") for i in range(100)}
    assert "N/A" not in {scripted_rating("helpfulness", f"t{i}") for i in range(100)}


def test_usage_tokens_and_fingerprints_are_counted(judge_server):
    body = _aspect_body("helpfulness")
    usages = [_post(judge_server.url, body).json()["usage"] for _ in range(2)]
    _post(judge_server.url, _aspect_body("honesty"))
    st = get_stats(judge_server.url)
    fp = request_fingerprint(body)
    assert st["fingerprints"][fp] == {"received": 2, "answered": 2}
    assert st["duplicates"] == [fp]
    assert st["answered"] == 3 and st["by_status"] == {"200": 3}
    assert st["prompt_tokens"] >= 2 * usages[0]["prompt_tokens"]
    assert usages[0]["total_tokens"] == usages[0]["prompt_tokens"] + usages[0]["completion_tokens"]
    post_control(judge_server.url, "/_reset", {})
    assert get_stats(judge_server.url)["requests"] == 0


def test_rpm_limit_gives_429_with_openai_headers(judge_server_factory):
    srv = judge_server_factory(limits=Limits(rpm=12, tpm=None, window_s=6, burst=1 / 6))  # 2/s, burst of 2
    codes, last_429 = [], None
    for _ in range(6):
        r = _post(srv.url, _aspect_body("honesty"))
        codes.append(r.status_code)
        if r.status_code == 429:
            last_429 = r
    assert codes[:2] == [200, 200] and 429 in codes
    h = last_429.headers
    assert h["x-ratelimit-limit-requests"] == "12" and h["x-ratelimit-remaining-requests"] == "0"
    wait = float(h["retry-after-ms"]) / 1000
    assert 0 < wait <= 0.5 * codes.count(429) and h["retry-after"] == str(max(1, math.ceil(wait)))
    # until the bucket is full again; each 429 also used up a request (OpenAI counts them too)
    assert 0.5 <= parse_duration(h["x-ratelimit-reset-requests"]) <= 1.0 + 0.5 * codes.count(429)
    assert get_stats(srv.url)["rate_limited"] == codes.count(429)


def test_tpm_limit_counts_prompt_and_answer_tokens(judge_server_factory):
    srv = judge_server_factory(limits=Limits(rpm=None, tpm=600, window_s=60, burst=1.0))  # 600 tokens, no refill to speak of
    ok = 0
    while _post(srv.url, _aspect_body("helpfulness")).status_code == 200:
        ok += 1
        assert ok < 10
    st = get_stats(srv.url)
    assert st["total_tokens"] >= 600 - 300 and st["rate_limited"] == 1  # stopped once the bucket ran dry


@pytest.mark.parametrize("kind,expect", [("500", 500), ("503", 503), ("429", 429), ("truncate", 200), ("malformed", 200)])
def test_fault_markers(judge_server, kind, expect):
    r = _post(judge_server.url, _aspect_body("honesty", extra=f" [[fault:{kind}]]"))
    assert r.status_code == expect
    if kind == "truncate":
        assert r.json()["choices"][0]["finish_reason"] == "length"
    if kind == "malformed":
        assert "Output for Text" not in r.json()["choices"][0]["message"]["content"]
    assert get_stats(judge_server.url)["faults"] == {kind: 1}


@pytest.mark.parametrize("kind", ["reset", "cut", "hang:0.2"])
def test_transport_faults_break_the_connection(judge_server, kind):
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        _post(judge_server.url, _aspect_body("honesty", extra=f" [[fault:{kind}]]"))


def test_fault_first_n_then_scheduled_then_header(judge_server):
    body = _aspect_body("honesty", extra=" [[fault:502*1]]")
    assert [_post(judge_server.url, body).status_code for _ in range(2)] == [502, 200]
    post_control(judge_server.url, "/_faults", {"faults": [{"kind": "503", "count": 2}]})
    assert [_post(judge_server.url, _aspect_body("honesty")).status_code for _ in range(3)] == [503, 503, 200]
    assert _post(judge_server.url, _aspect_body("honesty"), headers={"X-Fault": "429:3"}).headers["retry-after"] == "3"
    post_control(judge_server.url, "/_faults", {"faults": [{"kind": "slow", "arg": 0.3, "seconds": 10}]})
    t = time.monotonic()
    assert _post(judge_server.url, _aspect_body("honesty")).status_code == 200
    assert time.monotonic() - t >= 0.3
    with pytest.raises(ValueError):
        Fault(kind="explode")


def test_azure_path_and_api_key(judge_server_factory):
    srv = judge_server_factory(api_key="sk-right")
    root = srv.url.rsplit("/v1", 1)[0]
    body = _aspect_body("honesty")
    body.pop("model")
    assert _post(srv.url, body).status_code == 401
    assert _post(srv.url, body, headers={"Authorization": "Bearer sk-right"}).status_code == 200
    r = httpx.post(root + "/openai/deployments/dep-1/chat/completions?api-version=2024-10-21", json=body,
                   headers={"api-key": "sk-right"}, timeout=5)
    assert r.status_code == 200 and r.json()["model"] == "dep-1"
    assert httpx.get(srv.url + "/models", timeout=5).json()["data"][0]["id"] == "judge"


def test_runnable_by_hand_prints_url():
    t = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/servers/openai_server.py"), "--port", "0", "--rpm", "600",
                             "--tpm", "200000", "--fault", "500@count=1", "--max-seconds", "20"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        url = proc.stdout.readline().strip()
        started = time.monotonic() - t
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert started < 10  # measured about 0.3 s, mostly interpreter start-up
        assert _post(url, _aspect_body("honesty")).status_code == 500
        r = _post(url, _aspect_body("honesty"))
        assert r.status_code == 200 and r.headers["x-ratelimit-limit-tokens"] == "200000"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
