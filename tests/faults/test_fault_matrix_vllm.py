"""Fault matrix, real vLLM row: the launched local judge engine is SIGKILLed mid-shard.

The rate stage's local judge (kind local_vllm without a base URL) is one vLLM CPU server
shared by every shard task of the process. Killing it while a shard is being rated must
hand the shard back to the orchestrator (a TransientError), keep every answer received
before the kill in the journal, and the retry must relaunch the engine and send only the
requests that were never answered. (The generation side of this row, a vLLM server killed
mid-shard under the Prefect flow, is tests/generation/test_vllm.py::
test_flow_on_real_vllm_survives_a_server_kill.)

Cost: two engine starts, the least this case can take (the one killed, the relaunch), and
8 calls of at most 64 tokens from SmolLM2-135M. Set UF_FAULT_REPORT=<file> to write
the counts as JSON (merged into an existing report).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from storage.schemas import to_table
from tasks.backends.journal import Journal
from tasks.errors import TransientError
from tasks.generation.config import default_engine_python, models_dir
from tasks.rating.config import RatingConfig
from tasks.rating.judges import close_engines, open_judge
from tasks.rating.stage import rate_shard
from tests.rating.conftest import ANSWERS, QUESTIONS, completion_row

MODEL = Path(models_dir()) / "SmolLM2-135M-Instruct"
HAVE_ENGINE = Path(default_engine_python()).exists() and (MODEL / ".converted").exists()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not HAVE_ENGINE, reason="no vLLM engine env or converted model; "
                                                                            "run scripts/setup_local.sh")]


def _journal_lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


# Two questions with two completions each: 8 judge calls. The engine reads a judge prompt
# (300-550 tokens) at about 100 tokens/s on one CPU thread, so every call costs seconds;
# eight leave work on both sides of the kill.
QS = QUESTIONS[:2]
COMPLETIONS = 2


def test_local_judge_engine_killed_mid_shard_then_relaunched(tmp_path):
    comps = [completion_row(q["prompt_id"], i, a) for q, ans in zip(QS, ANSWERS) for i, a in enumerate(ans[:COMPLETIONS])]
    shard = to_table(QS, "instructions"), to_table(comps, "completions")
    cfg = RatingConfig.model_validate({
        "aspects": ["honesty", "helpfulness"], "reasks": 0, "max_tokens": 64, "critique_max_tokens": 64,
        "endpoints": [{"name": "local", "kind": "local_vllm", "model": "local-judge", "max_concurrency": 2,
                       "max_model_len": 2048, "engine": {"startup_timeout_s": 400}}]})
    calls = len(QS) * (2 + COMPLETIONS)  # two aspect calls and a critique per completion
    logs, journal = tmp_path / "logs", tmp_path / "j.jsonl"
    killed: list[tuple[int, int]] = []

    def kill_after(n: int) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            pids = list(logs.glob("*.pid"))
            if pids and _journal_lines(journal) >= n:
                pid = int(pids[0].read_text())
                killed.append((pid, _journal_lines(journal)))
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after, args=(3,), daemon=True)
    watcher.start()
    try:
        with pytest.raises(TransientError) as first:
            rate_shard(*shard, cfg, 42, open_judge(cfg.endpoint, str(logs)), Journal(journal))
        watcher.join(timeout=10)
        assert killed, "the engine was never killed"
        kept = _journal_lines(journal)
        assert 3 <= kept < calls
        table, stats = rate_shard(*shard, cfg, 42, open_judge(cfg.endpoint, str(logs)), Journal(journal))
    finally:
        close_engines()
    assert stats.from_journal == kept and stats.sent == calls - kept  # nothing answered was asked again
    assert table.num_rows == len(comps) * 3 and stats.failed_rows == 0
    assert {r["aspect"] for r in table.to_pylist()} == {"honesty", "helpfulness", "critique"}
    assert len(list(logs.glob("vllm-*.log"))) == 2 and list(logs.glob("*.pid")) == []  # relaunched, both stopped
    report = os.environ.get("UF_FAULT_REPORT")
    if report:
        data = json.loads(Path(report).read_text()) if Path(report).exists() else {}
        data["local vLLM judge killed mid-shard"] = {
            "judge_calls": calls, "handed_back": [type(first.value).__name__], "journaled_before_kill": kept,
            "rerun_from_journal": stats.from_journal, "rerun_sent": stats.sent, "engine_launches": 2,
            "unparsed_rows": stats.unparsed_rows, "failed_rows": stats.failed_rows}
        Path(report).write_text(json.dumps(data, indent=1, sort_keys=True))
