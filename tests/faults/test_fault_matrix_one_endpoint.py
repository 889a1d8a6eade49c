"""A whole run whose pool and judge are one OpenAI-compatible endpoint with ordinary faults:
3% 5xx, 1% connection resets and a 300 RPM limit (OpenAI's 429 with rate-limit headers), with
a SIGKILL during generation and another during rating, then a rerun to the end.

Four `serve: openai` pool entries and the judge share the server's one limit, so they name
one `limit_group`. 8 real instructions x 4 models = 32 generation requests, then 32 aspect
calls and 32 critiques. Then: 0 missing completions, each equal to the server's answer to
exactly that request; 0 wrong ratings; under 1% of requests answered 429; and no request
answered twice except answers in flight when a kill came (answered by the server, not yet
journaled by the killed process: at most the requests in flight then).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from storage.shards import ShardStore
from tasks.rating.protocol import CRITIQUE
from tests.faults.test_fault_matrix import visible
from tests.faults.test_kill_resume import DATA, QuietServer, Runner, quiet
from tests.servers.scripted import scripted_answer, scripted_overall, scripted_rating
from tests.servers.server_state import Fault, Limits

pytestmark = [pytest.mark.http, pytest.mark.server]
MODELS = ("alpha", "beta", "gamma", "delta")
CONCURRENCY = 4
GEN_REQUESTS, JUDGE_REQUESTS = 32, 64


def run_config(out: Path, url: str) -> dict:
    def src(name, fmt, path):
        return {"name": name, "format": fmt, "path": str(path), "quota": 2}

    limits = {"limit_group": "one-server", "max_concurrency": CONCURRENCY}
    return {
        "name": "one-endpoint", "output": str(out), "seed": 7, "shard_size": 2,
        "sources": [src("truthful_qa", "truthful_qa", DATA / "truthfulqa" / "TruthfulQA.csv"),
                    src("sharegpt", "sharegpt", DATA / "sharegpt" / "ShareGPT_V3_filtered_500.json"),
                    src("ultrachat", "ultrachat", DATA / "ultrachat" / "ultra_eval.json"),
                    src("flan", "flan", str(DATA / "flan" / "*_train.tsv"))],
        "generation": {"k": 4, "models": [
            {"name": f"http-{m}", "serve": "openai", "model": f"gen-{m}", "base_url": url, "request_timeout_s": 30,
             "sampling": {"temperature": 0.1 * i}, **limits} for i, m in enumerate(MODELS)]},
        "rating": {"endpoints": [{"name": "judge", "kind": "openai_compatible", "model": "judge", "base_url": url,
                                  "answer_mode": "text", "timeout_s": 30, **limits}],
                   "judge": "judge", "prices": {"judge": {"input_per_1m": 1.0, "output_per_1m": 2.0}}},
        "publish": {"plots": False},
    }


def journal_lines(out: Path, stage: str) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (out / "journal" / stage).rglob("*.jsonl"))


def check_exact(out: Path) -> tuple[int, int]:
    """Every completion is the server's answer to its request; every rating the script's."""
    store = ShardStore(str(out))
    completions = ratings = 0
    for comp in store.refs("generate"):
        instr = {r["prompt_id"]: r["instruction"] for r in store.read_shard("sample", comp.shard_id).to_pylist()}
        rows = store.read_shard(comp).to_pylist()
        texts = {(r["prompt_id"], r["completion_index"]): r["response"] for r in rows}
        for r in rows:
            messages = [{"role": "system", "content": r["system_prompt"]},
                        {"role": "user", "content": instr[r["prompt_id"]]}]
            assert r["response"] == scripted_answer(messages, None, completion_words=40), r["request_id"]
            completions += 1
        for row in store.read_shard("rate", comp.shard_id).to_pylist():
            text = visible(row["aspect"], texts[(row["prompt_id"], row["completion_index"])])
            if row["aspect"] == CRITIQUE:
                assert row["rating"] == float(scripted_overall(text)), row
            else:
                want = scripted_rating(row["aspect"], text)
                assert (row["rating"], row["rating_na"]) == ((None, True) if want == "N/A" else (float(want), False))
            ratings += 1
    return completions, ratings


def test_one_faulty_rate_limited_endpoint_for_pool_and_judge_across_two_kills(prefect_api, tmp_path):  # noqa: F811
    srv = QuietServer(limits=Limits(rpm=300), faults=[Fault("503", rate=0.03), Fault("reset", rate=0.01)],
                      latency_s=0.05, completion_words=40, rationale_words=12, seed=11).start()
    out = tmp_path / "out"
    runner = Runner(prefect_api, tmp_path, run_config(out, srv.url), "one")
    rng = random.Random(5)
    try:
        kills = []
        n_gen = rng.randint(6, 20)
        runner.kill_when(lambda _: journal_lines(out, "generate") >= n_gen)
        kills.append({"at": f"generation, {n_gen} answers journaled", "stats": quiet(srv.url)})
        n_rate = rng.randint(6, 30)
        runner.kill_when(lambda _: journal_lines(out, "rate") >= n_rate)
        kills.append({"at": f"rating, {n_rate} answers journaled", "stats": quiet(srv.url)})
        started = time.monotonic()
        runner.finish()
        last_run_s = time.monotonic() - started
        st = quiet(srv.url)
    finally:
        srv.stop()
    completions, ratings = check_exact(out)
    assert completions == GEN_REQUESTS and ratings == GEN_REQUESTS * 4 + GEN_REQUESTS  # 4 aspects + critique
    # every distinct request the server saw was answered (equal critiques share one request,
    # so the judge's count is at most 64)
    answered = [r["answered"] for r in st["fingerprints"].values()]
    assert min(answered) >= 1 and GEN_REQUESTS + JUDGE_REQUESTS - 4 <= len(answered) <= GEN_REQUESTS + JUDGE_REQUESTS
    twice = sum(r["answered"] - 1 for r in st["fingerprints"].values() if r["answered"] > 1)
    assert twice <= 2 * CONCURRENCY  # only what was in flight at the two kills
    share_429 = st["by_status"].get("429", 0) / st["requests"]
    assert share_429 < 0.01, st["by_status"]
    print(json.dumps({"distinct_requests": len(answered), "server_requests": st["requests"],
                      "by_status": st["by_status"], "faults": st["faults"],
                      "answered": st["answered"], "answered_twice": twice, "share_429": round(share_429, 4),
                      "kills": [k["at"] for k in kills], "last_run_s": round(last_run_s, 1)}))
