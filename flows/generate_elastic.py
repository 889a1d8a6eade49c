"""The elastic mode's pieces of the generation stage: one engine task on the run's GPU
ledger, and the run's re-planner.

Inputs: the run config, the shard store, an engine group with its instruction shards, the
run's `GpuLedger` (tasks/generation/gpu_ledger.py). Outputs: `run_elastic` returns the
engine's `GroupResult` and its servers' history (for the stage summary); `start_replanner`
returns the run's started Replanner, or None when the plan is followed as made.
"""
from __future__ import annotations

from flows.common import logger, rows_by_source
from storage.shards import ShardRef, ShardStore
from tasks.generation.engines import VLLM_MODES, EngineGroup
from tasks.generation.stage import run_group


def run_elastic(cfg, store: ShardStore, group: EngineGroup, instr_refs: list[ShardRef], led, on_part=None) -> tuple:
    """One engine task of an elastic plan; whatever way it ends, its GPUs are released and its
    unused placements skipped, so the engines planned after it on its GPUs go on."""
    from tasks.generation.elastic_engine import ElasticBackend
    from tasks.generation.engines import launch_server, open_backend
    from tasks.generation.held_engine import HeldBackend
    from tasks.generation.schedule_pool import seconds_per_request

    sched, log_dir, backend = cfg.generation.schedule, store.log_dir(), None
    try:
        if group.serve == "vllm_server":
            def launch(p, k):
                return launch_server(group, log_dir, f"{group.engine_id}-s{k}", p.gpus, p.replicas,
                                     sched.pin_devices and sched.gpus > 1)

            backend = ElasticBackend(group.engine_id, led, launch, seconds_per_request(cfg.generation, group))
        elif group.serve in VLLM_MODES:
            backend = HeldBackend(group.engine_id, led, open_backend(group, log_dir, output_root=store.root))
        res = run_group(store, group, instr_refs, cfg.generation, cfg.seed, rows_by_source(cfg), log_dir,
                        backend=backend, on_part=on_part)
    finally:
        led.finish(group.engine_id)
    return res, (backend.history() if isinstance(backend, ElasticBackend) else None)


def start_replanner(cfg, groups: list[EngineGroup], led, n_instructions: int):
    """The run's re-planner (elastic mode with `schedule.replan`), its thread started; None
    when the plan is followed as made. An offline batch engine holds one placement for its
    whole run and cannot be moved, so a pool with one is not re-planned."""
    if led is None or not cfg.generation.schedule.replan:
        return None
    held = [g.engine_id for g in groups if g.serve in VLLM_MODES and g.serve != "vllm_server"]
    if held:
        logger().info("re-planning is off: %s cannot move between GPUs (serve: vllm_batch)", ", ".join(held))
        return None
    from tasks.generation.replanner import Replanner
    from tasks.generation.schedule_pool import jobs_for_pool

    return Replanner(led, jobs_for_pool(cfg.generation, groups, n_instructions)).__enter__()
