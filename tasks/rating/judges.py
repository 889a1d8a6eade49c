"""Which Backend asks the judge, by endpoint kind.

Inputs: a JudgeEndpoint and a folder for engine logs. Outputs: an unentered Backend:
- scripted: the in-process ScriptedJudge (tests, demos);
- openai, azure, openai_compatible, and local_vllm with a base URL: the OpenAI-protocol
  backend (tasks.backends.openai_http), the same client generation uses;
- mode batch: the provider's Batch API (tasks/backends/openai_batch.py, Anthropic Message
  Batches in tasks/backends/anthropic_messages.py), recording its batches in `state_file`;
- anthropic (realtime): the Messages API backend;
- local_vllm without a base URL: a vLLM server launched from `engine_model`, shared by all
  shard tasks of this process (started on first use, restarted if it died, stopped by
  `close_engines()` when the stage ends), so the engine starts once per run, not per shard.
"""
from __future__ import annotations

import threading
from typing import Iterable, Iterator

from tasks.backends.base import Backend, BatchRequest, BatchResult
from tasks.rating.config import JudgeEndpoint

_engines: dict[str, Backend] = {}
_lock = threading.Lock()


def _launch(endpoint: JudgeEndpoint, log_dir: str) -> Backend:
    from tasks.backends.vllm_server import VLLMServerBackend
    from tasks.backends.engine_settings import resolve_model

    eng = endpoint.engine
    return VLLMServerBackend(
        name=f"judge-{endpoint.name}", python=eng.interpreter(), model=resolve_model(endpoint.engine_model),
        served_names=[endpoint.model], log_dir=eng.log_dir or log_dir, max_model_len=endpoint.max_model_len,
        enforce_eager=eng.enforce_eager, extra_args=eng.extra_args, env=eng.env,
        startup_timeout_s=eng.startup_timeout_s, stop_timeout_s=eng.stop_timeout_s,
        concurrency=endpoint.max_concurrency, request_timeout_s=endpoint.timeout_s,
        policy=endpoint.retry.policy(endpoint.timeout_s, endpoint.max_rate_limit_wait_s))


class SharedEngine:
    """Backend proxy over one launched engine per endpoint and process; exit leaves it running."""

    def __init__(self, endpoint: JudgeEndpoint, log_dir: str):
        self.endpoint, self.log_dir = endpoint, log_dir
        self.name = f"local_vllm:{endpoint.name}"

    def __enter__(self) -> "SharedEngine":
        with _lock:
            engine = _engines.get(self.endpoint.name)
            if engine is not None and not engine.alive():
                engine.__exit__(None, None, None)
                engine = None
            if engine is None:
                engine = _launch(self.endpoint, self.log_dir).__enter__()
                _engines[self.endpoint.name] = engine
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        yield from _engines[self.endpoint.name].run(requests)


def close_engines() -> None:
    """Stop every engine this process launched for judging."""
    with _lock:
        while _engines:
            _, engine = _engines.popitem()
            engine.__exit__(None, None, None)


def _batch_judge(endpoint: JudgeEndpoint, state_file) -> Backend:
    from tasks.errors import InputError

    if state_file is None:
        raise InputError(f"rating.endpoints[{endpoint.name}].mode: batch needs a batch-state file beside the journal")
    key = endpoint.api_key()
    if not key and endpoint.kind in ("openai", "azure", "anthropic"):
        raise InputError(f"rating.endpoints[{endpoint.name}]: environment variable {endpoint.key_env} is not set "
                         f"(it must hold the API key for kind {endpoint.kind})")
    label = f"{endpoint.kind}:{endpoint.name}"
    if endpoint.kind == "anthropic":
        from tasks.backends.anthropic_messages import anthropic_client, message_batch_backend

        return message_batch_backend(anthropic_client(endpoint.resolved_base_url(), key, endpoint.timeout_s), label,
                                     endpoint.batch, state_file)
    from tasks.backends.openai_batch import batch_backend, openai_client

    client = openai_client(endpoint.kind, endpoint.resolved_base_url(), key, endpoint.api_version, endpoint.timeout_s)
    return batch_backend(client, label, endpoint.batch, state_file, azure=endpoint.kind == "azure")


def open_judge(endpoint: JudgeEndpoint, log_dir: str, state_file=None) -> Backend:
    if endpoint.mode == "batch":
        return _batch_judge(endpoint, state_file)
    if endpoint.kind == "scripted" and endpoint.script:
        from tasks.backends.scripted_faults import FaultyJudge

        return FaultyJudge(**endpoint.script)
    if endpoint.kind == "anthropic":
        from tasks.backends.anthropic_messages import AnthropicMessagesBackend

        return AnthropicMessagesBackend(endpoint)
    if endpoint.kind == "scripted":
        from tasks.backends.scripted_judge import ScriptedJudge

        return ScriptedJudge()
    if endpoint.launches_engine:
        return SharedEngine(endpoint, log_dir)
    return judge_backend(endpoint)


def judge_backend(endpoint: JudgeEndpoint, **overrides) -> Backend:
    """The OpenAI-protocol backend for an endpoint with a URL (or the SDK's default for kind
    openai); `overrides` replace backend arguments (tests: window_s, policy)."""
    from tasks.backends.openai_http import OpenAIHTTPBackend

    ep = endpoint
    base_url = ep.resolved_base_url() or ("https://api.openai.com/v1" if ep.kind == "openai" else None)
    key = ep.api_key()
    missing = None
    if not key and ep.kind in ("openai", "azure"):
        missing = (f"rating.endpoints[{ep.name}]: environment variable {ep.key_env} is not set "
                   f"(it must hold the API key for kind {ep.kind})")
    if not base_url:  # reported on entry, like a missing key: a finished run reruns without it
        missing = f"rating.endpoints[{ep.name}].base_url: no endpoint URL (set base_url or {ep.url_env})"
        base_url = "http://base-url-not-set.invalid/v1"
    args = dict(api_key=key, key_env=ep.key_env, model=ep.model, rpm=ep.rpm, tpm=ep.tpm,
                max_concurrency=ep.max_concurrency, learn_limits=ep.learn_limits,
                policy=ep.retry.policy(ep.timeout_s, ep.max_rate_limit_wait_s),
                limit_key=ep.limit_group or f"{ep.kind}|{base_url}|{ep.request_model}",
                azure_api_version=ep.api_version if ep.kind == "azure" else None, missing_key=missing)
    if ep.shared_limit is not None:
        from tasks.backends.shared_limit import open_gate

        args["shared_gate"] = open_gate(ep.shared_limit)
    args.update(overrides)
    return OpenAIHTTPBackend(f"{ep.kind}:{ep.name}", base_url, **args)
