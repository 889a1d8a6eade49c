"""Rates the test shard slowly so that a test can SIGKILL it mid-shard.

Run: python -m tests.rating.crash_worker JOURNAL SENT_LOG [BASE_URL]
Without BASE_URL the scripted judge answers, logging each request id first; with it, the
HTTP judge backend asks the test server there (two requests in flight at most)."""
from __future__ import annotations

import os
import sys
import time

from storage.schemas import to_table
from tasks.backends.journal import Journal
from tasks.rating.config import RatingConfig
from tasks.rating.scripted import ScriptedJudge
from tasks.rating.stage import rate_shard
from tests.rating.conftest import ANSWERS, QUESTIONS, completion_row


class SlowLoggingJudge(ScriptedJudge):
    def __init__(self, log_path: str):
        super().__init__()
        self.log = open(log_path, "a")

    def _answer(self, req):
        self.log.write(req["custom_id"] + "\n")
        self.log.flush()
        os.fsync(self.log.fileno())
        time.sleep(0.05)
        return super()._answer(req)


def shard():
    comps = [completion_row(q["prompt_id"], i, a) for q, ans in zip(QUESTIONS, ANSWERS) for i, a in enumerate(ans)]
    return to_table(QUESTIONS, "instructions"), to_table(comps, "completions")


CFG = {"endpoints": [{"name": "s", "kind": "scripted", "model": "gpt-4o", "answer_mode": "text"}], "judge": "s"}

def http_config(base_url: str, mode: str = "text", concurrency: int = 2) -> RatingConfig:
    return RatingConfig.model_validate({"endpoints": [{
        "name": "t", "kind": "openai_compatible", "model": "judge", "base_url": base_url, "answer_mode": mode,
        "max_concurrency": concurrency}], "judge": "t", "prices": {"judge": {"input_per_1m": 1.0, "output_per_1m": 2.0}}})


if __name__ == "__main__":
    journal, log = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        from tasks.rating.judges import judge_backend

        cfg = http_config(sys.argv[3])
        rate_shard(*shard(), cfg, 42, judge_backend(cfg.endpoint), Journal(journal))
    else:
        rate_shard(*shard(), RatingConfig.model_validate(CFG), 42, SlowLoggingJudge(log), Journal(journal))
