"""The `ultrafeedback` flow: sample -> generate -> rate -> assemble.

Inputs: a RunConfig (the flow's parameters, shown as a form in the Prefect UI) and the
stages to run. Outputs: the stages' shards under `config.output`, `manifest.json` (each
stage's shards with state, rows and content hash, plus the run's summary) and the summary
returned as the flow's result.

A stage that is not run reads its upstream's finished shards from the store, so
`--stages generate` works on instruction shards written by an earlier run.
"""
from __future__ import annotations

import importlib
from typing import Literal

from prefect import flow

from flows.backfill import record_config
from flows.common import StageResult, logger, quiet_expected_errors
from flows.config import STAGES, RunConfig, validate_config
from flows.progress import publish_run
from flows.shard_gate import default_task_runner
from storage.shards import ShardStore
from tasks.errors import InputError

Stage = Literal["sample", "generate", "rate", "assemble"]

# stage -> (module, runner); imported lazily so a stage's heavy imports stay out of others.
RUNNERS = {
    "sample": ("flows.stage_sample", "run_sample"),
    "generate": ("flows.stage_generate", "run_generate"),
    "rate": ("flows.stage_rate", "run_rate"),
    "assemble": ("flows.stage_assemble", "run_assemble"),
}
UPSTREAM = {"sample": None, "generate": "sample", "rate": "generate", "assemble": "rate"}
quiet_expected_errors()


def _runner(stage: str):
    module, name = RUNNERS[stage]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"stage {stage!r} is not available in this installation: {exc}") from None


def run_stages(cfg: RunConfig, stages: list[str]) -> dict:
    store = ShardStore(cfg.output)
    record_config(store, cfg)
    results: dict[str, StageResult] = {}
    summary: dict = {"run": cfg.name, "seed": cfg.seed, "stages": {}}
    for stage in [s for s in STAGES if s in stages]:
        up = UPSTREAM[stage]
        if up and up not in results:
            refs = store.refs(up)
            if not refs and not (up == "rate" and cfg.publish.judge_free):  # delta pairs need no judge
                raise InputError(f"stage {stage!r} needs finished {up!r} shards in {cfg.output}; run --stages {up} first")
            results[up] = StageResult(up, refs)
        result = _runner(stage)(cfg, store, results)
        results[stage] = result
        summary["stages"][stage] = result.summary
        if stage == "rate":  # the judge audit belongs to the rate stage's side (off unless audit.enabled)
            summary["stages"].update(importlib.import_module("flows.stage_audit").run_audit(cfg, store, results))
    previous = (store.read_manifest() or {}).get("summary", {}).get("stages", {})
    summary["stages"] = {**previous, **summary["stages"]}
    manifest = store.write_manifest({"summary": summary, "config": cfg.model_dump(mode="json")})
    publish_run(manifest, summary, cfg.output)
    return summary


@flow(name="ultrafeedback", log_prints=False, validate_parameters=True, task_runner=default_task_runner())
def ultrafeedback(config: RunConfig, stages: list[Stage] = list(STAGES)) -> dict:
    """Build an UltraFeedback-style dataset: sample, generate, rate, assemble."""
    cfg = validate_config(config)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise InputError(f"stages: unknown {unknown}; choose from {list(STAGES)}")
    summary = run_stages(cfg, list(stages))
    logger().info("run %s finished: %s", cfg.name, {k: v.get("shards") for k, v in summary["stages"].items()})
    return summary
