"""The one client for the OpenAI chat-completions protocol: every pool entry with `serve:
openai`, every vLLM server the flow launches, every judge endpoint.

Inputs: plain arguments (a name, a base URL ending in /v1, an API key read by the caller from
the variable `key_env` names, limits, a RequestPolicy) and request records shaped like OpenAI
Batch lines; a record's optional `label` names its kind for the limiter's answer-size
estimate (the judge's aspect). Outputs: one result per request, yielded as answers arrive,
with errors coded by tasks.backends.faults (`error.transient` says whether a later try may
succeed).

Policy (docs/faults.md): 429s go to the endpoint's limiter (tasks.backends.limiter: RPM/TPM
buckets, limits learned from x-ratelimit-* headers, one concurrency cut and one backoff step
per congestion event, Retry-After honoured); past `max_rate_limit_wait_s` RateLimitedError
hands the shard back. Transient faults are retried per request with full-jitter backoff
within `retry_attempts` and `retry_budget_s`, then become a transient error result (the
stage fails the shard; its rerun re-sends exactly those). A permanent 4xx is the row's
error. 401/403/404 raise EndpointFatalError (one line: endpoint and key variable). The
endpoint's breaker raises CircuitOpenError after too many failures without a success. A
launched engine that stopped answering raises EngineDiedError.

Why aiohttp and not the OpenAI SDK or httpx: on 2 shared cores the SDK's normal path cost
~6 ms of CPU per request, httpx alone (which the SDK runs on) 4-5 ms, aiohttp with orjson
bodies under 0.5 ms (bench/client_cpu.py, docs/benchmarks.md). The protocol is one POST and
a JSON answer, so the SDK's models add nothing the stages use. The send path is `_send`,
one small method.
The key is only ever in the request headers; every message this module makes is scrubbed.
"""
from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import orjson

from tasks.backends.base import BatchRequest, BatchResult, result_error, result_ok
from tasks.backends.faults import FATAL_STATUS, RequestPolicy, breaker_for, fatal, is_transient_status, status_code
from tasks.backends.limiter import estimate_prompt_tokens, limiter_for
from tasks.backends.shared_limit import estimate_tokens
from tasks.errors import EngineDiedError, InputError, RateLimitedError

_DONE = object()


