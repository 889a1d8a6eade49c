"""The generation flow on an elastic GPU plan, with stand-in launched servers.

Each pool entry is served by `serve: vllm_server` whose `engine.python` runs
tests/servers/vllm_standin.py: a real OpenAI-protocol HTTP server that the flow launches,
health-checks, feeds and stops exactly as it would vLLM, and that records the
CUDA_VISIBLE_DEVICES it was given. The plan is on 3 GPU ids (no GPU is used): two engines
swap GPUs half way (their first servers leave, the next ones join on the GPUs released),
and a third engine's second server joins on the GPU a finished engine frees. Re-planned at
run time, an engine planned to share the run evenly but three times the work of the other
gets a second server on the GPU the other frees, which its plan never gave it. A server
SIGKILLed mid-run is relaunched within its engine task, re-planned or not, and every part is
written once.
"""
from __future__ import annotations

import json

import pytest

from flows.config import load_config
from flows.ultrafeedback import ultrafeedback
from storage.shards import ShardStore
from tasks.generation.engines import engine_groups
from tasks.generation.schedule_plan import Placement, Plan
from tasks.generation.schedule_pool import plan_for_pool
from tests.paths import SCRIPTED_CONFIG
from tests.servers.vllm_standin import standin_python

A, B, C = "scripted-alpha+1", "scripted-gamma", "scripted-delta"
# Engine A serves two pool entries (one model, two sampling settings): twice the requests.
MODELS = ["standin/a", "standin/a", "standin/b", "standin/c"]
LATENCY_S = 0.3  # per answer; two slots per server: about 6.7 answers/s a server


def elastic_config(tmp_path, gpus: int = 3, models: list[str] = MODELS, replan: bool = False):
    python = standin_python(tmp_path)
    over = ["generation.schedule.mode=elastic", f"generation.schedule.gpus={gpus}",
            "generation.schedule.load_s=0.5", "generation.schedule.tokens_per_s=100",
            f"generation.schedule.replan={str(replan).lower()}"]
    for i, model in enumerate(models):
        over += [f"generation.models.{i}.serve=vllm_server", f"generation.models.{i}.model={model}",
                 f"generation.models.{i}.engine.python={python}", f"generation.models.{i}.engine.stop_timeout_s=5",
                 f"generation.models.{i}.concurrency=2", f"generation.models.{i}.sampling.max_tokens=16",
                 f"generation.models.{i}.sampling.temperature={0.5 + i / 10}"]
    return load_config(SCRIPTED_CONFIG, overrides=over, output=str(tmp_path / "run"))


def swap_plan() -> Plan:
    def p(engine, gpu, start, end):
        return Placement(engine, 0, (gpu,), 1, start, end, 0.5)

    # GPU 0: A then B; GPU 1: B then A; GPU 2: C then A. A's and B's first servers are
    # planned short, with a later server of theirs still to come: they leave at 1.5 s.
    return Plan(3, 3, [p(A, 0, 0, 1.5), p(B, 1, 0, 1.5), p(C, 2, 0, 3), p(A, 1, 1.5, 6), p(B, 0, 1.5, 6),
                       p(A, 2, 3, 6)])


def test_the_planner_splits_engines_into_servers_in_elastic_mode(tmp_path):
    cfg = elastic_config(tmp_path)
    plan = plan_for_pool(cfg.generation, engine_groups(cfg.generation), 15)
    assert cfg.generation.schedule.mode == "elastic"
    assert any(len(plan.of(e)) > 1 for e in (A, B, C))  # one engine on several GPUs at different times


def test_servers_join_and_leave_as_their_gpus_are_released(prefect_harness, monkeypatch, tmp_path):
    import flows.stage_generate as sg

    launches = tmp_path / "launches.jsonl"
    monkeypatch.setenv("STANDIN_LAUNCH_LOG", str(launches))
    monkeypatch.setenv("STANDIN_LATENCY_S", str(LATENCY_S))
    monkeypatch.setattr(sg, "plan_for_pool", lambda *a: swap_plan())
    cfg = elastic_config(tmp_path)
    summary = ultrafeedback(config=cfg, stages=["sample", "generate"])["stages"]["generate"]

    # every shard part written once, every request answered
    assert summary["shards"] == {"written": 5, "kept": 0, "cached": 0, "failed": 0}
    assert summary["completions"] == 60 and summary["failed_requests_this_run"] == 0
    engines = {e["engine_id"]: e for e in summary["engines"]}
    assert {e: engines[e]["written"] for e in (A, B, C)} == {A: 10, B: 5, C: 5}
    assert {e: engines[e]["requests"] for e in (A, B, C)} == {A: 30, B: 15, C: 15}
    store = ShardStore(cfg.output)
    rows = [r for ref in store.refs("generate") for r in store.read_shard(ref).to_pylist()]
    assert len(rows) == 60 and all(r["response"] and r["error"] is None for r in rows)

    # the manifest has the mode, the plan and what ran
    sched = summary["schedule"]
    assert sched["mode"] == "elastic" and len(sched["placements"]) == 6
    ran = sched["ran"]
    assert [r["state"] for r in ran] == ["done"] * 6
    # per GPU, each server took it only after the one before it there had released it
    for gpu in range(3):
        on = [r for r in ran if gpu in r["gpus"]]
        assert all(later["acquired_s"] >= earlier["released_s"] for earlier, later in zip(on, on[1:]))
    # A's and B's first servers left while their engines still had work, and the GPUs swapped
    servers = {e: engines[e]["servers"] for e in (A, B, C)}
    assert [s["gpus"] for s in servers[A]] == [[0], [1], [2]] and [s["gpus"] for s in servers[B]] == [[1], [0]]
    assert servers[A][0]["why"] == "left" and servers[B][0]["why"] == "left"
    assert servers[A][1]["started_s"] >= servers[B][0]["stopped_s"]
    assert servers[B][1]["started_s"] >= servers[A][0]["stopped_s"]
    # A's third server joined on GPU 2 once C, done, released it (and A's second still ran)
    assert servers[A][2]["started_s"] >= servers[C][0]["stopped_s"]
    assert servers[A][2]["started_s"] < servers[A][1]["stopped_s"]

    # each launch got its placement's GPU as CUDA_VISIBLE_DEVICES
    records = [json.loads(line) for line in launches.read_text().splitlines()]
    engine_of = {"standin/a": A, "standin/b": B, "standin/c": C}
    launched = sorted((engine_of[r["model"]], r["cuda_visible_devices"]) for r in records)
    assert launched == sorted([(A, "0"), (A, "1"), (A, "2"), (B, "1"), (B, "0"), (C, "2")])


