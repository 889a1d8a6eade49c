"""The embedded default judge: the local CPU vLLM engine in structured mode (marker `vllm`).

Its ratings are well-formed but meaningless (a 135M-parameter model); what is tested is the
plumbing: the engine starts from `engine_model`, `response_format` JSON schemas come back
parseable, an answer cut at max_tokens is re-asked at most once, and a rerun is served from
the journal without starting the engine. Cost: one engine start (~30 s) and a minute of CPU.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from storage.schemas import to_table
from tasks.backends.journal import Journal
from tasks.generation.config import default_engine_python, models_dir
from tasks.rating.config import RatingConfig
from tasks.rating.judges import close_engines, open_judge
from tasks.rating.stage import rate_shard
from tests.rating.conftest import ANSWERS, QUESTIONS, completion_row

MODEL = Path(models_dir()) / "SmolLM2-135M-Instruct"
HAVE_ENGINE = Path(default_engine_python()).exists() and (MODEL / ".converted").exists()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not HAVE_ENGINE, reason="no vLLM engine env or converted model; "
                                                                            "run scripts/setup_local.sh")]


def test_local_structured_judge_end_to_end(tmp_path):
    q = QUESTIONS[0]
    shard = (to_table([q], "instructions"),
             to_table([completion_row(q["prompt_id"], i, ANSWERS[0][i]) for i in range(2)], "completions"))
    # The critique's 64 tokens (the least allowed) cut its answer, so the re-ask path runs; at
    # this engine's ~18 tokens/s each token saved is CPU time saved.
    cfg = RatingConfig.model_validate({"aspects": ["honesty", "helpfulness"], "critique_max_tokens": 64,
                                       "endpoints": [{"name": "local", "kind": "local_vllm", "model": "local-judge",
                                                      "engine": {"startup_timeout_s": 300}}]})
    assert cfg.endpoint.launches_engine and cfg.endpoint.answer_mode == "structured"
    try:
        table, stats = rate_shard(*shard, cfg, 42, open_judge(cfg.endpoint, str(tmp_path)), Journal(tmp_path / "j.jsonl"))
    finally:
        close_engines()
    assert stats.calls == 4 and stats.sent == stats.requests <= 8 and stats.failed_rows == 0
    rows = table.to_pylist()
    assert len(rows) == 6
    for r in rows:
        assert r["raw_text"] and r["completion_tokens"] > 0 and r["judge_model"] == "local-judge"
        if r["parse_status"] == "ok":
            assert r["rating"] in ([float(i) for i in range(1, 11)] if r["aspect"] == "critique" else [1.0, 2.0, 3.0, 4.0, 5.0])
        else:
            assert r["parse_status"] in ("na", "unparsed") and (r["parse_status"] == "na") == r["rating_na"]
    # Guided decoding makes schema-shaped answers: every aspect call parsed at least once.
    assert {r["aspect"] for r in rows if r["parse_status"] in ("ok", "na")} >= {"honesty", "helpfulness"}

    started = time.monotonic()
    again, stats2 = rate_shard(*shard, cfg, 42, open_judge(cfg.endpoint, str(tmp_path)), Journal(tmp_path / "j.jsonl"))
    assert stats2.sent == 0 and again.equals(table) and time.monotonic() - started < 10  # no engine start
