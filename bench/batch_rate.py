"""Benchmark: the rate stage in batch mode against realtime mode, on the test server.

Inputs: instructions (numbered variants of the bundled real rows, bench/scale_data.py), 4
completions each from the scripted generator of the test server, the shard size. Outputs:
one JSON line per mode with the rate stage's bookkeeping cost: wall and CPU seconds of the
client process, its peak RSS, the journal and batch-record files and bytes it wrote, and
what the server saw (requests answered, batches, bytes uploaded). The server (a separate
process, tests/servers/openai_batch_server.py) answers realtime requests and instant
batches (ended at the first poll), so what is measured is the client's own work.

Each mode runs in a fresh process (`--mode`), so peak RSS is that mode's alone.

Usage: python bench/batch_rate.py [--instructions 2000] [--shard-size 500] [--modes realtime,batch]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def shards(n: int, size: int):
    """(instructions, completions) tables of `size` rows each, from the bundled real rows."""
    from bench.scale_data import usable_rows, variant
    from storage.keys import prompt_id
    from storage.schemas import to_table
    from tests.servers.scripted import scripted_answer

    base = [r for rows in usable_rows().values() for r in rows]
    rows = []
    for i in range(n):
        r = dict(base[i % len(base)])
        r["instruction"] = variant(r["instruction"], i // len(base))
        r["prompt_id"] = prompt_id(r["instruction"])
        rows.append(r)
    for start in range(0, n, size):
        part = rows[start:start + size]
        comps = [{"prompt_id": r["prompt_id"], "completion_index": k, "model": f"model-{k}",
                  "principle": "helpfulness", "system_prompt": "You are a helpful assistant.",
                  "response": scripted_answer([{"role": "user", "content": f"{r['instruction']} #{k}"}], None),
                  "finish_reason": "stop", "prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0,
                  "backend": "scripted", "request_id": f"gen-{r['prompt_id']}-{k}", "error": None}
                 for r in part for k in range(4)]
        yield to_table(part, "instructions"), to_table(comps, "completions")


def run_mode(mode: str, url: str, n: int, size: int, work: Path) -> dict:
    from tasks.backends.batch_state import state_path
    from tasks.backends.journal import Journal, journal_path
    from tasks.rating.config import RatingConfig
    from tasks.rating.judges import open_judge
    from tasks.rating.stage import rate_shard
    from tests.servers.fixtures import get_stats

    cfg = RatingConfig.model_validate({"endpoints": [{
        "name": "bench", "kind": "openai_compatible", "model": "judge", "base_url": url, "answer_mode": "text",
        "mode": mode, "max_concurrency": 64, "timeout_s": 60, "batch": {"poll_interval_s": 0.05, "max_wait_s": 600}}],
        "judge": "bench", "prices": {"judge": {"input_per_1m": 2.5, "output_per_1m": 10.0}}})
    data = list(shards(n, size))
    t0, c0 = time.monotonic(), time.process_time()
    rows = requests = 0
    for i, (instr, comps) in enumerate(data):
        journal = Journal(journal_path(str(work), f"bench-{i:05d}"))
        table, stats = rate_shard(instr, comps, cfg, 42, open_judge(cfg.endpoint, str(work), state_path(journal.path)),
                                  journal)
        rows += table.num_rows
        requests += stats.sent
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    files = [p for p in work.rglob("*") if p.is_file()]
    srv = get_stats(url)
    out = {"mode": mode, "instructions": n, "shards": len(data), "rating_rows": rows, "requests": requests,
           "wall_s": round(wall, 2), "client_cpu_s": round(cpu, 2),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "client_files": len(files), "client_bytes": sum(p.stat().st_size for p in files),
           "server_answered": srv["answered"], "server_duplicates": len(srv["duplicates"])}
    if mode == "batch":
        from tests.batch.conftest import control

        b = control(url, "/_batch_stats")
        out |= {"batches": b["creates"], "uploaded_bytes": b["uploaded_bytes"], "downloads": b["downloads"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instructions", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--modes", default="realtime,batch")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.url, args.instructions, args.shard_size, Path(args.work))), flush=True)
        return
    for mode in args.modes.split(","):
        server = subprocess.Popen([sys.executable, str(ROOT / "tests/servers/openai_batch_server.py"), "--port", "0"],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)
        url = server.stdout.readline().strip()
        try:
            with tempfile.TemporaryDirectory() as work:
                subprocess.run([sys.executable, __file__, "--mode", mode, "--url", url, "--work", work,
                                "--instructions", str(args.instructions), "--shard-size", str(args.shard_size)],
                               check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
