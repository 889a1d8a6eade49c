"""Two launched vLLM CPU servers of one model behind a ReplicatedBackend, one SIGKILLed mid-shard.

Needs the engine environment and converted model that scripts/setup_local.sh builds; skipped,
with that reason, when they are absent. Cost: two engine starts side by side (~30-60 s on two
cores) and 24 completions of at most 12 tokens. Instructions are TruthfulQA questions from
data/sources.
"""
from __future__ import annotations

import csv
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from storage.keys import prompt_id
from storage.schemas import to_table
from storage.shards import ShardStore
from tasks.generation.config import GenerationConfig, default_engine_python, models_dir
from tasks.generation.engines import engine_groups, open_backend
from tasks.generation.stage import merge_shard, run_group

MODEL = Path(models_dir()) / "SmolLM2-135M-Instruct"
HAVE_ENGINE = Path(default_engine_python()).exists() and (MODEL / ".converted").exists()
TRUTHFULQA = Path(__file__).resolve().parents[2] / "data" / "sources" / "truthfulqa" / "TruthfulQA.csv"
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not HAVE_ENGINE, reason=f"no vLLM engine env ({default_engine_python()}) or converted model "
                                               f"({MODEL}); run scripts/setup_local.sh"),
]
MAX_TOKENS = 12


def truthfulqa_shards(store: ShardStore, shards: int = 3, per_shard: int = 8):
    with open(TRUTHFULQA, newline="") as f:
        questions = [row["Question"] for row in csv.DictReader(f)][: shards * per_shard]
    refs = []
    for s in range(shards):
        rows = [{"prompt_id": prompt_id(q), "source": "truthful_qa", "source_format": "truthful_qa", "instruction": q,
                 "correct_answers": [], "incorrect_answers": [], "reference_answer": None, "false_premise": None,
                 "task": None, "source_file": TRUTHFULQA.name, "source_row": s * per_shard + i}
                for i, q in enumerate(questions[s * per_shard:(s + 1) * per_shard])]
        refs.append(store.write_shard("sample", f"s-{s:05d}", to_table(rows, "instructions"), "instructions", f"k{s}"))
    return refs


def _kill_when(rep, victim: str, killed: list, stop: threading.Event, total: int) -> None:
    """SIGKILL the victim while it holds requests, mid-run: at best once it has answered
    something too (so the test sees answered work kept), else once half the run is answered.
    A CPU engine answers a batch at once, so a replica slow to warm up may hold all its
    requests until the end and never be in the first state."""
    deadline = time.monotonic() + 400
    while not stop.is_set() and time.monotonic() < deadline:
        answered = sum(1 for who in list(rep.answered_by.values()) if who == victim)
        sent = sum(1 for who, _ in list(rep.dispatch) if who == victim)
        if sent > answered and (answered or len(rep.answered_by) >= total // 2):
            server = next(r for r in rep.replicas if r.name == victim)
            killed.append((server.proc.pid, len(rep.dispatch)))
            os.killpg(server.proc.pid, signal.SIGKILL)  # the API server and its engine core
            return
        time.sleep(0.005)


def test_two_servers_one_killed_mid_shard(tmp_path):
    store = ShardStore(str(tmp_path / "run"))
    refs = truthfulqa_shards(store)
    cfg = GenerationConfig.model_validate({"k": 1, "models": [{
        "name": "smollm2-135m", "serve": "vllm_server", "model": "{models_dir}/SmolLM2-135M-Instruct",
        "replicas": 2, "concurrency": 4, "max_model_len": 1024, "sampling": {"max_tokens": MAX_TOKENS},
        "engine": {"startup_timeout_s": 300}}]})
    (group,) = engine_groups(cfg)
    rep = open_backend(group, str(tmp_path / "logs"))
    killed: list = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_when, args=(rep, "smollm2-135m-r0", killed, stop, 24), daemon=True)
    watcher.start()
    try:
        res = run_group(store, group, refs, cfg, 42, {}, str(tmp_path / "logs"), backend=rep)
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert killed, "replica r0 was never killed: the fail-over path was not exercised"
    assert (res.written, res.requests, res.failed_requests) == (3, 24, 0)

    rows = [r for ref in refs for r in store.read_shard(merge_shard(store, ref, cfg, 42, {})).to_pylist()]
    assert len(rows) == 24 and len({r["prompt_id"] for r in rows}) == 24  # every completion present
    for r in rows:
        assert r["error"] is None and r["response"].strip() and 0 < r["completion_tokens"] <= MAX_TOKENS
    by = Counter(rep.answered_by.values())
    assert by["smollm2-135m-r1"] > 0 and sum(by.values()) == 24
    sends = Counter(cid for _, cid in rep.dispatch)
    # What the killed server answered was not sent again; only its unanswered ones were.
    assert all(sends[cid] == 1 for cid, who in rep.answered_by.items() if who == "smollm2-135m-r0")
    resent = [cid for cid, n in sends.items() if n > 1]
    assert all(n <= 2 for n in sends.values()) and len(sends) == 24
    assert all(rep.answered_by[cid] == "smollm2-135m-r1" for cid in resent)
    assert "smollm2-135m-r0" in rep.failures and rep.alive == [False, True]
    print(f"\nr0 answered {by['smollm2-135m-r0']}, r1 answered {by['smollm2-135m-r1']}, "
          f"{len(resent)} of r0's unanswered requests re-sent to r1")
    # both servers stopped: no pid file left, the killed one is gone
    assert list((tmp_path / "logs").glob("*.pid")) == []
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0][0], 0)
