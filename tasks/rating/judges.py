"""Which Backend asks the judge, by endpoint kind.

Inputs: a JudgeEndpoint and a folder for engine logs. Outputs: an unentered Backend:
- scripted: the in-process ScriptedJudge (tests, demos);
- openai, azure, openai_compatible, and local_vllm with a base URL: the HTTP judge backend;
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
        concurrency=endpoint.max_concurrency, request_timeout_s=endpoint.timeout_s)


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


def open_judge(endpoint: JudgeEndpoint, log_dir: str) -> Backend:
    if endpoint.kind == "scripted":
        from tasks.backends.scripted_judge import ScriptedJudge

        return ScriptedJudge()
    if endpoint.launches_engine:
        return SharedEngine(endpoint, log_dir)
    from tasks.backends.openai_judge import OpenAIJudgeBackend

    return OpenAIJudgeBackend(endpoint)
