"""Rating configuration: original defaults, endpoint kinds, errors that name the field, no secrets."""
from __future__ import annotations

import pytest

from flows.config import ConfigError, validate_config
from tasks.rating.config import RatingConfig
from tests.rating.conftest import ROOT


def run_config(rating: dict) -> dict:
    return {"sources": [{"name": "tqa", "format": "truthful_qa", "path": str(ROOT / "data/sources/truthfulqa/TruthfulQA.csv")}],
            "rating": rating}


def test_defaults_follow_the_original_and_use_the_local_structured_judge():
    c = RatingConfig()
    assert (c.temperature, c.top_p, c.reasks, c.critique) == (0.0, 0.6, 1, True)
    assert c.aspects == ["instruction_following", "honesty", "truthfulness", "helpfulness"]
    assert (c.endpoint.kind, c.endpoint.answer_mode) == ("local_vllm", "structured")


@pytest.mark.parametrize("rating, fragment", [
    ({"judge": "gpt4"}, "rating: Value error, judge: 'gpt4' names no endpoint"),
    ({"endpoints": [{"name": "a", "kind": "azure", "model": "gpt-4o", "api_version": "2024-10-21"}], "judge": "a"},
     "rating.endpoints.0: Value error, deployment: required for kind azure"),
    ({"endpoints": [{"name": "a", "kind": "openai", "model": "gpt-4o", "api_key_env": "sk-proj-abc123"}], "judge": "a"},
     "rating.endpoints.0.api_key_env: Value error, expected the NAME of an environment variable"),
    ({"endpoints": [{"name": "a", "kind": "openai_compatible", "model": "m"}], "judge": "a"},
     "rating.endpoints.0: Value error, base_url: required for kind openai_compatible"),
    ({"aspects": ["honesty", "honesty"]}, "rating.aspects: Value error, aspects repeated: ['honesty']"),
    ({"aspects": [], "critique": False}, "nothing to rate"),
    ({"top_p": 0}, "rating.top_p: Input should be greater than 0"),
    ({"reasks": 9}, "rating.reasks: Input should be less than or equal to 5"),
    ({"endpoints": [{"name": "a", "kind": "openai", "model": "gpt-4o", "api_key": "x"}], "judge": "a"},
     "rating.endpoints.0.api_key: Extra inputs are not permitted"),
])
def test_errors_name_the_field(rating, fragment):
    with pytest.raises(ConfigError) as err:
        validate_config(run_config(rating))
    assert fragment in str(err.value)


def test_keys_come_from_the_environment_and_never_enter_the_config(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("MY_AZURE_KEY", "azure-test-key")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.openai.azure.com")
    c = RatingConfig.model_validate({"endpoints": [
        {"name": "oa", "kind": "openai", "model": "gpt-4o"},
        {"name": "az", "kind": "azure", "model": "gpt-4o", "deployment": "judge-deploy", "api_version": "2024-10-21",
         "api_key_env": "MY_AZURE_KEY"},
        {"name": "vl", "kind": "openai_compatible", "model": "qwen", "base_url": "http://127.0.0.1:8000/v1"}], "judge": "az"})
    oa, az, vl = c.endpoints
    assert (oa.key_env, oa.api_key()) == ("OPENAI_API_KEY", "sk-test-not-a-real-key")
    assert (az.key_env, az.api_key(), az.request_model) == ("MY_AZURE_KEY", "azure-test-key", "judge-deploy")
    assert az.resolved_base_url() == "https://example.openai.azure.com"
    assert vl.resolved_base_url() == "http://127.0.0.1:8000/v1" and c.endpoint is az
    dumped = c.model_dump_json()
    assert "sk-test" not in dumped and "azure-test-key" not in dumped and "OPENAI_API_KEY" in dumped


def test_an_openai_key_is_not_sent_to_other_hosts_by_default(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    ep = RatingConfig.model_validate({"endpoints": [{"name": "v", "kind": "openai_compatible", "model": "m",
                                                     "base_url": "http://10.0.0.5:8000/v1"}], "judge": "v"}).endpoint
    assert ep.key_env is None and ep.api_key() is None
