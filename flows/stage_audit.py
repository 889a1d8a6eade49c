"""The judge audit as Prefect tasks, run after the rate stage when `audit.enabled`.

Inputs: the run config and the finished sample, generate and rate shards. Outputs, under
the output root: `audit/run.parquet` (AUDIT_RATINGS: the rate stage's ratings of the
sample, the position re-asks, the second judge's ratings), `audit/human-<set>.parquet`
(one per human set), `audit/results.parquet` (AUDIT_RESULTS), `audit/report.md`,
`audit/biases.png` and `audit/agreement.png`, request journals under
`journal/audit/`, a table and a markdown artifact on the flow run, and a summary with
the audit's own cost lines (stage "audit").

Each part is one task whose key covers its inputs' content hashes, the audit and judge
settings and the audit code, so an unchanged rerun sends nothing, and a retry pays only
for answers its journal lacks. The assemble stage only reads these shards (see
`card_section`); it sends no request.
"""
from __future__ import annotations

import pyarrow as pa
from prefect import task

from flows.common import StageResult, logger
from flows.shard_tasks import ShardJob, key_from_param, run_shard_tasks, transient_only
from flows.stage_rate import key_config
from storage.keys import code_version, shard_key
from storage.schemas import SCHEMAS
from storage.shards import ShardRef, ShardStore
from storage.tables import write_bytes, write_text
from tasks.rating.cost import format_summary, merge

STAGE = "audit"
RESULTS = "results"
INPUTS = ("sample", "generate", "rate")


def _code() -> str:
    # By name: the audit's statistics (scipy, scikit-learn) are imported only by its tasks.
    return code_version(*(f"tasks.audit.{m}" for m in ("calls", "humans", "probes", "run", "stats", "report")))


def _seed(cfg) -> int:
    return cfg.audit.seed if cfg.audit.seed is not None else cfg.seed


def _second(cfg):
    name = cfg.audit.second_judge
    return next(e for e in cfg.rating.endpoints if e.name == name) if name else None


def _concat(store: ShardStore, refs: list[ShardRef], schema: str) -> pa.Table:
    tables = [store.read_shard(r) for r in refs]
    return pa.concat_tables(tables).combine_chunks() if tables else SCHEMAS[schema].empty_table()


def part_key(part: str, refs: dict[str, list[ShardRef]], cfg) -> str:
    second = _second(cfg)
    settings = {"part": part, "seed": _seed(cfg), "audit": cfg.audit.model_dump(mode="json"),
                "judge": key_config(cfg),
                "second": second.model_dump(mode="json", include={"kind", "model", "deployment", "answer_mode",
                                                                   "script"}) if second else None}
    inputs = [f"{s}:{r.shard_id}:{r.sha256}" for s in INPUTS for r in refs[s]] if part == "run" else []
    return shard_key(STAGE, inputs, settings, _code())


@task(name="audit-part", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=transient_only,
      cache_key_fn=key_from_param, persist_result=True)
def audit_part(cfg, part: str, refs: dict[str, list[ShardRef]], key: str) -> dict:
    """One audit shard: the run probes (`run`) or one human set (`human-<name>`)."""
    from tasks.audit.humans import oracle_labels
    from tasks.audit.run import human_part, run_part
    from tasks.backends.journal import Journal, journal_path
    from tasks.rating.judges import open_judge

    store = ShardStore(cfg.output)
    existing = store.done_with_key(STAGE, part, key)
    if existing is not None:
        return {"ref": existing, "action": "kept"}
    log_dir, seed = store.log_dir(), _seed(cfg)

    def journal(name: str) -> Journal:
        return Journal(journal_path(cfg.output, f"audit-{name}", cfg.rating.journal_dir, STAGE))

    judge = open_judge(cfg.rating.endpoint, log_dir, oracle=oracle_labels)
    if part == "run":
        second = _second(cfg)
        table = run_part(_concat(store, refs["sample"], "instructions"), _concat(store, refs["generate"], "completions"),
                         _concat(store, refs["rate"], "ratings"), cfg.rating, cfg.audit, seed, judge, journal(part),
                         (second, open_judge(second, log_dir, oracle=oracle_labels), journal(f"{part}-second"))
                         if second else None)
    else:
        hs = next(h for h in cfg.audit.human_sets if f"human-{h.name}" == part)
        table = human_part(hs, cfg.rating, seed, judge, journal(part))
    ref = store.write_shard(STAGE, part, table, "audit_ratings", key)
    return {"ref": ref, "action": "written"}


