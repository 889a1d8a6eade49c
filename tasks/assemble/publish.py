"""Write everything a run publishes, under its output root.

Inputs: the stage tables (INSTRUCTIONS, COMPLETIONS, RATINGS), the run config (as a plain
dict, for the card), the PublishConfig, the seed, what counts as TruthfulQA, and an
optional position-bias result. Outputs (see docs/output.md):

    dataset/train-NNNNN-of-NNNNN.parquet            openbmb/UltraFeedback's features ("dataset")
    dataset_ids/train-*.parquet                     its sidecar, row for row: prompt_id and ids
    dataset_long/train-*.parquet                    one row per completion and aspect
    preferences/<set>/<split>-*.parquet             each pair set of publish.pairs, in its
                                                    layout's splits (h4: six; argilla: train;
                                                    trl: train, test)
    report/report.md + report/*.png
    README.md                                       the dataset card, written last

Every Parquet file is validated against its named schema and written to a temporary name
then renamed; parts left from an earlier, larger output are removed after the new ones
exist. A split without rows gets no file (`datasets` cannot load an empty Parquet split),
and the card lists only the splits that have files. Prefect artifacts are created when this runs inside a flow or task run.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Callable

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from storage.schemas import SCHEMAS
from storage.tables import write_bytes, write_table_chunks, write_text
from tasks.assemble import frames, pair_rules
from tasks.assemble.binarize import Choice, PairStats, choose, drop_truthful_qa, drop_truthful_qa_all
from tasks.assemble.card import render_card
from tasks.assemble.config import LAYOUT_SCHEMA, PublishConfig
from tasks.assemble.join import dataset_from, ids_from, join, long_from, long_rows
from tasks.assemble.plots import render_all
from tasks.assemble.report import publish_report_artifacts, render_report
from tasks.assemble.stats import LONG_COLUMNS, RunStats, run_stats

CHUNK_ROWS = 5000  # rows of a dataset or pair table built at once (a dataset row holds 4 completions)


@dataclass
class OutputFile:
    path: str  # relative to the output root
    schema: str
    rows: int


@dataclass
class PublishResult:
    files: list[OutputFile]
    pair_stats: dict
    stats: RunStats
    artifacts: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"files": len(self.files), "instructions": self.stats.totals.get("instructions", 0),
                "completions": self.stats.totals.get("completions", 0), "pairs": self.pair_stats}


def truthfulqa_questions(paths: list[str]) -> set[str]:
    """The Question column of TruthfulQA CSV files (local paths or fsspec URLs)."""
    out: set[str] = set()
    for path in paths:
        with fsspec.open(path, "r", encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(io.StringIO(fh.read()))
            if "Question" not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no 'Question' column (expected the TruthfulQA.csv layout)")
            out.update(r["Question"] for r in reader if r.get("Question"))
    return out


def write_parts_built(root: str, folder: str, prefix: str, total: int, build: Callable[[int, int], pa.Table],
                      schema_name: str, shard_rows: int, chunk_rows: int) -> list[OutputFile]:
    """`{folder}/{prefix}-00000-of-0000N.parquet` for a table of `total` rows that `build(lo, hi)`
    makes a slice at a time: at most `chunk_rows` rows of it are in memory while a part file
    streams out. No file for zero rows, since `datasets` cannot load an empty Parquet split
    (the card then leaves that split out)."""
    n = math.ceil(total / shard_rows)
    files = []
    for i in range(n):
        rel = f"{folder}/{prefix}-{i:05d}-of-{n:05d}.parquet"
        lo, hi = i * shard_rows, min((i + 1) * shard_rows, total)
        chunks = (build(a, min(a + chunk_rows, hi)) for a in range(lo, hi, chunk_rows))
        files.append(OutputFile(rel, schema_name, write_table_chunks(f"{root}/{rel}", chunks, schema_name)))
    keep = {f.path.rsplit("/", 1)[1] for f in files}
    fs, base = fsspec.core.url_to_fs(f"{root}/{folder}")
    if not fs.exists(base):
        return files
    for stale in fs.glob(f"{base}/{prefix}-*-of-*.parquet"):
        if stale.rsplit("/", 1)[1] not in keep:
            fs.rm(stale)
    return files


def choose_pairs(joined, comps, publish_cfg: PublishConfig, seed: int, truthful_sources: set[str],
                 truthful_questions: set[str]) -> Choice:
    """Every configured pair set, each ranked by its own score, from one join."""
    stats = PairStats()
    scores = sorted({ps.score for ps in publish_cfg.pairs.values()})
    by_score = frames.prompts_by_score(joined, comps, scores, stats)
    if publish_cfg.drop_truthful_qa:
        by_score = drop_truthful_qa_all(by_score, set(truthful_sources), set(truthful_questions), stats)
    return choose(by_score, publish_cfg.pairs, seed, publish_cfg.test_rows, stats)


def remove_stale_sets(root: str, keep: set[str]) -> None:
    """Pair files of sets no longer configured go, so the card lists only what was built."""
    fs, base = fsspec.core.url_to_fs(f"{root}/preferences")
    if not fs.exists(base):
        return
    for path in fs.glob(f"{base}/*/*.parquet"):
        if path.rsplit("/", 2)[-2] not in keep:
            fs.rm(path)


def publish(instructions: pa.Table, completions: pa.Table, ratings: pa.Table, *, output: str, config: dict,
            publish_cfg: PublishConfig, seed: int, truthful_sources: set[str] = frozenset(),
            truthful_questions: set[str] = frozenset(), notes: list[str] | None = None,
            audit: str | None = None) -> PublishResult:
    root = output.rstrip("/")
    n = publish_cfg.shard_rows
    joined = join(instructions, completions, ratings)
    del completions, ratings  # the join keeps what the outputs need (freed here if the caller let go)
    # Every output streams out a slice at a time (CHUNK_ROWS): at the original's scale the
    # long table has 1.3 million rows and the pair files hold a few hundred thousand texts.
    files = write_parts_built(root, "dataset", "train", instructions.num_rows,
                              lambda lo, hi: dataset_from(joined, lo, hi), "dataset", n, CHUNK_ROWS)
    files += write_parts_built(root, "dataset_ids", "train", instructions.num_rows,
                               lambda lo, hi: ids_from(joined, lo, hi), "dataset_ids", n, CHUNK_ROWS)
    slim: list[pa.Table] = []  # what the statistics need of the long table

    def long_part(lo: int, hi: int) -> pa.Table:
        table = long_from(joined, lo, hi)
        slim.append(table.select([*LONG_COLUMNS, "judge_model"]))
        return table

    files += write_parts_built(root, "dataset_long", "train", long_rows(joined), long_part, "ratings_long", n, n)
    long = pa.concat_tables(slim) if slim else SCHEMAS["ratings_long"].empty_table()
    comps = frames.completion_frame(joined)
    pairs = choose_pairs(joined, comps, publish_cfg, seed, truthful_sources, truthful_questions)
    for name, splits in pairs.sets.items():
        layout = publish_cfg.pairs[name].layout
        for split, picks in splits.items():
            files += write_parts_built(root, f"preferences/{name}", split, len(picks),
                                       lambda lo, hi, p=picks, s=split, lay=layout: frames.pair_table(joined, p[lo:hi], lay, s),
                                       LAYOUT_SCHEMA[layout], n, CHUNK_ROWS)
    remove_stale_sets(root, set(publish_cfg.pairs) | {rs.name for rs in publish_cfg.pair_rules})

    rule_counts = {}  # extra pair sets by rule (tasks.assemble.pair_rules)
    policy = pair_rules.policy_of(config)
    keep = (lambda ps: drop_truthful_qa(ps, set(truthful_sources), set(truthful_questions), PairStats())) \
        if publish_cfg.drop_truthful_qa else (lambda ps: ps)
    for rs, picks, counts in pair_rules.build_sets(joined, comps, publish_cfg.pair_rules, seed, policy, keep):
        files += write_parts_built(root, f"preferences/{rs.name}", "train", len(picks),
                                   lambda lo, hi, p=picks, r=rs: pair_rules.rules_table(joined, p[lo:hi], r, policy),
                                   "preferences_rules", n, CHUNK_ROWS)
        rule_counts.update({f"{rs.name}.{k}": v for k, v in counts.items()})

    stats = run_stats(instructions, joined.comps, long, comps)
    pair_stats = {**pairs.stats.as_dict(), **rule_counts}
    plots = render_all(stats) if publish_cfg.plots else {}
    for name, png in plots.items():
        write_bytes(f"{root}/report/{name}", png)
        files.append(OutputFile(f"report/{name}", "png", 0))
    name = config.get("name", "ultrafeedback")
    report_md = render_report(name, stats, pair_stats, list(plots))
    write_text(f"{root}/report/report.md", report_md)
    judges = sorted(j for j in pc.unique(long["judge_model"]).to_pylist() if j)
    card = render_card(config, stats, pair_stats, judges, files=[f.path for f in files],
                       notes=notes, audit=audit)
    write_text(f"{root}/README.md", card)
    files += [OutputFile("report/report.md", "markdown", 0), OutputFile("README.md", "markdown", 0)]
    # The UI cannot show the PNGs, so the artifact carries the tables and says where the plots are.
    artifact_md = render_report(name, stats, pair_stats, []) + f"\nPlots: `{root}/report/`\n"
    artifacts = publish_report_artifacts(name, stats, pair_stats, artifact_md)
    return PublishResult(files, pair_stats, stats, artifacts)
