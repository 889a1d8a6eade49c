"""The HTTP judge backend: OpenAI, Azure OpenAI or any OpenAI-compatible server (vLLM).

Inputs: a `JudgeEndpoint` (tasks.rating.config) and Batch-style request records. Outputs:
Batch-style results, yielded as answers arrive (so a journal can keep each one before the
next), with `usage` inside `response.body`.

Requests go out concurrently through the endpoint's shared limiter (tasks.backends.limiter).
The SDK's own retries are off (max_retries=0): they would retry 429s behind the limiter's
back. Within a request only two things are retried, by tenacity: 429s (the limiter decides
the wait; past `max_rate_limit_wait_s` the run raises RateLimitedError and the orchestrator
retries the shard later) and a small, bounded number of transport failures (5xx, timeouts,
connection resets, unreadable bodies), after which the request becomes an error result
whose code the stage treats as transient. Other 4xx become error results with their status
code (permanent); 401/403 raise InputError naming the key's environment variable.

The key is read from the environment when the client is built and is scrubbed from every
message this module produces; it never enters results, logs or exceptions.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from typing import Any, Iterable, Iterator

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from tasks.backends.base import BatchRequest, BatchResult, result_error, result_ok
from tasks.errors import InputError, RateLimitedError
from tasks.rating.config import JudgeEndpoint
from tasks.backends.limiter import EndpointLimiter, estimate_prompt_tokens, limiter_for
from tasks.rating.protocol import find_aspect

log = logging.getLogger(__name__)
_DONE = object()


class _Fatal(Exception):
    """Carries an error that ends the whole run (auth, 429 budget spent)."""


class OpenAIJudgeBackend:
    """Backend for kinds openai, azure, openai_compatible and local_vllm (an HTTP server)."""

    def __init__(self, endpoint: JudgeEndpoint, *, transport_retries: int = 2, window_s: float = 60.0,
                 gate: str | None = None, max_rate_limit_retries: int = 100, base_url: str | None = None,
                 limiter: EndpointLimiter | None = None):
        self.endpoint = endpoint
        self.name = f"{endpoint.kind}:{endpoint.name}"
        self.transport_retries = transport_retries
        self.max_rate_limit_retries = max_rate_limit_retries
        self.base_url = base_url or endpoint.resolved_base_url()
        self.limiter = limiter or limiter_for(
            f"{endpoint.kind}|{self.base_url or 'default'}|{endpoint.request_model}", rpm=endpoint.rpm,
            tpm=endpoint.tpm, max_concurrency=endpoint.max_concurrency, learn_limits=endpoint.learn_limits,
            window_s=window_s, gate=gate, model=endpoint.model)
        self._key: str | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> "OpenAIJudgeBackend":
        ep = self.endpoint
        self._key = ep.api_key()
        if not self._key:
            if ep.kind in ("openai", "azure"):
                raise InputError(f"rating.endpoints[{ep.name}]: environment variable {ep.key_env} is not set "
                                 f"(it must hold the API key for kind {ep.kind})")
            self._key = "EMPTY"  # OpenAI-compatible servers such as vLLM accept any key
        if ep.kind == "azure" and not self.base_url:
            raise InputError(f"rating.endpoints[{ep.name}].base_url: no Azure endpoint (set base_url or {ep.url_env})")
        return self

    def __exit__(self, *exc: object) -> None:
        self._key = None

    def _client(self):
        import openai

        ep = self.endpoint
        common = {"api_key": self._key, "max_retries": 0, "timeout": ep.timeout_s}
        if ep.kind == "azure":
            return openai.AsyncAzureOpenAI(azure_endpoint=self.base_url, api_version=ep.api_version, **common)
        return openai.AsyncOpenAI(base_url=self.base_url, **common)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key and self._key != "EMPTY" else text

    # --- running -----------------------------------------------------------------------
    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        """Send every request; yield results as they arrive (any order)."""
        if self._key is None:
            raise RuntimeError("use the backend as a context manager (with ... as backend)")
        reqs = list(requests)
        if not reqs:
            return
        out: queue.Queue = queue.Queue()
        started = threading.Event()
        ctl: dict[str, Any] = {}  # the worker's loop and main task, to cancel it from here
        worker = threading.Thread(target=self._thread_main, args=(reqs, out, started, ctl), daemon=True,
                                  name=f"judge-{self.endpoint.name}")
        worker.start()
        started.wait()
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            loop, main = ctl.get("loop"), ctl.get("main")
            if worker.is_alive() and loop is not None and main is not None:
                try:
                    loop.call_soon_threadsafe(main.cancel)  # the consumer stopped early
                except RuntimeError:
                    pass
            worker.join(timeout=30)

    def _thread_main(self, reqs: list[BatchRequest], out: queue.Queue, started: threading.Event, ctl: dict) -> None:
        async def main() -> None:
            ctl["loop"], ctl["main"] = asyncio.get_running_loop(), asyncio.current_task()
            started.set()
            client = self._client()
            try:
                tasks = [asyncio.create_task(self._one(client, r)) for r in reqs]
                try:
                    for fut in asyncio.as_completed(tasks):
                        out.put(await fut)
                except _Fatal as fatal:
                    out.put(fatal.args[0])
                finally:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await client.close()

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # surface anything unexpected to the consumer
            out.put(exc)
        finally:
            started.set()
            out.put(_DONE)

    async def _one(self, client: Any, req: BatchRequest) -> BatchResult:
        body = dict(req["body"])
        cid = req["custom_id"]
        messages = body.get("messages") or []
        prompt_est = estimate_prompt_tokens(messages, self.endpoint.model)
        user = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "") or ""
        label = find_aspect(user) if isinstance(user, str) else None
        first_429: list[float] = []

        async def attempt() -> BatchResult:
            async with self.limiter.slot(prompt_est, body.get("max_tokens"), label or "other") as permit:
                t0 = time.monotonic()
                try:
                    raw = await client.chat.completions.with_raw_response.create(**body)
                    data = raw.parse().model_dump(mode="json", exclude_unset=True)
                except Exception as exc:
                    if _status(exc) == 429:
                        self.limiter.rate_limited(permit, _headers(exc))
                        first_429.append(time.monotonic())
                    raise
                self.limiter.answered(permit, raw.headers, data.get("usage"))
                return result_ok(cid, data, latency_s=time.monotonic() - t0)

        retrying = AsyncRetrying(retry=retry_if_exception(_retryable), stop=self._stop(first_429),
                                 wait=self._wait, reraise=True)
        t_start = time.monotonic()
        try:
            return await retrying(attempt)
        except Exception as exc:
            return self._failure(cid, exc, time.monotonic() - t_start, first_429)

    # --- retry policy ------------------------------------------------------------------
    def _stop(self, first_429: list[float]):
        budget = self.endpoint.max_rate_limit_wait_s

        def stop(rs: RetryCallState) -> bool:
            exc = rs.outcome.exception() if rs.outcome else None
            if _status(exc) == 429:
                return (len(first_429) > self.max_rate_limit_retries
                        or time.monotonic() - first_429[0] > budget)
            transport = rs.attempt_number - len(first_429)
            return transport > self.transport_retries

        return stop

    @staticmethod
    def _wait(rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if _status(exc) == 429:
            return 0.0  # the limiter holds every request of the endpoint until the pause ends
        return wait_random_exponential(multiplier=0.5, max=8.0)(rs)

    def _failure(self, cid: str, exc: Exception, elapsed: float, first_429: list[float]) -> BatchResult:
        import openai

        status = _status(exc)
        msg = self._scrub(f"{type(exc).__name__}: {_message(exc)}")[:500]
        if status == 429:
            raise _Fatal(RateLimitedError(
                f"judge endpoint {self.endpoint.name!r} still answered 429 after {len(first_429)} tries over "
                f"{time.monotonic() - first_429[0]:.0f}s (rating.endpoints[{self.endpoint.name}]."
                "max_rate_limit_wait_s); answers so far are kept, a retry sends the rest"))
        if status in (401, 403):
            raise _Fatal(InputError(
                f"judge endpoint {self.endpoint.name!r} refused the key from ${self.endpoint.key_env} "
                f"(HTTP {status}): {msg}"))
        if status is not None:
            code = str(status)
        elif isinstance(exc, openai.APITimeoutError):
            code = "timeout"
        elif isinstance(exc, openai.APIConnectionError):
            code = "connection_error"
        else:
            code = "bad_response"
        log.info("judge request %s failed: %s", cid, msg)
        return result_error(cid, code, msg, latency_s=elapsed)


def _status(exc: BaseException | None) -> int | None:
    return getattr(exc, "status_code", None) if exc is not None else None


def _headers(exc: BaseException) -> dict[str, str]:
    resp = getattr(exc, "response", None)
    return dict(resp.headers) if resp is not None else {}


def _message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc)


def _retryable(exc: BaseException) -> bool:
    import openai

    status = _status(exc)
    if status is not None:
        return status == 429 or status >= 500 or status == 408
    return isinstance(exc, (openai.APIConnectionError, openai.APIResponseValidationError, json.JSONDecodeError))
