"""Cluster simulation: the generation planner on 8 and 64 GPUs for the full rebuild.

Run:  python bench/cluster_sim.py [--gpus 8 64] [--out bench/results/cluster_sim.json]
                                  [--plot docs/cluster_sim.png] [--load-scale 1.0]
                                  [--fail ENGINE@FRACTION] [--speed-seed 43]

Inputs: the original's 17-model pool (14 open models on GPUs, 3 API models off them),
63,967 instructions x 4 completions drawn by the project's own seeded draw
(`tasks.generation.draws`), and the engine time model below. Outputs: one row per GPU
count and schedule (today, static plan, elastic plan, elastic re-planned at run time:
makespan, ideal, lower bound, GPU-busy fraction, judge start), a JSON file and a Gantt
plot. Pure computation, seconds on a laptop; no GPU and no Prefect run is involved: the
real flow at this scale (1,000 shards, 17 engines, hours of simulated time) is driven
instead by the planner (`tasks.generation.schedule`) plus a discrete-event simulation of
the engines (`bench/cluster_des.py`).

Time model of one engine replica (H100-80GB, bf16), from published vLLM figures
(LambdaLabsML/vllm-benchmark, benchmark_v0.md, vLLM v0.6.0, 5,000 prompts, max-num-seqs
256, multi-step scheduling): Llama 3.1 8B at TP 1 gave 8,088 output tokens/s; Llama 3.1
70B at TP 4 gave 3,543. Output tokens/s of one replica = K x tp x e(tp) / P, P the
parameter count in billions: K = 8 x 8,088 = 64,704 from the 8B anchor; e(4) = 0.958 from
the 70B anchor; e(2) = sqrt(e(4)) = 0.979 (no published point; interpolated); e(1) = 1.
TP is the smallest that leaves room for the KV cache on 80 GB: 1 up to 16B, 2 up to 40B,
4 above. Load time of a replica = 60 s (engine start-up, profiling, CUDA graphs) + the
weights (2P GB in bf16) read at 1 GB/s per GPU of the replica (an assumption, scaled by
`--load-scale`). Completion lengths: lognormal with mean 350 tokens (sigma 0.8), capped at
the original's 1,024 (an assumption; only the total matters for the makespan).

The planner sees estimates (mean length x requests, the model's nominal speed); the
simulated engines run the drawn lengths at a speed off the nominal by a seeded +-10%
per engine, so the plan is executed under the error a real estimate has.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster_des import SimJob, simulate  # noqa: E402
from tasks.generation.draws import draw_models, rng_for  # noqa: E402
from tasks.generation.schedule import Job, lower_bound_s, plan_schedule  # noqa: E402

# The original's pool: name -> parameters (billions); None = API model (no GPU).
POOL = {"gpt-4": None, "gpt-3.5-turbo": None, "bard": None,
        "llama-2-7b-chat": 7, "llama-2-13b-chat": 13, "llama-2-70b-chat": 70,
        "ultralm-13b": 13, "ultralm-65b": 65, "wizardlm-7b": 7, "wizardlm-13b": 13, "wizardlm-70b": 70,
        "vicuna-33b": 33, "alpaca-7b": 7, "falcon-40b-instruct": 40, "mpt-30b-chat": 30,
        "starchat": 15.5, "pythia-12b": 12}
PROMPTS, K_COMPLETIONS, SHARD = 63_967, 4, 64
K_TPS = 8 * 8088.0  # Llama 3.1 8B, TP 1, H100, vLLM v0.6.0: 8,088 tok/s
TP_EFF = {1: 1.0, 2: math.sqrt(0.958), 4: 0.958}  # 70B TP 4: 3,543 tok/s = K*4*e(4)/70
MEAN_TOKENS, SIGMA, MAX_TOKENS = 350.0, 0.8, 1024
SEED = 42


def tp_for(params: float) -> int:
    return 1 if params <= 16 else 2 if params <= 40 else 4


def replica_tps(params: float) -> float:
    tp = tp_for(params)
    return K_TPS * tp * TP_EFF[tp] / params


def load_s(params: float, scale: float) -> float:
    return scale * (60.0 + 2.0 * params / tp_for(params))


def workload() -> tuple[dict[str, list[float]], dict[str, int]]:
    """Tokens of each (model, shard) part and requests per model: the project's seeded
    draws of 4 models per instruction, drawn completion lengths."""
    names = list(POOL)
    lengths = random.Random(SEED)
    mu = math.log(MEAN_TOKENS) - SIGMA ** 2 / 2  # lognormal with this mean
    parts = {n: [0.0] * math.ceil(PROMPTS / SHARD) for n in names}
    requests = dict.fromkeys(names, 0)
    for i in range(PROMPTS):
        for model in draw_models(rng_for(SEED, f"prompt-{i:06d}"), names, K_COMPLETIONS):
            parts[model][i // SHARD] += min(MAX_TOKENS, round(lengths.lognormvariate(mu, SIGMA)))
            requests[model] += 1
    return parts, requests


def capped_mean() -> float:
    """E[min(length, max_tokens)]: what a planner that knows the length distribution expects."""
    rng = random.Random(SEED + 2)
    mu = math.log(MEAN_TOKENS) - SIGMA ** 2 / 2
    return sum(min(MAX_TOKENS, rng.lognormvariate(mu, SIGMA)) for _ in range(100_000)) / 100_000


def build(parts: dict[str, list[float]], requests: dict[str, int], load_scale: float,
          speed_seed: int = SEED + 1) -> tuple[list[Job], list[SimJob]]:
    """Planner jobs (estimates) and simulated engines (drawn lengths, speed off by +-10%)."""
    noise = random.Random(speed_seed)
    jobs, sims = [], []
    for name, params in POOL.items():
        if params is None:
            continue  # API models run beside the GPUs; they take no GPU time
        tp = tp_for(params)
        jobs.append(Job(name, tp, capped_mean() * requests[name] / replica_tps(params), load_s(params, load_scale)))
        actual = replica_tps(params) * noise.uniform(0.9, 1.1)
        shards = [i for i, t in enumerate(parts[name]) if t > 0]
        sims.append(SimJob(name, tp, load_s(params, load_scale), actual, [parts[name][i] for i in shards], shards))
    return jobs, sims


def judge_start(res, sims: list[SimJob]) -> float:
    """Earliest moment one instruction shard has every GPU model's part: when a pipelined
    rate stage could start (API models' parts are assumed ready by then)."""
    per_shard: dict[int, float] = {}
    for (engine, shard), t in res.part_done.items():
        per_shard[shard] = max(per_shard.get(shard, 0.0), t)
    return min(per_shard.values())


def row(gpus: int, name: str, res, ideal: float, bound: float, sims) -> dict:
    return {"gpus": gpus, "schedule": name, "makespan_s": round(res.makespan_s), "ideal_s": round(ideal),
            "vs_ideal": round(res.makespan_s / ideal, 3), "bound_vs_ideal": round(bound / ideal, 3),
            "gpu_busy": round(res.busy_gpu_s / (gpus * res.makespan_s), 3),
            "gpu_generating": round(res.generating_gpu_s / (gpus * res.makespan_s), 3),
            "loads": res.loads, "judge_start_stagewise_s": round(res.makespan_s),
            "judge_start_pipelined_s": round(judge_start(res, sims))}


def run(gpu_counts: list[int], load_scale: float, fail: tuple[str, float] | None = None,
        speed_seed: int = SEED + 1) -> tuple[list[dict], dict]:
    parts, requests = workload()
    jobs, sims = build(parts, requests, load_scale, speed_seed)
    rows, gantt = [], {}
    for gpus in gpu_counts:
        per_node = min(8, gpus)
        # the ideal from the simulated (actual) work: every model loaded once, no GPU idle
        ideal = sum(s.tp * (s.load_s + sum(s.parts) / s.tps) for s in sims) / gpus
        # what no schedule beats on this work: each engine pays the fewest loads it needs
        bound = lower_bound_s([Job(s.engine_id, s.tp, sum(s.parts) / s.tps, s.load_s) for s in sims], gpus)
        static = plan_schedule(jobs, gpus, per_node, mode="static")
        elastic = plan_schedule(jobs, gpus, per_node, mode="elastic")
        estimates = {j.engine_id: j.work_s for j in jobs}
        for name, schedule, kw in (
                ("today", "today", {}),
                ("static plan", static, {}),
                ("elastic plan", elastic, {"elastic": True, "estimates": estimates}),
                ("elastic, re-planned", elastic, {"elastic": True, "estimates": estimates, "replanning": True})):
            started = time.perf_counter()
            res = simulate(sims, gpus, per_node, schedule, fail=fail, **kw)
            r = row(gpus, name, res, ideal, bound, sims)
            if schedule != "today":
                r["planned_makespan_s"] = round(schedule.makespan_s)
            r["sim_s"] = round(time.perf_counter() - started, 2)
            rows.append(r)
            gantt[(gpus, name)] = res.servers
    return rows, gantt


def plot(gantt: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(gantt)
    names = [n for n, p in POOL.items() if p is not None]
    colours = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}
    cols = len(keys) // len({k[0] for k in keys})
    fig, axes = plt.subplots(len(keys) // cols, cols, figsize=(5 * cols, 3.4 * (len(keys) // cols)), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        gpus, name = key
        for s in gantt[key]:
            for g in s.gpus:
                ax.barh(g, (s.ready - s.start) / 60, left=s.start / 60, color=colours[s.engine_id], alpha=0.35,
                        height=0.9)
                ax.barh(g, (s.end - s.ready) / 60, left=s.ready / 60, color=colours[s.engine_id], height=0.9)
        end = max(s.end for s in gantt[key]) / 60
        ax.set_title(f"{gpus} GPUs, {name}: {end:.1f} min")
        ax.set_xlabel("minutes (pale: loading)")
        ax.set_ylabel("GPU")
        ax.set_ylim(gpus - 0.5, -0.5)  # every GPU, idle ones too
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[n]) for n in names]
    fig.legend(handles, names, loc="lower center", ncol=7, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--load-scale", type=float, default=1.0, help="multiply every load time")
    ap.add_argument("--speed-seed", type=int, default=SEED + 1, help="seed of the per-engine speed error")
    ap.add_argument("--fail", default=None, help="ENGINE@FRACTION: one server of ENGINE dies at that progress")
    ap.add_argument("--out", default=None, help="write the rows as JSON")
    ap.add_argument("--plot", default=None, help="write the Gantt chart (PNG)")
    args = ap.parse_args(argv)
    fail = None
    if args.fail:
        engine, frac = args.fail.split("@")
        fail = (engine, float(frac))
    rows, gantt = run(args.gpus, args.load_scale, fail, args.speed_seed)
    cols = ["gpus", "schedule", "makespan_s", "ideal_s", "vs_ideal", "bound_vs_ideal", "gpu_busy", "gpu_generating", "loads",
            "judge_start_stagewise_s", "judge_start_pipelined_s", "planned_makespan_s"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "-")) for c in cols))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"load_scale": args.load_scale, "fail": args.fail, "speed_seed": args.speed_seed,
                                              "rows": rows},
                                             indent=1))
    if args.plot:
        plot(gantt, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
