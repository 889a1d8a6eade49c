"""Rate the test shard once through a batch-mode judge, in its own process (kill tests).

Inputs: argv = judge base URL, output folder, mode (batch | realtime). Outputs:
<out>/ratings.parquet, the journal and batch record under <out>/journal/. Exit 0 when
rated, 3 when batches are still in flight.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

from storage.schemas import to_table
from tasks.backends.batch_state import state_path
from tasks.backends.journal import Journal, journal_path
from tasks.errors import BatchInFlight
from tasks.rating.config import RatingConfig
from tasks.rating.judges import open_judge
from tasks.rating.stage import rate_shard
from tests.rating.conftest import ANSWERS, QUESTIONS, completion_row


def shard():
    comps = [completion_row(q["prompt_id"], i, a) for q, answers in zip(QUESTIONS, ANSWERS)
             for i, a in enumerate(answers)]
    return to_table(QUESTIONS, "instructions"), to_table(comps, "completions")


def config(url: str, mode: str, max_wait_s: float = 120.0) -> RatingConfig:
    return RatingConfig.model_validate({
        "endpoints": [{"name": "judge", "kind": "openai_compatible", "model": "judge", "base_url": url,
                       "answer_mode": "text", "mode": mode,
                       "batch": {"poll_interval_s": 0.05, "max_wait_s": max_wait_s}}],
        "judge": "judge", "prices": {"judge": {"input_per_1m": 2.0, "output_per_1m": 8.0}}})


def rate(url: str, out: Path, mode: str, max_wait_s: float = 120.0):
    cfg = config(url, mode, max_wait_s)
    journal = Journal(journal_path(str(out), "test-00000"))
    judge = open_judge(cfg.endpoint, str(out / "logs"), state_path(journal.path))
    return rate_shard(*shard(), cfg, 42, judge, journal)


def main(argv: list[str]) -> int:
    url, out, mode = argv[0], Path(argv[1]), argv[2]
    try:
        table, _ = rate(url, out, mode)
    except BatchInFlight as exc:
        print(exc, flush=True)
        return 3
    pq.write_table(table, out / "ratings.parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
