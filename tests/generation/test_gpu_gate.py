"""The GPU gate: vLLM engine tasks take tensor_parallel_size slots of the configured limit."""
from __future__ import annotations

from contextlib import contextmanager

import prefect.concurrency.sync

import flows.stage_generate as sg
from flows.config import load_config
from tasks.generation.config import GenerationConfig
from tasks.generation.engines import engine_groups
from tasks.generation.stage import GroupResult
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG


def _run(monkeypatch, gpu_slots, tmp_path):
    taken = []

    @contextmanager
    def fake_concurrency(names, occupy=1, **kw):
        taken.append((names, occupy))
        yield

    monkeypatch.setattr(prefect.concurrency.sync, "concurrency", fake_concurrency)
    monkeypatch.setattr(sg, "run_group", lambda store, group, *a, **k: GroupResult(group.engine_id))
    gen = GenerationConfig.model_validate({"k": 1, "gpu_slots": gpu_slots, "models": [
        {"name": "big", "serve": "vllm_server", "model": "/m/big", "tensor_parallel_size": 2},
        {"name": "api", "serve": "openai", "model": "x", "base_url": "http://127.0.0.1:9/v1"}]})
    cfg = load_config(CFG, output=str(tmp_path)).model_copy(update={"generation": gen})
    for group in engine_groups(gen):
        sg.generate_with_engine.fn(cfg, group, [])
    return taken


def test_vllm_engines_take_their_gpus_from_the_limit(monkeypatch, tmp_path):
    assert _run(monkeypatch, "gpu", tmp_path) == [("gpu", 2)]  # the API model takes no GPU


def test_no_limit_configured_no_gate(monkeypatch, tmp_path):
    assert _run(monkeypatch, None, tmp_path) == []
