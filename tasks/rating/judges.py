"""Which Backend asks the judge, by endpoint mode and kind (the `JUDGES` registry).

Inputs: a JudgeEndpoint and a folder for engine logs. Outputs: an unentered Backend:
- scripted: the in-process ScriptedJudge (tests, demos), or with a `script` the FaultyJudge
  of tasks.rating.scripted_faults (planted faults for the judge audit);
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
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from tasks.backends.base import Backend, BatchRequest, BatchResult
from tasks.rating.config import JudgeEndpoint

_engines: dict[str, Backend] = {}
_lock = threading.Lock()


def _launch(endpoint: JudgeEndpoint, log_dir: str) -> Backend:
    from tasks.backends.engine_settings import resolve_model
    from tasks.backends.vllm_server import VLLMServerBackend

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
            # healthy, not merely alive: a server killed a moment ago still runs while it dies,
            # and reusing it would fail the shard's retry instead of relaunching
            if engine is not None and not engine.healthy():
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


def _batch_key(endpoint: JudgeEndpoint, state_file) -> str | None:
    from tasks.errors import InputError

    if state_file is None:
        raise InputError(f"rating.endpoints[{endpoint.name}].mode: batch needs a batch-state file beside the journal")
    key = endpoint.api_key()
    if not key and endpoint.kind in ("openai", "azure", "anthropic"):
        raise InputError(f"rating.endpoints[{endpoint.name}]: environment variable {endpoint.key_env} is not set "
                         f"(it must hold the API key for kind {endpoint.kind})")
    return key


def _anthropic_batches(endpoint: JudgeEndpoint, opening: "Opening") -> Backend:
    from tasks.backends.anthropic_messages import anthropic_client, message_batch_backend

    key = _batch_key(endpoint, opening.state_file)
    return message_batch_backend(anthropic_client(endpoint.resolved_base_url(), key, endpoint.timeout_s),
                                 f"{endpoint.kind}:{endpoint.name}", endpoint.batch, opening.state_file)


def _openai_batches(endpoint: JudgeEndpoint, opening: "Opening") -> Backend:
    from tasks.backends.openai_batch import batch_backend, openai_client

    key = _batch_key(endpoint, opening.state_file)
    client = openai_client(endpoint.kind, endpoint.resolved_base_url(), key, endpoint.api_version, endpoint.timeout_s)
    return batch_backend(client, f"{endpoint.kind}:{endpoint.name}", endpoint.batch, opening.state_file,
                         azure=endpoint.kind == "azure")


def _scripted(endpoint: JudgeEndpoint, opening: "Opening") -> Backend:
    if endpoint.script:  # planted faults, for the judge audit's tests and demos
        from tasks.rating.scripted_faults import FaultyJudge

        return FaultyJudge(**endpoint.script, oracle=opening.oracle)
    from tasks.rating.scripted import ScriptedJudge

    return ScriptedJudge()


def _anthropic(endpoint: JudgeEndpoint, opening: "Opening") -> Backend:
    from tasks.backends.anthropic_messages import AnthropicMessagesBackend

    return AnthropicMessagesBackend(endpoint)


def _local_vllm(endpoint: JudgeEndpoint, opening: "Opening") -> Backend:
    return SharedEngine(endpoint, opening.log_dir) if endpoint.launches_engine else judge_backend(endpoint)


def _http(endpoint: JudgeEndpoint, opening: "Opening") -> Backend:
    return judge_backend(endpoint)


@dataclass(frozen=True)
class Opening:
    """What a factory may need besides the endpoint: the engine log folder, the batch-state
    file (mode batch) and the human labels of the scripted oracle judge (the audit's)."""

    log_dir: str
    state_file: Any = None
    oracle: Callable[[], tuple[dict, dict]] | None = None


Factory = Callable[[JudgeEndpoint, Opening], Backend]
# (mode, kind) -> factory; a new judge backend is one entry here (and its kind in config.Kind).
JUDGES: dict[tuple[str, str], Factory] = {
    ("realtime", "scripted"): _scripted,
    ("realtime", "anthropic"): _anthropic,
    ("realtime", "local_vllm"): _local_vllm,
    ("realtime", "openai"): _http,
    ("realtime", "azure"): _http,
    ("realtime", "openai_compatible"): _http,
    ("batch", "anthropic"): _anthropic_batches,
    ("batch", "openai"): _openai_batches,
    ("batch", "azure"): _openai_batches,
    ("batch", "openai_compatible"): _openai_batches,
}


def open_judge(endpoint: JudgeEndpoint, log_dir: str, state_file=None, oracle=None) -> Backend:
    """An unentered Backend for the endpoint (`oracle`: labels for a scripted oracle judge)."""
    return JUDGES[(endpoint.mode, endpoint.kind)](endpoint, Opening(log_dir, state_file, oracle))


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
