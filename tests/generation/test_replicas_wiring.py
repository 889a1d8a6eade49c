"""A pool entry with `replicas: N` launches N vLLM servers behind one ReplicatedBackend."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.backends.replicas import ReplicatedBackend
from tasks.backends.vllm_server import VLLMServerBackend
from tasks.generation.config import GenerationConfig
from tasks.generation.engines import engine_groups, open_backend


def _pool(**entry) -> GenerationConfig:
    base = {"name": "small", "serve": "vllm_server", "model": "some/model"}
    return GenerationConfig.model_validate({"k": 1, "models": [{**base, **entry}]})


def test_replicas_give_one_server_each_behind_one_backend(tmp_path):
    cfg = _pool(replicas=3, concurrency=8)
    [group] = engine_groups(cfg)
    backend = open_backend(group, str(tmp_path))
    assert isinstance(backend, ReplicatedBackend)
    assert [r.name for r in backend.replicas] == ["small-r0", "small-r1", "small-r2"]
    assert all(isinstance(r, VLLMServerBackend) and r.concurrency == 8 for r in backend.replicas)
    assert all(r.args == backend.replicas[0].args for r in backend.replicas)  # the same model, same engine


def test_one_replica_is_a_plain_server(tmp_path):
    [group] = engine_groups(_pool())
    assert isinstance(open_backend(group, str(tmp_path)), VLLMServerBackend)


def test_entries_with_different_replica_counts_do_not_share_an_engine():
    cfg = GenerationConfig.model_validate({"k": 1, "models": [
        {"name": "a", "serve": "vllm_server", "model": "some/model"},
        {"name": "b", "serve": "vllm_server", "model": "some/model", "replicas": 2}]})
    assert len(engine_groups(cfg)) == 2


@pytest.mark.parametrize("extra, field", [
    ({"serve": "openai", "base_url": "http://x/v1", "replicas": 2}, "replicas > 1 needs serve vllm_server"),
    ({"replicas": 0}, "replicas"),
])
def test_bad_replicas_name_the_field(extra, field):
    with pytest.raises(ValidationError, match=field):
        _pool(**extra)


def test_replicas_and_a_gpu_schedule_do_not_mix():
    with pytest.raises(ValidationError, match=r"generation.models.0.replicas"):
        GenerationConfig.model_validate({"k": 1, "schedule": {"gpus": 2}, "models": [
            {"name": "a", "serve": "vllm_server", "model": "some/model", "replicas": 2}]})


def test_the_schedule_mode_is_validated_and_named():
    base = {"k": 1, "models": [{"name": "a", "serve": "vllm_server", "model": "some/model"}]}
    assert GenerationConfig.model_validate(base).schedule.mode == "static"
    with pytest.raises(ValidationError, match=r"generation.schedule.mode: elastic needs generation.schedule.gpus"):
        GenerationConfig.model_validate({**base, "schedule": {"mode": "elastic"}})
    with pytest.raises(ValidationError, match=r"schedule.mode"):
        GenerationConfig.model_validate({**base, "schedule": {"gpus": 2, "mode": "dynamic"}})
    assert GenerationConfig.model_validate({**base, "schedule": {"gpus": 2, "mode": "elastic"}}).schedule.mode == "elastic"
