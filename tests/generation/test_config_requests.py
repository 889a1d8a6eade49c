"""Pool configuration errors name the field; requests and completion rows are built exactly."""
from __future__ import annotations

import pytest

from flows.config import ConfigError, load_config
from tasks.backends.base import message_text, result_error, result_ok
from tasks.generation.config import GenerationConfig, ModelEntry, demo_pool, resolve_model
from tasks.generation.engines import engine_groups
from tasks.generation.requests import Planned, build_request, completion_row, request_id, request_seed
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG


def test_k_larger_than_pool_error_names_the_field():
    with pytest.raises(ConfigError, match=r"generation.*generation\.k"):
        load_config(CFG, ["generation.k=5"])
    cfg = load_config(CFG, ["generation.k=5", "generation.allow_repeats=true"])
    assert cfg.generation.k == 5


@pytest.mark.parametrize("override, field", [
    ("generation.models.0.serve=openai", "generation.models.0"),  # no base_url
    ("generation.models.1.api_key_env=sk-abc123", "generation.models.1.api_key_env"),
    ("generation.models.2.dtype=int3", "generation.models.2.dtype"),
    ("generation.models.3.name=scripted-alpha", "generation.models"),
    ("generation.models.0.sampling.top_p=0", "generation.models.0.sampling.top_p"),
    ("generation.models.0.colour=red", "generation.models.0.colour"),
])
def test_bad_entries_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(CFG, [override])
    assert field in str(err.value)


def test_defaults_are_the_original_sampling_and_the_demo_pool():
    entry = ModelEntry(name="x", serve="scripted")
    assert (entry.sampling.temperature, entry.sampling.top_p, entry.sampling.max_tokens) == (1.0, 1.0, 1024)
    pool = GenerationConfig().models
    assert [m.name for m in pool] == [m.name for m in demo_pool()]
    assert all(m.name.startswith("smollm2-135m-") for m in pool)
    assert len({(m.sampling.temperature, m.sampling.top_p) for m in pool}) == len(pool)
    # one model under four sampling settings shares one engine
    groups = engine_groups(GenerationConfig())
    assert len(groups) == 1 and groups[0].names == [m.name for m in pool]


def test_models_dir_placeholder(monkeypatch, tmp_path):
    (tmp_path / "M").mkdir()
    monkeypatch.setenv("UF_MODELS_DIR", str(tmp_path))
    assert resolve_model("{models_dir}/M") == str(tmp_path / "M")
    assert resolve_model("org/hub-model") == "org/hub-model"


def _planned(**kw) -> Planned:
    base = dict(prompt_id="ab" * 32, instruction="Name a prime.", completion_index=2, model="m1",
                principle="honesty", system_prompt="Be honest.")
    return Planned(**{**base, **kw})


def test_build_request_is_an_openai_batch_line():
    entry = ModelEntry(name="m1", serve="vllm_server", model="/x",
                       sampling={"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "stop": ["###"], "seeded": True,
                                 "extra": {"repetition_penalty": 1.1}})
    p = _planned()
    req = build_request(p, entry)
    assert req["custom_id"] == request_id(p.prompt_id, 2, "m1") == f"gen-{'ab' * 32}-2-m1"
    assert req["method"] == "POST" and req["url"] == "/v1/chat/completions"
    assert req["body"] == {
        "model": "m1",
        "messages": [{"role": "system", "content": "Be honest."}, {"role": "user", "content": "Name a prime."}],
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "stop": ["###"], "repetition_penalty": 1.1,
        "seed": request_seed(req["custom_id"]),
    }
    assert 0 <= req["body"]["seed"] < 2**31
    unseeded = ModelEntry(name="m1", serve="openai", model="gpt-x", base_url="http://h/v1")  # default: no seed
    body = build_request(p, unseeded)["body"]
    assert "seed" not in body and body["model"] == "gpt-x"


def _body(text, finish="stop"):
    return {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5}}


