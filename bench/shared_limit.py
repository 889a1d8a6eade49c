"""Several processes, one API key: do they stay under the endpoint's limit together?

Starts the OpenAI-protocol test server with an RPM (and optionally TPM) limit, then N worker
processes that each generate `--per-proc` completions through a `serve: openai` pool entry
(the real client, built by `open_backend`) as fast as their concurrency allows. Modes:
- `none`: no client-side limit;
- `own`: each process paces itself at the full limit (`requests_per_minute`), as separate
  flow runs did before a shared limit existed;
- `shared`: every process names the same `shared_limit` (store `file`).
A process whose requests stay rate limited past `--max-429-wait-s` gives up (the client
raises RateLimitedError). Reported from the server's /_stats: 429 answers, the most admitted in any
one-second span of the limit's clock against what the limit allows there, and wall time.

    python bench/shared_limit.py --procs 4 --per-proc 60 --rpm 600 --window-s 6

(`--window-s` scales the limit's "minute" so a run takes seconds, not minutes.)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUESTIONS = ROOT / "data" / "sources" / "truthfulqa" / "TruthfulQA.csv"


def questions(n: int, offset: int) -> list[str]:
    import csv

    with open(QUESTIONS, newline="") as f:
        rows = [r["Question"] for r in csv.DictReader(f)]
    return [rows[(offset + i) % len(rows)] for i in range(n)]


def worker(args) -> None:
    from tasks.backends.base import make_request
    from tasks.generation.config import GenerationConfig
    from tasks.generation.engines import engine_groups, open_backend

    entry = {"name": "hosted", "serve": "openai", "model": "judge", "base_url": args.url,
             "concurrency": args.concurrency, "max_rate_limit_wait_s": args.max_429_wait_s}
    if args.mode == "own":
        entry["requests_per_minute"] = args.rpm * 60 / args.window_s  # the limit, in real minutes
    if args.mode == "shared":
        entry["shared_limit"] = {"name": "bench-key", "path": args.gate_dir, "rpm": args.rpm, "tpm": args.tpm,
                                 "window_s": args.window_s}
    cfg = GenerationConfig.model_validate({"k": 1, "models": [entry]})
    reqs = [make_request(f"p{args.index}-{i}", {"model": "judge", "max_tokens": args.max_tokens,
                                                "messages": [{"role": "user", "content": q}]})
            for i, q in enumerate(questions(args.per_proc, args.index * args.per_proc))]
    started, results, error = time.monotonic(), [], None
    try:
        with open_backend(engine_groups(cfg)[0], tempfile.gettempdir()) as backend:
            start_together(Path(args.gate_dir) / "start", args.index, args.procs)
            for r in backend.run(reqs):
                results.append(r)
    except Exception as exc:  # a run that gave up (429 budget spent) is a result too
        error = f"{type(exc).__name__}: {exc}"[:300]
    print(json.dumps({"ok": sum(r.get("error") is None for r in results), "results": len(results),
                      "error": error, "wall_s": round(time.monotonic() - started, 2)}), flush=True)


def start_together(gate_dir: Path, index: int, procs: int, timeout_s: float = 300) -> None:
    """Wait until every worker has imported and built its client. On a busy machine the
    imports alone take seconds, and workers that start that far apart never overlap."""
    gate_dir.mkdir(exist_ok=True)
    (gate_dir / f"ready-{index}").touch()
    deadline = time.monotonic() + timeout_s
    while len(list(gate_dir.glob("ready-*"))) < procs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(gate_dir.glob('ready-*')))} of {procs} workers started")
        time.sleep(0.02)


def max_in_span(times: list[float], span: float) -> int:
    times, best, lo = sorted(times), 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > span:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def run_once(mode: str, procs: int, per_proc: int, rpm: float, tpm: float | None, window_s: float,
             concurrency: int = 8, max_tokens: int = 200, max_429_wait_s: float = 30) -> dict:
    from tests.servers.fixtures import get_stats
    from tests.servers.openai_server import JudgeServer
    from tests.servers.server_state import Limits

    srv = JudgeServer(limits=Limits(rpm=rpm, tpm=tpm, window_s=window_s), completion_words=60).start()
    gate_dir = tempfile.mkdtemp(prefix="shared-limit-")
    try:
        started = time.monotonic()
        cmd = [sys.executable, __file__, "--worker", "--url", srv.url, "--mode", mode, "--per-proc", str(per_proc),
               "--rpm", str(rpm), "--window-s", str(window_s), "--gate-dir", gate_dir,
               "--concurrency", str(concurrency), "--max-tokens", str(max_tokens),
               "--max-429-wait-s", str(max_429_wait_s), "--procs", str(procs)]
        if tpm:
            cmd += ["--tpm", str(tpm)]
        workers = [subprocess.Popen(cmd + ["--index", str(i)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
                   for i in range(procs)]
        outs = [json.loads(w.communicate(timeout=900)[0].strip().splitlines()[-1]) for w in workers]
        wall = time.monotonic() - started
        stats = get_stats(srv.url)
    finally:
        srv.stop()
    admitted = [t for t, _ in stats["admitted"]]
    span = window_s / 60  # one second of the limit's clock
    rate = rpm / window_s
    tokens = {}
    if tpm:
        pairs = sorted(stats["admitted"])
        best, lo, inside = 0, 0, 0
        for t, cost in pairs:
            inside += cost
            while t - pairs[lo][0] > span:
                inside -= pairs[lo][1]
                lo += 1
            best = max(best, inside)
        elapsed = pairs[-1][0] - pairs[0][0] if len(pairs) > 1 else 0
        tokens = {"max_tokens_per_span": best, "tpm_limit_per_span": round(tpm / window_s * span + tpm / 60, 1),
                  "mean_token_rate_vs_limit": round(sum(c for _, c in pairs[1:]) / elapsed / (tpm / window_s), 3)
                  if elapsed else None}
    return {"mode": mode, "procs": procs, "requests": procs * per_proc,
            "answered": sum(o["ok"] for o in outs), "processes_given_up": sum(bool(o["error"]) for o in outs),
            "http_429": stats["rate_limited"],
            "max_admitted_per_span": max_in_span(admitted, span),
            "limit_per_span": round(rate * span + rpm / 60, 1),  # refill over the span + the server's burst
            "mean_rate_vs_limit": round((len(admitted) - 1) / (admitted[-1] - admitted[0]) / rate, 3)
            if len(admitted) > 1 else None,
            **tokens, "wall_s": round(wall, 1), "errors": sorted({o["error"][:120] for o in outs if o["error"]})}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--gate-dir")
    ap.add_argument("--mode", default="shared", choices=["none", "own", "shared"])
    ap.add_argument("--modes", default="none,own,shared")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--per-proc", type=int, default=60)
    ap.add_argument("--rpm", type=float, default=600)
    ap.add_argument("--tpm", type=float, default=None)
    ap.add_argument("--window-s", type=float, default=6.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--max-429-wait-s", type=float, default=30.0,
                    help="per request: longest total wait on 429s before the process gives up")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    for mode in args.modes.split(","):
        print(json.dumps(run_once(mode, args.procs, args.per_proc, args.rpm, args.tpm, args.window_s,
                                  args.concurrency, args.max_tokens, args.max_429_wait_s)), flush=True)


if __name__ == "__main__":
    main()
