"""Pipelining benchmark: the judge behind generation against the stage-by-stage run.

Inputs: none (the test configuration's real instructions, 15 prompts, one per shard).
Outputs: one JSON line per run and a summary table on stdout: end-to-end seconds of the
`ultrafeedback` flow (pipelined: a rate shard starts when its completions shard is merged,
a merge when the shard's parts are written)
and of the same stage functions run one stage after another (`stage_by_stage` below: each
stage collected before the next is started, as the flow ran before pipelining). One
untimed warm-up run first; the two modes alternate which goes first; medians reported.

The backends are real local OpenAI-protocol servers (tests/servers/openai_server.py) with a
fixed latency per request: a generation server per speed and one judge server. Scenarios:
- `mixed`: k=2 of a pool of four, two fast models and two slow ones; shards that drew no slow
  model are merged and rated while the slow engines still generate.
- `full`: k=4 of four (every shard draws every model), all slow: a shard is merged and
  rated once every engine has written its part of it, while they generate the rest.

Run: `python bench/pipelining.py [--repeat 2] [--slow-s 1.0] [--judge-s 0.3]`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flows.runtime import set_task_threads  # noqa: E402  (the repository root is on the path first)

set_task_threads()  # as the CLI does, before Prefect is imported

from tests.servers.openai_server import JudgeServer  # noqa: E402  (after the thread setting, as the CLI)

CONFIG = ROOT / "tests" / "fixtures" / "configs" / "scripted.yaml"


def stage_by_stage_flow():
    """The four stages one after another: generation collected whole before rating starts.
    Built after the Prefect API is up: Prefect reads its settings when it is imported."""
    from prefect import flow

    from flows.shard_tasks import settled
    from flows.stage_assemble import run_assemble
    from flows.stage_generate import run_generate
    from flows.stage_rate import run_rate
    from flows.stage_sample import run_sample
    from flows.ultrafeedback import record_run
    from storage.shards import ShardStore

    @flow(name="ultrafeedback-stage-by-stage")
    def stage_by_stage(config) -> dict:
        store = ShardStore(config.output)
        instructions = run_sample(config, store)
        completions = settled(run_generate(config, store, instructions))
        ratings = run_rate(config, store, instructions, completions)
        published = run_assemble(config, store, instructions, completions, ratings)
        return record_run(config, store, [instructions, completions, ratings, published])

    return stage_by_stage


def config(out: Path, scenario: str, fast_url: str, slow_url: str, judge_url: str):
    from flows.config import load_config

    def model(name: str, url: str) -> str:
        return f"{{name: {name}, serve: openai, model: {name}, base_url: '{url}', concurrency: 1}}"

    speeds = {"mixed": [fast_url, fast_url, slow_url, slow_url], "full": [slow_url] * 4}[scenario]
    names = ["alpha", "beta", "gamma", "delta"]
    judge = (f"{{name: judge, kind: openai_compatible, model: judge, base_url: '{judge_url}', answer_mode: text, "
             "max_concurrency: 8}")
    return load_config(CONFIG, ["shard_size=1", f"generation.k={2 if scenario == 'mixed' else 4}",
                                *[f"generation.models.{i}={model(n, u)}" for i, (n, u) in enumerate(zip(names, speeds))],
                                f"rating.endpoints.0={judge}", "rating.judge=judge", "publish.plots=false"],
                       output=str(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--fast-s", type=float, default=0.05, help="latency of a fast model's request")
    ap.add_argument("--slow-s", type=float, default=1.0, help="latency of a slow model's request")
    ap.add_argument("--judge-s", type=float, default=0.3, help="latency of a judge request")
    ap.add_argument("--scenarios", default="mixed,full")
    args = ap.parse_args()

    from flows.api_server import temporary_server

    servers = [JudgeServer(latency_s=s).start() for s in (args.fast_s, args.slow_s, args.judge_s)]
    fast, slow, judge = (s.url for s in servers)
    results: dict[tuple[str, str], list[float]] = {}
    try:
        with temporary_server(), tempfile.TemporaryDirectory() as tmp:
            from flows.ultrafeedback import ultrafeedback

            stage_by_stage = stage_by_stage_flow()
            # Untimed: the first flow run of a process pays imports and the API's first requests.
            ultrafeedback(config=config(Path(tmp) / "warmup", "full", fast, fast, fast))
            for scenario in args.scenarios.split(","):
                for i in range(args.repeat):
                    modes = [("stage_by_stage", stage_by_stage), ("pipelined", ultrafeedback)]
                    for mode, run in modes if i % 2 == 0 else modes[::-1]:  # alternate who goes first
                        cfg = config(Path(tmp) / f"{scenario}-{mode}-{i}", scenario, fast, slow, judge)
                        t0 = time.perf_counter()
                        summary = run(config=cfg)
                        wall = time.perf_counter() - t0
                        failed = {s: v["shards"]["failed"] for s, v in summary["stages"].items()}
                        assert not any(failed.values()), failed
                        results.setdefault((scenario, mode), []).append(wall)
                        print(json.dumps({"scenario": scenario, "mode": mode, "run": i, "wall_s": round(wall, 2)}),
                              flush=True)
    finally:
        for s in servers:
            s.stop()
    print("\n| scenario | stage by stage (s) | pipelined (s) | gain |\n|---|---:|---:|---:|")
    for scenario in args.scenarios.split(","):
        a = statistics.median(results[(scenario, "stage_by_stage")])
        b = statistics.median(results[(scenario, "pipelined")])
        print(f"| {scenario} | {a:.1f} | {b:.1f} | {100 * (a - b) / a:.0f} % |")


if __name__ == "__main__":
    main()