def test_completion_rows():
    p = _planned()
    ok = completion_row(p, result_ok(p.request_id, _body("Two."), 0.5), "vllm_server")
    assert ok["response"] == "Two." and ok["error"] is None and ok["finish_reason"] == "stop"
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["latency_s"]) == (11, 5, 0.5)
    assert ok["request_id"] == p.request_id and ok["backend"] == "vllm_server"

    failed = completion_row(p, result_error(p.request_id, "http_500", "boom", 1.0), "openai")
    assert failed["response"] is None and failed["error"] == "http_500: boom"

    empty = completion_row(p, result_ok(p.request_id, _body("  ", "length")), "openai")
    assert empty["response"] is None and empty["error"] == "empty_response: finish_reason=length"

    missing = completion_row(p, None, "openai")
    assert missing["response"] is None and missing["error"].startswith("missing")

    http = completion_row(p, {"custom_id": p.request_id, "response": {"status_code": 400, "body": {"e": 1}},
                              "error": None}, "openai")
    assert http["response"] is None and http["error"].startswith("http_400")


def test_batch_output_lines_become_result_records(tmp_path):
    from tasks.backends.vllm_batch import VLLMBatchBackend, _read_results

    out = tmp_path / "results.jsonl"
    lines = [
        {"id": "b1", "custom_id": "a", "error": None,
         "response": {"status_code": 200, "request_id": "x", "body": _body("Hi.")}},
        {"id": "b2", "custom_id": "b", "response": None,
         "error": {"code": "context_length_exceeded", "message": "too long"}},
        {"id": "b3", "custom_id": "c", "error": None, "response": {"status_code": 400, "body": {"error": "bad"}}},
    ]
    out.write_text("\n".join(__import__("json").dumps(x) for x in lines) + "\n")
    res = _read_results(out)
    assert message_text(res["a"]) == "Hi." and res["a"]["error"] is None and res["a"]["latency_s"] is None
    assert res["b"]["error"] == {"code": "context_length_exceeded", "message": "too long"}
    assert res["c"]["error"]["code"] == "http_400"
    be = VLLMBatchBackend("m", "/py", "/model", ["m"], str(tmp_path), runner="run_batch")
    assert be._command(tmp_path / "i", tmp_path / "o", tmp_path / "t")[1:3] == ["-m", "vllm.entrypoints.openai.run_batch"]
    offline = VLLMBatchBackend("m", "/py", "/model", ["m", "n"], str(tmp_path))
    cmd = offline._command(tmp_path / "i", tmp_path / "o", tmp_path / "t")
    assert cmd[1].endswith("vllm_offline_runner.py") and cmd[cmd.index("--served-model-name") + 1:][:2] == ["m", "n"]
    with pytest.raises(ValueError, match="batch_runner"):
        VLLMBatchBackend("m", "/py", "/model", ["m"], str(tmp_path), runner="fast")


def test_engine_env_is_offline_and_does_not_inherit_the_flows_python_paths(monkeypatch):
    from tasks.backends.vllm_server import engine_args, engine_env

    monkeypatch.setenv("PYTHONPATH", "/flow/site-packages")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    env = engine_env({"VLLM_CPU_KVCACHE_SPACE": "2"})
    assert "PYTHONPATH" not in env and env["HF_HUB_OFFLINE"] == "1" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert engine_env({"HF_HUB_OFFLINE": "0"})["HF_HUB_OFFLINE"] == "0"
    args = engine_args("/m", ["a", "b"], 2, "bfloat16", 1024, "/t.jinja", True, ["--seed", "1"])
    assert args == ["--model", "/m", "--served-model-name", "a", "b", "--dtype", "bfloat16",
                    "--tensor-parallel-size", "2", "--max-model-len", "1024", "--chat-template", "/t.jinja",
                    "--enforce-eager", "--seed", "1"]


def test_pool_entries_take_the_judges_limit_settings_with_safe_defaults():
    hosted = ModelEntry(name="api", serve="openai", model="gpt-4o-mini", base_url="https://api.openai.com/v1")
    launched = ModelEntry(name="local", serve="vllm_server", model="m")
    assert (hosted.concurrency, launched.concurrency) == (16, 256)  # a hosted endpoint is not stormed
    assert (hosted.rpm, hosted.tpm, hosted.learn_limits, hosted.retry.attempts) == (None, None, True, 5)
    old_names = ModelEntry.model_validate({"name": "api", "serve": "openai", "model": "m", "base_url": "http://x/v1",
                                           "concurrency": 8, "requests_per_minute": 500})
    assert (old_names.max_concurrency, old_names.rpm) == (8, 500)
    with pytest.raises(ValueError, match="retry.attempts"):
        ModelEntry.model_validate({"name": "a", "serve": "scripted", "retry": {"attempts": 0}})
