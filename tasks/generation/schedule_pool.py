"""From the generation config to a GPU plan of its engines.

Inputs: the generation config, its engine groups (`engines.engine_groups`) and the number
of instructions. Outputs: planner `Job`s and the `Plan` the flow runs in the configured
`schedule.mode`: static (one server per engine, its replicas as `--data-parallel-size`) or
elastic (server segments that join and leave, tasks/generation/elastic_engine.py).

A job's work is estimated from the expected number of requests (instructions x k, spread
evenly over the pool, as the draws are) times the entries' `max_tokens`, over
`schedule.tokens_per_s`: an upper estimate that keeps engines' relative sizes right, which
is all the longest-first order and the replica counts depend on. Without `schedule.gpus`
every vLLM engine takes the one slot, so the plan runs them one after another: today's
behaviour on CPU.
"""
from __future__ import annotations

from tasks.generation.config import GenerationConfig
from tasks.generation.engines import VLLM_MODES, EngineGroup
from tasks.generation.schedule import Job, Plan, plan_schedule


def jobs_for_pool(cfg: GenerationConfig, groups: list[EngineGroup], n_instructions: int) -> list[Job]:
    sched = cfg.schedule
    index = {m.name: i for i, m in enumerate(cfg.models)}
    jobs = []
    for group in groups:
        first = group.entries[0]
        requests = n_instructions * cfg.k * len(group.entries) / len(cfg.models)
        tokens = requests * sum(e.sampling.max_tokens for e in group.entries) / len(group.entries)
        on_gpu = group.serve in VLLM_MODES
        tp = (first.tensor_parallel_size if sched.gpus else 1) if on_gpu else 0
        # Only a launched server takes --data-parallel-size; vLLM's offline engine refuses
        # data parallelism for dense models, so a batch engine stays one replica.
        many = sched.replicate and sched.gpus is not None and group.serve == "vllm_server"
        jobs.append(Job(group.engine_id, tp, tokens / sched.tokens_per_s, sched.load_s if on_gpu else 0.0,
                        field=f"generation.models.{index[first.name]}", max_replicas=None if many else 1))
    return jobs


def plan_for_pool(cfg: GenerationConfig, groups: list[EngineGroup], n_instructions: int) -> Plan:
    """The plan the generation flow follows, in `schedule.mode` (static: every replica starts
    with its engine; elastic: placements are server segments that join and leave)."""
    jobs = jobs_for_pool(cfg, groups, n_instructions)
    return plan_schedule(jobs, cfg.schedule.gpus or 1, replicate=cfg.schedule.replicate, mode=cfg.schedule.mode)


def seconds_per_request(cfg: GenerationConfig, group: EngineGroup) -> float:
    """The planning estimate of one request's time on one replica (as in `jobs_for_pool`)."""
    return sum(e.sampling.max_tokens for e in group.entries) / len(group.entries) / cfg.schedule.tokens_per_s
