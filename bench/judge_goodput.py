"""Benchmark: judge goodput against a rate-limited OpenAI-protocol server, ours vs others.

Inputs: the workload of bench/judge_workload.py (N real instructions x (4 aspect calls + 4
critiques), text mode) and the test server (tests/servers/openai_server.py) run as its own
process with --rpm/--tpm limits and a GPT-4-like latency (base + per answer token).
Outputs: one JSON result (stdout and --out) and a markdown table for docs/benchmarks.md.

Clients, each against a fresh server process (full buckets, zeroed counters):
- ours: the rate stage's HTTP backend with the endpoint's limits configured;
- ours-learned: the same with no limits configured (learned from x-ratelimit headers);
- distilabel: distilabel 1.5.3's UltraFeedback task (its own prompts, one call per
  instruction and aspect) on OpenAILLM(base_url=...), its defaults, in bench/.venvs/distilabel;
- distilabel-tuned: the same with input_batch_size 4 per step (16 in flight, as ours) and
  max_retries 30, which is what a user would try after the defaults fail;
- curator: bespokelabs-curator 0.1.31, backend "openai" with base_url and the same limits,
  sending our exact request bodies, in bench/.venvs/curator (telemetry off).

Measured by the server: `goodput` is the tokens (or requests) of answered requests, less
the server's burst allowance, over what the limit allows from the first admission to the
last answer; the binding limit is the one with the higher fraction. `while sending` ends
the span at the last admission instead (it leaves out the final answers' latency; a client
that gives up on requests looks good here, hence `answered / requests` beside it).
`wall clock` runs from the client's start (imports, pipeline set-up) to its end. "429
share" is 429 answers over all requests the server received.

Usage: python bench/judge_goodput.py [--instructions 50] [--clients ours,ours-learned,distilabel,curator]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.judge_workload import build, write  # noqa: E402
from tasks.backends.base import message_text  # noqa: E402
from tasks.rating.config import JudgeEndpoint  # noqa: E402
from tasks.rating.judges import judge_backend  # noqa: E402
from tests.servers.fixtures import get_stats  # noqa: E402

VENVS = ROOT / "bench" / ".venvs"
CLIENTS = ROOT / "bench" / "judge_clients"


def start_server(args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, str(ROOT / "tests/servers/openai_server.py"), "--port", "0", "--rpm", str(args.rpm),
           "--tpm", str(args.tpm), "--burst", str(args.burst), "--latency-s", str(args.latency_s),
           "--latency-per-token-s", str(args.latency_per_token_s), "--completion-words", str(args.completion_words),
           "--max-seconds", str(args.timeout_s + 60)] + (["--free-rejections"] if args.free_rejections else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return proc, proc.stdout.readline().strip()


def run_ours(url: str, requests: list[dict], args, learned: bool) -> dict:
    ep = JudgeEndpoint(name="bench", kind="openai_compatible", model="judge", base_url=url, answer_mode="text",
                       rpm=None if learned else args.rpm, tpm=None if learned else args.tpm,
                       max_concurrency=args.concurrency, timeout_s=120)
    ok = 0
    with judge_backend(ep) as backend:
        for res in backend.run(requests):
            ok += message_text(res) is not None
        snap = backend.limiter.snapshot()
    return {"answered": ok, "limiter": {k: snap[k] for k in ("limits", "concurrency", "rate_limited", "cuts",
                                                             "prompt_ratio", "completion_mean")}}


EXTERNAL = {  # client name -> (venv and script, extra arguments)
    "distilabel": ("distilabel", []),
    "distilabel-tuned": ("distilabel", ["--batch-size", "4", "--max-retries", "30"]),
    "curator": ("curator", []),
}


def run_external(name: str, url: str, folder: Path, args) -> dict:
    tool, extra = EXTERNAL[name]
    py = VENVS / tool / "bin" / "python"
    if not py.exists():
        return {"error": f"{py} missing: python3 -m venv {py.parent.parent} and pip install (see docs/benchmarks.md)"}
    for stale in (f"{tool}-home", f"{tool}-cache"):  # curator would answer a rerun from its cache
        shutil.rmtree(folder / stale, ignore_errors=True)
    env = {**os.environ, "DO_NOT_TRACK": "1", "CURATOR_DISABLE_TELEMETRY": "1", "TELEMETRY_ENABLED": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HOME": str(folder / f"{tool}-home"),
           "CURATOR_CACHE_DIR": str(folder / f"{tool}-cache"), "DISTILABEL_CACHE_DIR": str(folder / f"{tool}-cache")}
    cmd = [str(py), str(CLIENTS / f"{tool}_client.py"), "--url", url, "--folder", str(folder),
           "--rpm", str(args.rpm), "--tpm", str(args.tpm), "--concurrency", str(args.concurrency), *extra]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, env=env, cwd=folder)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout_s}s"}
    (folder / f"{name}.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:] or ''}"}
    return json.loads(lines[-1])


def measure(stats: dict, args, wall_s: float, workload: int) -> dict:
    adm = sorted(stats["admitted"])
    answers = sorted(t for t, status, _f, _fp in stats["events"] if status == 200)
    tokens, reqs = sum(c for _, c in adm), len(adm)
    burst_t, burst_r = args.tpm * args.burst, args.rpm * args.burst

    def fractions(span: float) -> tuple[float, float]:
        return (tokens - burst_t) / (args.tpm / 60 * span), (reqs - burst_r) / (args.rpm / 60 * span)

    send_t, send_r = fractions(adm[-1][0] - adm[0][0])
    eff_t, eff_r = fractions(answers[-1] - adm[0][0])
    binding = "tpm" if eff_t >= eff_r else "rpm"
    received, n429 = stats["requests"], stats["by_status"].get("429", 0)
    return {
        "workload_requests": workload, "requests_received": received, "answered": stats["answered"],
        "by_status": stats["by_status"], "http_429": n429, "share_429": n429 / received if received else None,
        "duplicates_answered": len(stats["duplicates"]), "tokens": stats["total_tokens"], "binding": binding,
        "admission_span_s": adm[-1][0] - adm[0][0], "answer_span_s": answers[-1] - adm[0][0], "wall_s": wall_s,
        "goodput_sending": send_t if binding == "tpm" else send_r,
        "goodput": eff_t if binding == "tpm" else eff_r,
        "goodput_wall": (tokens / (args.tpm / 60 * wall_s)) if binding == "tpm" else reqs / (args.rpm / 60 * wall_s),
        "max_in_flight": stats["max_in_flight"], "refusals": stats.get("refusals", [])[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instructions", type=int, default=50)
    ap.add_argument("--clients", default="ours,ours-learned,distilabel,distilabel-tuned,curator")
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--tpm", type=int, default=200_000)
    ap.add_argument("--burst", type=float, default=1 / 60, help="server bucket capacity, fraction of a minute's limit")
    ap.add_argument("--latency-s", type=float, default=0.5)
    ap.add_argument("--latency-per-token-s", type=float, default=0.01)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--completion-words", type=int, default=230,
                    help="answer size for prompts in no judge format of ours (distilabel's), ~ our aspect answers")
    ap.add_argument("--timeout-s", type=int, default=420, help="cap per client run")
    ap.add_argument("--free-rejections", action="store_true",
                    help="the server does not count 429'd requests against its RPM limit (OpenAI does)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "judge_goodput.json"))
    args = ap.parse_args()

    folder = Path(args.out).resolve().parent / "judge_workload"
    rows, requests = build(args.instructions)
    write(folder, rows, requests)
    results = {"config": {**vars(args), "requests": len(requests), "python": platform.python_version(),
                          "machine": f"{platform.machine()}, {os.cpu_count()} cores"}, "runs": {}}
    for name in args.clients.split(","):
        proc, url = start_server(args)
        try:
            t0 = time.monotonic()
            if name in ("ours", "ours-learned"):
                client = run_ours(url, requests, args, learned=name == "ours-learned")
            else:
                client = run_external(name, url, folder, args)
            wall = time.monotonic() - t0
            stats = get_stats(url)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        # distilabel's UltraFeedback task makes the four aspect calls only (no critique calls)
        workload = 4 * len(rows) if name.startswith("distilabel") else len(requests)
        run = {"client": client, **(measure(stats, args, wall, workload) if stats["admitted"] else {})}
        results["runs"][name] = run
        print(json.dumps({name: run}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict) -> str:
    lines = ["| client | answered / requests | sent | 429s (share) | binding | goodput | while sending | wall clock |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        if "goodput" not in r:
            lines.append(f"| {name} | failed: {r['client'].get('error')} | | | | | | |")
            continue
        # span-based goodput means nothing for a client that gave up on part of the work
        done = r["answered"] >= r["workload_requests"]
        span = f"{r['goodput']:.1%} | {r['goodput_sending']:.1%}" if done else "– (gave up) | –"
        lines.append(f"| {name} | {r['answered']} / {r['workload_requests']} | {r['requests_received']} | "
                     f"{r['http_429']} ({r['share_429']:.2%}) | {r['binding']} | {span} | {r['goodput_wall']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
