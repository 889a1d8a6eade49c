"""Benchmark: client CPU per chat-completion request against a zero-latency local server.

Inputs: the judge workload of bench/judge_workload.py (real instructions, text-mode aspect
calls and critiques: the bodies the rate stage sends) and the OpenAI-protocol test server
(tests/servers/openai_server.py) in its own process with no latency and no limits, so its
CPU is not counted. Outputs: one JSON result (stdout and --out) and a markdown table for
docs/benchmarks.md.

Paths, each sending the same requests with the same number in flight from one asyncio loop:
- sdk: AsyncOpenAI `chat.completions.create` and `model_dump` of the answer (the SDK's
  normal path, which the judge backend used);
- sdk-raw: `with_raw_response.create`, body read with orjson (no response model);
- sdk-post: the SDK's low-level `client.post(..., cast_to=httpx.Response)`, orjson;
- httpx-json: httpx.AsyncClient, stdlib json for both bodies;
- httpx-orjson / httpx-msgspec: the same with orjson or msgspec (when installed);
- httpcore-orjson: httpcore's AsyncConnectionPool (httpx's transport, without its models);
- aiohttp-orjson: aiohttp.ClientSession with orjson;
- backend: tasks.backends.openai_http.OpenAIHTTPBackend.run, the one backend as the stages
  use it for a launched engine (limiter, breaker, per-request policy, result records, its
  loop thread);
- backend-hosted: the same as for a hosted endpoint with RPM and TPM limits configured (set
  far above what is sent, on a second server that sends OpenAI's x-ratelimit-* headers with
  the same limits, so the buckets, their reconciliation and the header resync all run
  without ever making a request wait).

CPU is this process's CPU time (time.process_time: every thread) over the requests sent;
requests/s is wall-clock throughput (bounded by the server process on few cores). Every
answer is checked (choices[0].message.content present), so no path is fast by being wrong.

Usage: python bench/client_cpu.py [--requests 2000] [--concurrency 32] [--paths sdk,backend]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.judge_workload import build  # noqa: E402

PATHS = ["sdk", "sdk-raw", "sdk-post", "httpx-json", "httpx-orjson", "httpx-msgspec", "httpcore-orjson",
         "aiohttp-orjson", "backend", "backend-hosted"]


def start_server(*limits: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, str(ROOT / "tests/servers/openai_server.py"), "--port", "0", "--max-seconds", "1800",
           *limits]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return proc, proc.stdout.readline().strip()


def _check(data: dict) -> None:
    if not data["choices"][0]["message"]["content"]:
        raise AssertionError("empty answer")


async def _drive(bodies: list[dict], concurrency: int, send) -> None:
    it = iter(bodies)

    async def worker() -> None:
        for body in it:
            _check(await send(body))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _run_path(path: str, url: str, bodies: list[dict], concurrency: int) -> None:
    import httpx
    import orjson

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if path.startswith("sdk"):
        import openai

        client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0,
                                    http_client=httpx.AsyncClient(limits=limits, timeout=60))

        async def send(body):
            if path == "sdk":
                return (await client.chat.completions.create(**body)).model_dump(mode="json", exclude_unset=True)
            if path == "sdk-raw":
                raw = await client.chat.completions.with_raw_response.create(**body)
                return orjson.loads(raw.http_response.content)
            resp = await client.post("/chat/completions", body=body, cast_to=httpx.Response)
            return orjson.loads(resp.content)

        try:
            await _drive(bodies, concurrency, send)
        finally:
            await client.close()
        return
    if path == "httpcore-orjson":
        import httpcore

        async with httpcore.AsyncConnectionPool(max_connections=concurrency) as pool:
            async def send(body):
                resp = await pool.request("POST", url + "/chat/completions", content=orjson.dumps(body),
                                          headers=[(b"Content-Type", b"application/json")])
                return orjson.loads(resp.content)

            await _drive(bodies, concurrency, send)
        return
    if path == "aiohttp-orjson":
        import aiohttp

        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn, headers={"Content-Type": "application/json"}) as session:
            async def send(body):
                async with session.post(url + "/chat/completions", data=orjson.dumps(body)) as resp:
                    return orjson.loads(await resp.read())

            await _drive(bodies, concurrency, send)
        return
    if path == "httpx-msgspec":
        import msgspec

        enc, dec = msgspec.json.Encoder(), msgspec.json.Decoder()
        dumps, loads = enc.encode, dec.decode
    elif path == "httpx-orjson":
        dumps, loads = orjson.dumps, orjson.loads
    else:
        dumps, loads = (lambda b: json.dumps(b).encode()), json.loads
    async with httpx.AsyncClient(limits=limits, timeout=60, headers={"Content-Type": "application/json"}) as client:
        async def send(body):
            resp = await client.post(url + "/chat/completions", content=dumps(body))
            resp.raise_for_status()
            return loads(resp.content)

        await _drive(bodies, concurrency, send)


def _run_backend(url: str, bodies: list[dict], concurrency: int, hosted: bool = False) -> None:
    from tasks.backends.base import make_request, message_text
    from tasks.backends.openai_http import OpenAIHTTPBackend

    limits = {"rpm": 10_000_000, "tpm": 10_000_000_000} if hosted else {"launched": True}
    be = OpenAIHTTPBackend("bench", url, model="judge", max_concurrency=concurrency,
                           limit_key=f"bench|{time.monotonic()}", **limits)
    reqs = [make_request(f"r{i}", b) for i, b in enumerate(bodies)]
    n = sum(1 for r in be.run(reqs) if message_text(r))
    if n != len(reqs):
        raise AssertionError(f"{len(reqs) - n} requests unanswered")


def measure(path: str, url: str, bodies: list[dict], concurrency: int) -> dict:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if path.startswith("backend"):
        _run_backend(url, bodies, concurrency, hosted=path == "backend-hosted")
    else:
        asyncio.run(_run_path(path, url, bodies, concurrency))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"path": path, "requests": len(bodies), "cpu_ms_per_request": round(1000 * cpu / len(bodies), 3),
            "requests_per_s": round(len(bodies) / wall, 1), "cpu_bound_requests_per_s": round(len(bodies) / cpu, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--repeats", type=int, default=2, help="runs per path; the lowest CPU counts")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    _rows, requests = build(max(1, min(400, args.requests // 8 + 1)))  # 436 instructions are bundled
    bodies = [r["body"] for r in requests][: args.requests]
    while len(bodies) < args.requests:
        bodies += bodies[: args.requests - len(bodies)]
    proc, url = start_server()
    hosted, hosted_url = start_server("--rpm", "10000000", "--tpm", "10000000000")
    results = []
    try:
        measure("httpx-orjson", url, bodies[:200], args.concurrency)  # warm imports and the server
        for path in args.paths.split(","):
            if path == "httpx-msgspec":
                try:
                    import msgspec  # noqa: F401
                except ImportError:
                    continue
            target = hosted_url if path == "backend-hosted" else url
            runs = [measure(path, target, bodies, args.concurrency) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["cpu_ms_per_request"])
            results.append(best)
            print(json.dumps(best), flush=True)
    finally:
        for p in (proc, hosted):
            p.terminate()
            p.wait(timeout=10)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores visible", "python": platform.python_version(),
           "concurrency": args.concurrency, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print("| path | CPU per request (ms) | requests/s (wall) | requests/s if CPU-bound |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['path']} | {r['cpu_ms_per_request']} | {r['requests_per_s']} | {r['cpu_bound_requests_per_s']} |")
    return out


if __name__ == "__main__":
    main()
