"""Benchmark: generated tokens/s of the generation stage vs raw vLLM on the same requests.

Inputs: the bundled instruction samples (first N selected by the sampling stage's own
selection over the demo config's sources), one pool entry served by vLLM, and the
engine environment from scripts/setup_local.sh. Outputs: a JSON result (stdout and
--out) and one line per run.

Per round: (1) raw vLLM, the offline engine (`LLM.chat`) given the exact request bodies
the stage sends (same messages, sampling and per-request seeds), in the vLLM env;
(2) the stage's own `run_group` with serve=vllm_server: it launches the server, sends every
request with the stage's client, writes the part shards and stops the server.
"Steady" rates divide generated tokens by generation time only (model load and server
start excluded); "end to end" rates include them. Every completion runs to max_tokens
(ignore_eos) so both sides generate the same tokens. Rounds alternate to spread machine
noise over both sides. This is a benchmark, not a timed test.

Usage: python bench/generation_throughput.py [--prompts 64] [--max-tokens 256] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.config import load_config  # noqa: E402
from storage.schemas import to_table  # noqa: E402
from storage.shards import ShardStore  # noqa: E402
from tasks.generation.config import GenerationConfig, resolve_model  # noqa: E402
from tasks.generation.engines import engine_groups  # noqa: E402
from tasks.generation.requests import build_request, plan_shard  # noqa: E402
from tasks.generation.stage import run_group  # noqa: E402
from tasks.sources.sampling import select  # noqa: E402


def instructions(n: int) -> list[dict]:
    per_source = n // 5 + 1
    cfg = load_config(None, [f"sources.{i}.quota={per_source}" for i in range(5)])
    rows = select(cfg.sources, cfg.sampling, cfg.seed, cfg.shard_size).rows
    return rows[:n]


def pool(model: str, max_tokens: int, serve: str = "vllm_server", extra_args: list[str] | None = None,
         python: str | None = None) -> GenerationConfig:
    return GenerationConfig.model_validate({"k": 1, "models": [{
        "name": "bench", "serve": serve, "model": model, "max_model_len": 4096,
        # Every completion runs to max_tokens on both sides, so both generate the same tokens.
        "sampling": {"max_tokens": max_tokens, "extra": {"ignore_eos": True}},
        "engine": {"startup_timeout_s": 600, "extra_args": extra_args or [], "python": python}}]})


def run_raw(entry, requests_path: Path, workdir: Path) -> dict:
    out = workdir / "raw.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **entry.engine.env}
    cmd = [entry.engine.interpreter(), str(ROOT / "bench" / "raw_vllm_offline.py"), resolve_model(entry.model),
           str(requests_path), str(out), "--max-model-len", str(entry.max_model_len)]
    log_path = workdir / "raw.log"
    with open(log_path, "ab") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=3600).returncode
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"raw vLLM run failed (exit {code}):\n{tail}")
    res = json.loads(out.read_text())
    res["steady_tok_s"] = res["completion_tokens"] / res["generate_s"]
    res["end_to_end_tok_s"] = res["completion_tokens"] / res["total_s"]
    return res


def run_stage(cfg: GenerationConfig, rows: list[dict], workdir: Path, round_no: int) -> dict:
    store = ShardStore(str(workdir / f"stage-{round_no}"))
    ref = store.write_shard("sample", "bench", to_table(rows, "instructions"), "instructions", "bench")
    (group,) = engine_groups(cfg)
    started = time.monotonic()
    res = run_group(store, group, [ref], cfg, 42, {}, str(workdir / "logs"))
    total = time.monotonic() - started
    return {"requests": res.requests, "failed": res.failed_requests, "completion_tokens": res.completion_tokens,
            "generate_s": res.generate_s, "total_s": total, "steady_tok_s": res.completion_tokens / res.generate_s,
            "end_to_end_tok_s": res.completion_tokens / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="{models_dir}/SmolLM2-135M-Instruct")
    ap.add_argument("--serve", default="vllm_server", choices=["vllm_server", "vllm_batch"])
    ap.add_argument("--engine-args", default="", help="extra vLLM arguments for the stage's engine, one string")
    ap.add_argument("--engine-python", default=None, help="the vLLM environment's python (default: the local one)")
    ap.add_argument("--out", default=None, help="write the JSON result here too")
    args = ap.parse_args()

    rows = instructions(args.prompts)
    cfg = pool(args.model, args.max_tokens, args.serve, args.engine_args.split(), args.engine_python)
    entry = cfg.models[0]
    with tempfile.TemporaryDirectory(prefix="uf-bench-") as tmp:
        workdir = Path(tmp)
        planned = plan_shard(to_table(rows, "instructions"), cfg, 42)
        requests_path = workdir / "requests.jsonl"
        with open(requests_path, "w", encoding="utf-8") as fh:
            for p in planned:
                fh.write(json.dumps(build_request(p, entry)) + "\n")
        rounds = []
        for r in range(args.rounds):
            raw = run_raw(entry, requests_path, workdir)
            stage = run_stage(cfg, rows, workdir, r)
            rounds.append({"raw": raw, "stage": stage,
                           "steady_ratio": stage["steady_tok_s"] / raw["steady_tok_s"],
                           "end_to_end_ratio": stage["end_to_end_tok_s"] / raw["end_to_end_tok_s"]})
            print(f"round {r}: raw {raw['steady_tok_s']:.0f} tok/s ({raw['completion_tokens']} tok), "
                  f"stage {stage['steady_tok_s']:.0f} tok/s ({stage['completion_tokens']} tok), "
                  f"steady ratio {rounds[-1]['steady_ratio']:.3f}, end-to-end ratio "
                  f"{rounds[-1]['end_to_end_ratio']:.3f}", file=sys.stderr)
    raw_tok = sum(x["raw"]["completion_tokens"] for x in rounds)
    stage_tok = sum(x["stage"]["completion_tokens"] for x in rounds)
    raw_rate = raw_tok / sum(x["raw"]["generate_s"] for x in rounds)
    stage_rate = stage_tok / sum(x["stage"]["generate_s"] for x in rounds)
    result = {
        "prompts": args.prompts, "max_tokens": args.max_tokens, "rounds": rounds,
        "raw_steady_tok_s": raw_rate, "stage_steady_tok_s": stage_rate, "steady_ratio": stage_rate / raw_rate,
        "end_to_end_ratio": (stage_tok / sum(x["stage"]["total_s"] for x in rounds))
        / (raw_tok / sum(x["raw"]["total_s"] for x in rounds)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