def test_a_re_planned_run_gives_a_freed_gpu_to_the_engine_still_at_work(prefect_harness, monkeypatch, tmp_path):
    import flows.stage_generate as sg

    launches = tmp_path / "launches.jsonl"
    monkeypatch.setenv("STANDIN_LAUNCH_LOG", str(launches))
    monkeypatch.setenv("STANDIN_LATENCY_S", str(LATENCY_S))
    heavy, light = "scripted-alpha+2", C  # one model, three sampling settings: 45 requests, against 15
    even = Plan(2, 2, [Placement(heavy, 0, (0,), 1, 0.0, 10.0, 1.0), Placement(light, 0, (1,), 1, 0.0, 10.0, 1.0)])
    monkeypatch.setattr(sg, "plan_for_pool", lambda *a: even)
    cfg = elastic_config(tmp_path, gpus=2, models=["standin/a"] * 3 + ["standin/b"], replan=True)
    summary = ultrafeedback(config=cfg, stages=["sample", "generate"])["stages"]["generate"]

    assert summary["completions"] == 60 and summary["failed_requests_this_run"] == 0
    engines = {e["engine_id"]: e for e in summary["engines"]}
    assert {e: engines[e]["requests"] for e in (heavy, light)} == {heavy: 45, light: 15}
    servers = engines[heavy]["servers"]
    assert [s["gpus"] for s in servers] == [[0], [1]]  # the second one was never in the plan
    assert servers[1]["started_s"] >= engines[light]["servers"][0]["stopped_s"]
    assert servers[1]["started_s"] < servers[0]["stopped_s"]  # side by side
    sched = summary["schedule"]
    assert sched["replans"] and any(r["new_placements"] for r in sched["replans"])
    assert [r["engine_id"] for r in sched["ran"] if r["state"] == "done"] == [heavy, light, heavy]
    records = [json.loads(line) for line in launches.read_text().splitlines()]
    assert sorted((r["model"], r["cuda_visible_devices"]) for r in records) == [
        ("standin/a", "0"), ("standin/a", "1"), ("standin/b", "1")]


@pytest.mark.parametrize("replan", [False, True])
def test_a_server_killed_mid_run_is_relaunched_within_its_engine_task(prefect_harness, monkeypatch, tmp_path,
                                                                       replan):
    import flows.stage_generate as sg

    launches = tmp_path / "launches.jsonl"
    monkeypatch.setenv("STANDIN_LAUNCH_LOG", str(launches))
    monkeypatch.setenv("STANDIN_LATENCY_S", str(LATENCY_S))
    monkeypatch.setenv("STANDIN_DIE_ONCE", str(tmp_path / "died"))
    monkeypatch.setenv("STANDIN_DIE_MODEL", "standin/a")
    monkeypatch.setenv("STANDIN_DIE_AFTER", "7")
    one_each = Plan(3, 3, [Placement(e, 0, (g,), 1, 0.0, 10.0, 0.5) for g, e in enumerate((A, B, C))])
    monkeypatch.setattr(sg, "plan_for_pool", lambda *a: one_each)
    cfg = elastic_config(tmp_path, replan=replan)
    summary = ultrafeedback(config=cfg, stages=["sample", "generate"])["stages"]["generate"]

    assert (tmp_path / "died").exists()  # A's first server was SIGKILLed after 7 answers
    assert summary["completions"] == 60 and summary["failed_requests_this_run"] == 0
    assert summary["shards"]["failed"] == 0
    engines = {e["engine_id"]: e for e in summary["engines"]}
    a = engines[A]
    # one attempt did it all: a retry would keep the parts written before the kill and send the rest
    assert (a["written"], a["kept"], a["requests"]) == (10, 0, 30)
    servers = a["servers"]
    assert servers[0]["gpus"] == [0] and servers[0]["why"] == "died"
    assert len(servers) >= 2 and servers[1]["started_s"] >= servers[0]["stopped_s"]
    records = [json.loads(line) for line in launches.read_text().splitlines()]
    if not replan:  # relaunched where it died, and only there
        assert [(s["gpus"], s["why"]) for s in servers] == [([0], "died"), ([0], "engine done")]
        assert [r["cuda_visible_devices"] for r in records if r["model"] == "standin/a"] == ["0", "0"]
    else:  # a re-plan gave it its placement (and maybe the GPUs B and C freed)
        whys = [w for r in summary["schedule"]["replans"] for w in r["why"]]
        assert any("has no server" in w or "GPUs (0,) stopped" in w for w in whys)
    store = ShardStore(cfg.output)
    rows = [r for ref in store.refs("generate") for r in store.read_shard(ref).to_pylist()]
    assert len(rows) == 60 and all(r["response"] and r["error"] is None for r in rows)
    assert len({r["request_id"] for r in rows}) == 60  # each request's answer written once