class OpenAIHTTPBackend:
    def __init__(self, name: str, base_url: str, api_key: str | None = None, *, key_env: str | None = None,
                 model: str = "", rpm: float | None = None, tpm: float | None = None, max_concurrency: int = 16,
                 learn_limits: bool = True, policy: RequestPolicy | None = None, launched: bool = False,
                 alive: Callable[[], bool] | None = None, limit_key: str | None = None, window_s: float = 60.0,
                 gate: str | None = None, azure_api_version: str | None = None, missing_key: str | None = None,
                 shared_gate=None):
        # missing_key: the error to raise on entry when no key was found (hosted endpoints);
        # checked only when something is sent, so a finished run reruns without the key.
        # alive: for a launched engine, a blocking check that it still runs and answers.
        self.name, self.base_url = name, base_url.rstrip("/")
        self._key, self.key_env = api_key, key_env
        self.model, self.policy = model, policy or RequestPolicy()
        self.launched, self.alive, self.azure_api_version = launched, alive, azure_api_version
        self.max_concurrency, self.missing_key = max_concurrency, missing_key
        key = limit_key or f"{self.base_url}|{model}"
        # A launched engine is ours alone: full concurrency at once, no probing slow start.
        self.limiter = limiter_for(key, rpm=rpm, tpm=tpm, max_concurrency=max_concurrency,
                                   learn_limits=learn_limits, window_s=window_s, gate=gate, model=model,
                                   slow_start=False if launched else None)
        self.breaker = breaker_for(key, name, self.policy)
        # A limit shared with other processes (tasks/backends/shared_limit.py): taken before every send.
        self.shared_gate = shared_gate

    def __repr__(self) -> str:  # keeps the key out of any log line that prints the backend
        return f"OpenAIHTTPBackend(name={self.name!r}, base_url={self.base_url!r})"

    def __enter__(self) -> "OpenAIHTTPBackend":
        if self.missing_key and not self._key:
            raise InputError(self.missing_key)
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    # --- running -----------------------------------------------------------------------
    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        """Send every request; yield results as they arrive (any order)."""
        out: queue.Queue = queue.Queue()
        ctl: dict[str, Any] = {}
        ready = threading.Event()
        worker = threading.Thread(target=self._thread_main, args=(iter(requests), out, ready, ctl), daemon=True,
                                  name=f"openai-{self.name}")
        worker.start()
        ready.wait()
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

    def _thread_main(self, requests: Iterator[BatchRequest], out: queue.Queue, ready: threading.Event,
                     ctl: dict) -> None:
        async def main() -> None:
            ctl["loop"], ctl["main"] = asyncio.get_running_loop(), asyncio.current_task()
            ready.set()
            await self._main(requests, out)

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # handed to the consumer, which re-raises it
            out.put(exc)
        finally:
            ready.set()
            out.put(_DONE)

    async def _main(self, requests: Iterator[BatchRequest], out: queue.Queue) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.max_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self._auth_headers()) as client:
            async def worker() -> None:
                for req in requests:  # one loop thread: the iterator is never entered twice at once
                    out.put(await self._one(client, req))

            workers = [asyncio.create_task(worker()) for _ in range(self.max_concurrency)]
            try:
                for fut in asyncio.as_completed(workers):
                    await fut  # the first fatal error ends the run
            finally:
                for t in workers:
                    t.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

    def _auth_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._key and self.azure_api_version:
            headers["api-key"] = self._key
        elif self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _url(self, body: dict) -> str:
        if self.azure_api_version:
            return (f"{self.base_url}/openai/deployments/{body.get('model')}/chat/completions"
                    f"?api-version={self.azure_api_version}")
        return self.base_url + "/chat/completions"

    async def _send(self, client, body: dict) -> tuple[int, Any, bytes]:
        """The send path: one POST of orjson bytes; (status, headers, raw body)."""
        async with client.post(self._url(body), data=orjson.dumps(body)) as resp:
            return resp.status, resp.headers, await resp.read()

    # --- one request -------------------------------------------------------------------
    async def _one(self, client, req: BatchRequest) -> BatchResult:
        import aiohttp

        cid, body, pol = req["custom_id"], req["body"], self.policy
        messages = body.get("messages")  # a malformed request still goes out: its 400 is the row's answer
        prompt_est = estimate_prompt_tokens([m for m in messages if isinstance(m, dict)]
                                            if isinstance(messages, list) else [], self.model)
        started, tries, first_429, n429 = time.monotonic(), 0, None, 0
        while True:
            self.breaker.check()
            code = message = None
            async with self.limiter.slot(prompt_est, body.get("max_tokens"), req.get("label") or "other") as permit:
                self.breaker.check()  # the wait for a slot may have outlasted the endpoint
                if self.shared_gate is not None:
                    await self.shared_gate.acquire_async(requests=1, tokens=estimate_tokens(body))
                t0 = time.monotonic()
                try:
                    status, headers, raw = await self._send(client, body)
                except asyncio.TimeoutError as exc:
                    code, message = "timeout", f"{type(exc).__name__} after {pol.timeout_s}s"
                except aiohttp.ClientError as exc:  # refused, reset, dropped, cut mid-body
                    await self._check_engine(exc)
                    code, message = "connection_error", f"{type(exc).__name__}: {exc}"
                else:
                    if status == 200:
                        try:
                            data = orjson.loads(raw)
                            if not isinstance(data, dict):
                                raise ValueError("not an object")
                        except ValueError:
                            code, message = "bad_response", f"200 with a body that is not JSON: {raw[:200]!r}"
                        else:
                            self.limiter.answered(permit, headers, data.get("usage"))
                            self._settle_shared(body, data.get("usage"))
                            self.breaker.success()
                            return result_ok(cid, data, latency_s=time.monotonic() - t0)
                    elif status == 429:
                        self.limiter.rate_limited(permit, headers)
                    else:
                        code, message = status_code(status), _error_message(raw)
            if code is None:  # a 429: the limiter holds every request of the endpoint until the pause ends
                n429 += 1
                first_429 = first_429 or time.monotonic()
                if n429 > pol.max_rate_limit_retries or time.monotonic() - first_429 > pol.max_rate_limit_wait_s:
                    raise RateLimitedError(
                        f"endpoint {self.name} still answered 429 after {n429} tries over "
                        f"{time.monotonic() - first_429:.0f}s (max_rate_limit_wait_s); answers so far are kept, "
                        "a retry sends the rest")
                continue
            message = self._scrub(message)
            if code.startswith("http_") and int(code[5:]) in FATAL_STATUS:
                raise self.breaker.refuse(fatal(self.name, self.base_url, self.key_env, int(code[5:]), message[:300]))
            if code.startswith("http_") and not is_transient_status(int(code[5:])):
                self.breaker.success()  # a refusal of this request is an answer: the endpoint works
                return result_error(cid, code, message, time.monotonic() - started, transient=False)
            tries += 1
            self.breaker.failure(f"{code}: {message}")
            wait = random.uniform(0, min(pol.backoff_cap_s, pol.backoff_base_s * 2 ** (tries - 1)))
            if tries >= pol.retry_attempts or time.monotonic() - started + wait > pol.retry_budget_s:
                return result_error(cid, code, f"{message} (after {tries} tries)", time.monotonic() - started,
                                    transient=True)
            await asyncio.sleep(wait)

    def _settle_shared(self, body: dict, usage: dict | None) -> None:
        """Charge the shared limit what the answer really used, not the estimate."""
        if self.shared_gate is not None and usage and usage.get("total_tokens"):
            self.shared_gate.settle(estimate_tokens(body), int(usage["total_tokens"]))

    async def _check_engine(self, exc: Exception) -> None:
        """A transport failure of an engine we launched: is it still there?"""
        if self.launched and (self.alive is None or not await asyncio.to_thread(self.alive)):
            raise EngineDiedError(f"engine {self.name} stopped answering: {type(exc).__name__}: {exc}")

    def _scrub(self, text: str) -> str:
        """A server may echo the key in an error body; it must never reach a shard or a log."""
        text = str(text)[:2000]
        return text.replace(self._key, "[redacted]") if self._key and len(self._key) >= 4 else text


def _error_message(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except ValueError:
        return raw[:500].decode("utf-8", "replace")
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])[:500]
    return str(body)[:500]
