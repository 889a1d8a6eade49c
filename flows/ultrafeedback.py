"""The `ultrafeedback` flow: sample -> generate -> rate -> assemble.

Inputs: a RunConfig (the flow's parameters, shown as a form in the Prefect UI) and the
stages to run. Outputs: the stages' shards under `config.output`, `manifest.json` (each
stage's shards with state, rows and content hash, plus the run's summary), the run's
artifacts, and the summary as the flow's result.

Generation and rating overlap: a rate shard starts as soon as its completions shard is
merged (flows/stage_rate.py), and a merge as soon as the engines serving its shard have
written their parts of it (flows/stage_generate.py), through Prefect futures and `wait_for`.

A stage that is not run hands on its finished shards from the store, so `--stages
generate` works on instruction shards written by an earlier run. A shard task that fails
does not stop the others; when every stage has run, a run with failed shards ends in
state Failed (its summary is still the result and its artifact names the shards), so
Prefect's Retry runs it again and only the unfinished shards do work.
"""
from __future__ import annotations

from prefect import flow
from prefect.states import Failed

from flows.common import StageResult, logger, quiet_expected_errors
from flows.config import STAGES, RunConfig, Stage, checked_stages, validate_config
from flows.faults import requested_faults
from flows.progress import publish_artifacts
from flows.run_record import record_config
from flows.shard_tasks import settled
from flows.stage_assemble import run_assemble
from flows.stage_audit import run_audit
from flows.stage_generate import run_generate
from flows.stage_rate import run_rate
from flows.stage_sample import run_sample
from storage.shards import ShardStore
from tasks.errors import InputError

quiet_expected_errors()


def finished(store: ShardStore, stage: str, needed_by: str | None = None) -> StageResult:
    """A stage that does not run now: its finished shards (InputError if `needed_by` finds none)."""
    refs = store.refs(stage)
    if needed_by and not refs:
        raise InputError(f"stage {needed_by!r} needs finished {stage!r} shards in {store.root}; "
                         f"run --stages {stage} first")
    return StageResult(stage, refs)


def run_pipeline(cfg: RunConfig, stages: list[str], only: list[str] | None = None) -> dict:
    """Run the chosen stages in order (`only`: the shard ids a backfill is limited to); the summary."""
    todo = checked_stages(stages)
    requested_faults()  # a malformed fault spec fails here, before anything is written
    store = ShardStore(cfg.output)
    record_config(store, cfg)
    instructions = completions = ratings = audit = published = None
    if "sample" in todo:
        instructions = run_sample(cfg, store, only)
    if "generate" in todo:
        instructions = instructions or finished(store, "sample", needed_by="generate")
        # In flight: each shard's merge waits only for its own parts.
        completions = run_generate(cfg, store, instructions, only)
    if "rate" in todo:
        # Each rate shard starts as soon as its completions shard is merged (the judge runs
        # behind generation); with generate not run now, on the finished completion shards.
        completions = completions or finished(store, "generate", needed_by="rate")
        ratings = run_rate(cfg, store, instructions or finished(store, "sample"), completions, only)
    completions = settled(completions)
    if "rate" in todo:
        # The judge audit belongs to the rate stage's side (off unless audit.enabled).
        audit = run_audit(cfg, store, instructions or finished(store, "sample"), completions, ratings)
    if "assemble" in todo:
        # Delta pairs need no judge: a judge-free run assembles without rate shards.
        ratings = ratings or finished(store, "rate", needed_by=None if cfg.publish.judge_free else "assemble")
        published = run_assemble(cfg, store, instructions or finished(store, "sample"),
                                 completions or finished(store, "generate"), ratings)
    ran = [r for r in (instructions, completions, ratings, published) if r is not None and r.stage in todo]
    ran += [audit] if audit is not None else []
    return record_run(cfg, store, ran)


def record_run(cfg: RunConfig, store: ShardStore, ran: list[StageResult]) -> dict:
    """Write the manifest and the run's artifacts; the summary (earlier stages' entries kept)."""
    previous = (store.read_manifest() or {}).get("summary", {}).get("stages", {})
    summary = {"run": cfg.name, "seed": cfg.seed, "stages": {**previous, **{r.stage: r.summary for r in ran}},
               "failed": {r.stage: r.failed for r in ran if r.failed}}
    manifest = store.write_manifest({"summary": summary, "config": cfg.model_dump(mode="json")})
    publish_artifacts(manifest, summary, cfg.output)
    return summary


def final_state(summary: dict, what: str = "run"):
    """The summary itself when every shard finished, else a Failed state carrying it."""
    failed = [f"{stage}:{shard}" for stage, ids in summary.get("failed", {}).items() for shard in ids]
    if not failed:
        return summary
    shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
    return Failed(message=f"{what} {summary.get('run')}: {len(failed)} shard(s) failed ({shown}); the other shards "
                          "are written. Retry this flow run or backfill the output to finish it.", data=summary)


@flow(name="ultrafeedback", log_prints=False, validate_parameters=True)
def ultrafeedback(config: RunConfig, stages: list[Stage] = list(STAGES)) -> dict:
    """Build an UltraFeedback-style dataset: sample, generate, rate, assemble."""
    cfg = validate_config(config)
    summary = run_pipeline(cfg, list(stages))
    logger().info("run %s finished: %s", cfg.name, {k: v.get("shards") for k, v in summary["stages"].items()})
    return final_state(summary)
