"""An elastic engine on two launched vLLM CPU servers of one model: the second is launched
mid-run once the GPU id it was planned on is released and takes over the queue; the first
leaves (by may_leave: its planned time is up and the second can finish the rest on time);
every completion is written once.

Needs the engine environment and converted model that scripts/setup_local.sh builds; skipped,
with that reason, when they are absent. Cost: two engine starts, one after the other
(~30-60 s each on two cores), 24 completions of at most 12 tokens. GPU ids are labels here:
vLLM's CPU engine ignores CUDA_VISIBLE_DEVICES. Instructions are TruthfulQA questions.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

from storage.shards import ShardStore
from tasks.generation.config import GenerationConfig
from tasks.generation.elastic_engine import ElasticBackend
from tasks.generation.engines import engine_groups, launch_server
from tasks.generation.gpu_ledger import GpuLedger
from tasks.generation.schedule_plan import Placement, Plan
from tasks.generation.stage import merge_shard, run_group
from tests.backends.test_replicas_vllm import MAX_TOKENS, pytestmark, truthfulqa_shards  # noqa: F401

NAME = "smollm2-135m"


def test_a_server_joins_mid_run_and_the_first_leaves(tmp_path):
    store = ShardStore(str(tmp_path / "run"))
    refs = truthfulqa_shards(store)
    cfg = GenerationConfig.model_validate({"k": 1, "schedule": {"gpus": 2, "mode": "elastic"}, "models": [{
        "name": NAME, "serve": "vllm_server", "model": "{models_dir}/SmolLM2-135M-Instruct",
        "concurrency": 4, "max_model_len": 1024, "sampling": {"max_tokens": MAX_TOKENS},
        "engine": {"startup_timeout_s": 300}}]})
    (group,) = engine_groups(cfg)
    # GPU 0: the engine's first server, planned short. GPU 1: another engine ("other", held
    # by this test) until the first server is up, then the engine's second. With 100 s a
    # request on one replica (the estimate), the first server stays until about 5 requests
    # are left (600 s planned end), then leaves them to the second.
    ledger = GpuLedger(Plan(2, 2, [Placement(NAME, 0, (0,), 1, 0, 1, 0.1), Placement("other", 0, (1,), 1, 0, 1, 1.0),
                                   Placement(NAME, 0, (1,), 1, 1, 600, 0.9)]))
    other = next(c.index for c in ledger.claims if c.placement.engine_id == "other")
    assert ledger.acquire(other)
    logs = str(tmp_path / "logs")
    launched = []

    def launch(p, k):
        server = launch_server(group, logs, f"{NAME}-s{k}", p.gpus, p.replicas, pin=True)
        launched.append(server)
        return server

    engine = ElasticBackend(NAME, ledger, launch, s_per_request=100)

    def free_gpu_1():
        deadline = time.monotonic() + 400
        while not engine.servers:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        ledger.release(other)

    threading.Thread(target=free_gpu_1, daemon=True).start()
    res = run_group(store, group, refs, cfg, 42, {}, logs, backend=engine)
    assert (res.written, res.requests, res.failed_requests) == (3, 24, 0)
    rows = [r for ref in refs for r in store.read_shard(merge_shard(store, ref, cfg, 42, {})).to_pylist()]
    assert len(rows) == 24 and len({r["prompt_id"] for r in rows}) == 24
    assert all(r["error"] is None and r["response"].strip() for r in rows)
    servers = engine.history()
    assert [s["gpus"] for s in servers] == [[0], [1]]
    assert [s.env.get("CUDA_VISIBLE_DEVICES") for s in launched] == ["0", "1"]
    assert servers[0]["why"] == "left" and servers[1]["started_s"] >= ledger.history()[other]["released_s"]
    by = Counter(engine.rep.answered_by.values())
    assert by[f"{NAME}-s0"] > 0 and by[f"{NAME}-s1"] > 0 and sum(by.values()) == 24
    print(f"\nanswered by server: {by}; servers: {servers}")