def _artifacts(name: str, results: pa.Table, report_md: str) -> None:
    from storage.keys import artifact_key
    from tasks.assemble.report import _in_prefect_run
    from tasks.markdown import records

    if not _in_prefect_run():
        return
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    try:
        create_table_artifact(table=records(results.to_pandas()), key=artifact_key(name, "judge-audit"),
                              description=f"{name}: judge audit figures with bootstrap intervals")
        create_markdown_artifact(markdown=report_md, key=artifact_key(name, "judge-audit-report"),
                                 description=f"{name}: judge audit")
    except Exception as exc:  # an artifact is a view; the shards are the record
        logger().warning("audit: could not create the artifacts: %s", exc)


def _instructions(store: ShardStore, refs: list[ShardRef], ids: set[str]) -> dict[str, str]:
    out = {}
    for r in refs:
        t = store.read_shard(r, columns=["prompt_id", "instruction"])
        out.update({p: i for p, i in zip(t["prompt_id"].to_pylist(), t["instruction"].to_pylist()) if p in ids})
    return out


def _finish(cfg, store: ShardStore, parts: list[ShardRef], sample_refs: list[ShardRef]) -> dict:
    """Figures, report, plots and artifacts from the finished part shards."""
    import pandas as pd

    from tasks.audit import report
    from tasks.audit.run import cost_lines, figures, self_model

    rows = pa.concat_tables([store.read_shard(r) for r in parts]) if parts else SCHEMAS["audit_ratings"].empty_table()
    own = self_model(cfg.generation.models, cfg.rating.endpoint, cfg.audit)
    results = figures(rows, cfg.audit, own, _seed(cfg))
    key = shard_key(STAGE, [f"{r.shard_id}:{r.sha256}" for r in parts], {"self": own, "audit": cfg.audit.model_dump(
        mode="json")}, _code())
    store.write_shard(STAGE, RESULTS, results, "audit_results", key)
    res_df, rows_df = results.to_pandas(), rows.to_pandas()
    for name, png in report.plots(res_df).items():
        write_bytes(f"{cfg.output.rstrip('/')}/{STAGE}/{name}", png)
    cost = cost_lines(rows)
    ids = set(rows_df.loc[rows_df["set"] == "run", "item_id"])
    md = report.render_audit(res_df, rows_df, cost, _instructions(store, sample_refs, ids), cfg.rating.endpoint.model,
                       cfg.audit.disagreements, plots=list(report.PLOTS), heading="#")
    write_text(f"{cfg.output.rstrip('/')}/{STAGE}/report.md", md)
    _artifacts(cfg.name, results, md)
    flagged = [f"{r['probe']}/{r['aspect']}/{r['metric']}" + (f"@{int(r['position'])}" if pd.notna(r["position"]) else "")
               for _, r in res_df.iterrows() if report.flagged(r)]
    return {"figures": results.num_rows, "flagged": flagged, "cost": cost}


def run_audit(cfg, store: ShardStore, instructions: StageResult, completions: StageResult,
              ratings: StageResult) -> StageResult | None:
    """The audit after the rate stage: None when `audit.enabled` is off."""
    if not cfg.audit.enabled:
        return None
    refs = {r.stage: sorted(r.refs, key=lambda ref: ref.shard_id) for r in (instructions, completions, ratings)}
    parts = ["run"] + [f"human-{h.name}" for h in cfg.audit.human_sets]
    jobs = [ShardJob(p, part_key(p, refs, cfg), {"cfg": cfg, "part": p, "refs": refs}) for p in parts]
    from tasks.rating.judges import close_engines

    try:
        done = run_shard_tasks(STAGE, store, jobs, audit_part)
    finally:
        close_engines()
    summary = {"shards": done.counts, **_finish(cfg, store, done.refs, refs["sample"])}
    logger().info("audit: %d figures, flagged: %s\n%s", summary["figures"], ", ".join(summary["flagged"]) or "none",
                  format_summary(merge(summary["cost"])))
    return StageResult(STAGE, done.refs, summary, done.failed)


def card_section(store: ShardStore) -> str | None:
    """The dataset card's audit section from the audit's shards; None when the run has none."""
    from tasks.audit import report

    res = store.done(STAGE, RESULTS)
    if res is None:
        return None
    from tasks.audit.run import cost_lines

    parts = [r for r in store.refs(STAGE) if r.shard_id != RESULTS]
    table = pa.concat_tables([store.read_shard(r) for r in parts]) if parts else SCHEMAS["audit_ratings"].empty_table()
    rows, results = table.to_pandas(), store.read_shard(res).to_pandas()
    ids = set(rows.loc[rows["set"] == "run", "item_id"])
    rated = rows.loc[rows["probe"].isin(["rate", "position", "human"]), "judge_model"]
    judge = rated.iloc[0] if len(rated) else "the judge"
    return report.render_audit(results, rows, cost_lines(table), _instructions(store, store.refs("sample"), ids), judge,
                         plots=[f"{STAGE}/{p}" for p in report.PLOTS])
