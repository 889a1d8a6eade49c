"""Concurrent client for any OpenAI-compatible chat-completions endpoint.

Inputs: request records (OpenAI Batch JSONL lines), a base URL (`.../v1`), an optional
API key (read by the caller from the environment variable the config names; never
logged), a concurrency bound and an optional requests-per-minute limit.
Outputs: one result record per request, yielded as each one finishes.

Failure policy (the orchestrator owns retries):
- 429: honour Retry-After (or a short default) and re-send, up to `max_rate_limit_wait_s`
  of waiting in total per request; past that, RateLimitedError ends the run.
- Any other HTTP error or a timeout: an error record for that request (data, not an
  exception); the stage decides whether the shard as a whole is good enough.
- Connection refused: the endpoint is gone, so the whole run raises (EngineDiedError for
  an engine we launched, TransientError for an external endpoint). A dropped connection
  raises the same when the launched engine no longer answers its health check, and is an
  error record otherwise.

The asyncio loop runs in a private thread, so `run` is a plain iterator usable from
synchronous Prefect tasks and from code that already runs an event loop.
"""
from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from typing import Callable, Iterable, Iterator

from tasks.backends.base import BatchRequest, BatchResult, result_ok
from tasks.errors import EngineDiedError, RateLimitedError, TransientError

_DONE = object()


class OpenAICompatBackend:
    def __init__(self, name: str, base_url: str, api_key: str | None = None, concurrency: int = 64,
                 timeout_s: float = 900, requests_per_minute: float | None = None,
                 max_rate_limit_wait_s: float = 300, launched: bool = False,
                 alive: Callable[[], bool] | None = None):
        # alive: for a launched engine, a (blocking) check that it still runs and answers.
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.requests_per_minute = requests_per_minute
        self.max_rate_limit_wait_s = max_rate_limit_wait_s
        self.launched = launched
        self.alive = alive

    def __repr__(self) -> str:  # keeps the key out of any log line that prints the backend
        return f"OpenAICompatBackend(name={self.name!r}, base_url={self.base_url!r})"

    def __enter__(self) -> "OpenAICompatBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    # -- public ------------------------------------------------------------------
    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        thread = threading.Thread(target=self._thread_main, args=(iter(requests), out, stop),
                                  name=f"openai-{self.name}", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=self.timeout_s + 5)

    # -- loop thread ---------------------------------------------------------------
    def _thread_main(self, requests: Iterator[BatchRequest], out: queue.Queue, stop: threading.Event) -> None:
        try:
            asyncio.run(self._main(requests, out, stop))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            out.put(exc)
        finally:
            out.put(_DONE)

    async def _main(self, requests: Iterator[BatchRequest], out: queue.Queue, stop: threading.Event) -> None:
        import httpx

        limiter = None
        if self.requests_per_minute:
            from aiolimiter import AsyncLimiter

            limiter = AsyncLimiter(self.requests_per_minute, 60)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout_s, limits=limits) as client:
            async def worker() -> None:
                while not stop.is_set():
                    try:
                        req = next(requests)
                    except StopIteration:
                        return
                    out.put(self._scrub(await self._one(client, req, limiter)))

            async def watch_stop() -> None:
                while not stop.is_set():
                    await asyncio.sleep(0.2)

            workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
            watcher = asyncio.create_task(watch_stop())
            pending = set(workers)
            try:
                while pending:
                    done, pending = await asyncio.wait(pending | {watcher}, return_when=asyncio.FIRST_COMPLETED)
                    if watcher in done:
                        return  # the consumer stopped listening
                    pending.discard(watcher)
                    for task in done:
                        if task.exception() is not None:
                            raise task.exception()
            finally:
                for task in [*workers, watcher]:
                    task.cancel()
                await asyncio.gather(*workers, watcher, return_exceptions=True)

    def _url(self, path: str) -> str:
        if self.base_url.endswith("/v1") and path.startswith("/v1/"):
            path = path[3:]
        return self.base_url + path

    async def _one(self, client, req: BatchRequest, limiter) -> BatchResult:
        import httpx

        cid = req["custom_id"]
        started = time.monotonic()
        waited = 0.0
        while True:
            try:
                if limiter is not None:
                    async with limiter:
                        resp = await client.post(self._url(req["url"]), json=req["body"])
                else:
                    resp = await client.post(self._url(req["url"]), json=req["body"])
            except httpx.TimeoutException as exc:
                return _error(cid, "timeout", f"{type(exc).__name__} after {self.timeout_s}s", started)
            except httpx.ConnectError as exc:
                raise self._gone(exc) from None
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                # A dropped connection is the engine dying, or one bad answer: ask the engine.
                if self.launched and (self.alive is None or not await asyncio.to_thread(self.alive)):
                    raise self._gone(exc) from None
                return _error(cid, "connection_dropped", f"{type(exc).__name__}: {exc}", started)
            if resp.status_code == 429:
                delay = _retry_after(resp.headers.get("retry-after"))
                if waited + delay > self.max_rate_limit_wait_s:
                    raise RateLimitedError(
                        f"{self.name}: still rate limited after waiting {waited:.0f}s (max_rate_limit_wait_s)")
                waited += delay
                await asyncio.sleep(delay)
                continue
            try:
                body = resp.json()
            except ValueError:
                body = {"text": resp.text[:2000]}
                if resp.status_code == 200:
                    return _error(cid, "bad_response", f"200 with a body that is not JSON: {resp.text[:200]!r}", started)
            if resp.status_code == 200:
                return result_ok(cid, body, time.monotonic() - started)
            message = str((body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else body)[:500]
            return {"custom_id": cid, "response": {"status_code": resp.status_code, "body": body},
                    "error": {"code": f"http_{resp.status_code}", "message": message},
                    "latency_s": time.monotonic() - started}

    def _scrub(self, result: BatchResult) -> BatchResult:
        """A server may echo the key in an error body; it must never reach a shard or a log."""
        if not self._api_key or result.get("error") is None:
            return result
        blob = json.dumps(result)
        if self._api_key not in blob:
            return result
        return json.loads(blob.replace(self._api_key, "[redacted]"))

    def _gone(self, exc: Exception) -> TransientError:
        if self.launched:
            return EngineDiedError(f"engine {self.name} stopped answering: {type(exc).__name__}: {exc}")
        return TransientError(f"endpoint {self.base_url} unreachable: {type(exc).__name__}: {exc}")


def _retry_after(value: str | None, default: float = 2.0) -> float:
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


def _error(cid: str, code: str, message: str, started: float) -> BatchResult:
    return {"custom_id": cid, "response": None, "error": {"code": code, "message": message},
            "latency_s": time.monotonic() - started}
