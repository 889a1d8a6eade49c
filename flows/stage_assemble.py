"""Assemble stage as a Prefect task: join, binarize and publish the run.

Inputs: the run config, the finished shards of sample, generate and rate, and the judge
audit's shards when there are any (read only). Outputs, under the output root: dataset/,
dataset_ids/, dataset_long/, preferences/<pair set>/, report/ and README.md (see
docs/output.md), Prefect table and markdown artifacts on the run, and the stage's marker
shard `assemble/published.parquet` (schema "outputs": the files written).

The join is global (pairs need every completion of a prompt, the split needs every
prompt), so the stage is one task. Its key covers every input shard's content hash, the
whole run config (the card prints it) and the assemble code: an unchanged rerun is
served from the cache or the marker; any new rating reassembles. Upstream shards that
are not finished leave their prompts without completions or ratings (nulls in the
dataset, counted in the card), and the stage logs which ones. The stage opens no backend
and sends no request: it is a pure function of the shards (position bias is the judge
audit's probe, after the rate stage).
"""
from __future__ import annotations

import pyarrow as pa
from prefect import task

from flows.common import StageResult, logger
from flows.shard_tasks import ShardJob, key_from_param, run_shard_tasks
from storage.keys import code_version, shard_key
from storage.schemas import SCHEMAS, to_table
from storage.shards import ShardRef, ShardStore
from tasks.assemble.join import RATING_COLUMNS
from tasks.errors import InputError

STAGE = "assemble"
SHARD = "published"
INPUTS = ("sample", "generate", "rate")
LOCAL_JUDGES = ("local_vllm", "scripted")


def _code() -> str:
    # By name: what publishing imports (matplotlib for the plots) is imported only by its task.
    return code_version("tasks.assemble.config", "tasks.assemble.join", "tasks.assemble.binarize",
                        "tasks.assemble.frames", "tasks.assemble.stats", "tasks.markdown", "tasks.assemble.plots",
                        "tasks.assemble.card", "tasks.assemble.report", "tasks.assemble.publish")


def input_refs(store: ShardStore, *inputs: StageResult) -> dict[str, list[ShardRef]]:
    refs = {r.stage: sorted(r.refs, key=lambda ref: ref.shard_id) for r in inputs}
    refs["audit"] = sorted(store.refs("audit"), key=lambda r: r.shard_id)  # read only: the card shows it
    if not refs["sample"]:
        raise InputError(f"assemble needs finished sample shards in {store.root}; run --stages sample first")
    return refs


def assemble_key(refs: dict[str, list[ShardRef]], cfg) -> str:
    inputs = [f"{stage}:{r.shard_id}:{r.sha256}" for stage in (*INPUTS, "audit") for r in refs.get(stage, [])]
    return shard_key(STAGE, inputs, cfg.model_dump(mode="json"), _code())


def _concat(store: ShardStore, refs: list[ShardRef], schema_name: str, columns: list[str] | None = None) -> pa.Table:
    tables = [store.read_shard(r, columns=columns) for r in refs]
    if tables:
        # One contiguous copy: the join takes rows from it many times, which a table of
        # many chunks would re-concatenate on every take.
        return pa.concat_tables(tables).combine_chunks()
    empty = SCHEMAS[schema_name].empty_table()
    return empty.select(columns) if columns else empty


def truthfulqa_files(cfg) -> list[str]:
    """Every TruthfulQA file the run knows: its sources, eval files and publish.truthfulqa_file."""
    files = [p for s in cfg.sources if s.format == "truthful_qa" for p in s.files()]
    files += [e.path for e in cfg.sampling.decontamination.eval_files if e.format == "truthful_qa"]
    if cfg.publish.truthfulqa_file:
        files.append(cfg.publish.truthfulqa_file)
    return sorted(set(files))


def judge_notes(cfg) -> list[str]:
    ep = cfg.rating.endpoint
    if ep.kind in LOCAL_JUDGES:
        return [f"the judge of this run is the {ep.kind} endpoint `{ep.model}`. Its ratings follow the scales but "
                "are not the judgement of a GPT-4-class model; rate with a strong judge before training on them."]
    return []


def _audit_section(store: ShardStore) -> str | None:
    if not store.refs("audit"):
        return None  # no audit in this run: its statistics (scipy) are not even imported
    from flows.stage_audit import card_section

    return card_section(store)


def unfinished_notes(store: ShardStore) -> list[str]:
    notes = []
    for stage in INPUTS:
        unfinished = store.incomplete(stage)
        if unfinished:
            notes.append(f"this run is incomplete: {len(unfinished)} {stage} shard(s) are not finished "
                         f"({', '.join(unfinished[:5])}{', ...' if len(unfinished) > 5 else ''}); their prompts "
                         "appear without completions or ratings. Backfill them and run the assemble stage again.")
    return notes


@task(name="assemble-publish", retries=1, retry_delay_seconds=5, cache_key_fn=key_from_param, persist_result=True)
def publish_dataset(cfg, refs: dict[str, list[ShardRef]], key: str, notes: list[str]) -> dict:
    """Read every finished shard, publish the outputs, write the stage's marker last."""
    from tasks.assemble.publish import publish, truthfulqa_questions

    store = ShardStore(cfg.output)
    existing = store.done_with_key(STAGE, SHARD, key)
    if existing is not None:
        return {"ref": existing, "action": "kept", "summary": None}
    ins = _concat(store, refs["sample"], "instructions")
    comps = _concat(store, refs["generate"], "completions")
    # Only the columns the outputs use: raw_text alone is half of a ratings shard.
    rates = _concat(store, refs["rate"], "ratings", RATING_COLUMNS)
    seed = cfg.publish.seed if cfg.publish.seed is not None else cfg.seed
    tables = [ins, comps, rates]
    del ins, comps, rates  # publish holds the only references, so it can drop what it has joined
    result = publish(tables.pop(0), tables.pop(0), tables.pop(0), output=cfg.output, config=cfg.model_dump(mode="json"),
                     publish_cfg=cfg.publish, seed=seed,
                     truthful_sources={s.name for s in cfg.sources if s.format == "truthful_qa"},
                     truthful_questions=truthfulqa_questions(truthfulqa_files(cfg)),
                     notes=notes + judge_notes(cfg), audit=_audit_section(store))
    files = to_table([{"path": f.path, "schema": f.schema, "rows": f.rows} for f in result.files], "outputs")
    ref = store.write_shard(STAGE, SHARD, files, "outputs", key)
    return {"ref": ref, "action": "written", "summary": result.summary()}


def run_assemble(cfg, store: ShardStore, instructions: StageResult, completions: StageResult,
                 ratings: StageResult) -> StageResult:
    """Publish the dataset from every finished input shard (one task: the join is global)."""
    refs = input_refs(store, instructions, completions, ratings)
    notes = unfinished_notes(store)
    for note in notes:
        logger().warning("assemble: %s", note)
    job = ShardJob(SHARD, assemble_key(refs, cfg), {"cfg": cfg, "refs": refs, "notes": notes})
    done = run_shard_tasks(STAGE, store, [job], publish_dataset,
                           detail=lambda o: f"{o.refs[0].rows if o.refs else 0} files under {cfg.output}")
    out = done.outputs.get(SHARD) or {}
    return StageResult(STAGE, done.refs, {"shards": done.counts, **(out.get("summary") or {})}, done.failed)
