"""Write everything a run publishes, under its output root.

Inputs: the stage tables (INSTRUCTIONS, COMPLETIONS, RATINGS), the run config (as a plain
dict, for the card), the PublishConfig, the seed, what counts as TruthfulQA, and an
optional position-bias result. Outputs (see docs/output.md):

    dataset/train-NNNNN-of-NNNNN.parquet            UltraFeedback layout ("dataset")
    dataset_long/train-*.parquet                    one row per completion and aspect
    preferences/h4/{train_prefs,test_prefs}-*.parquet
    preferences/argilla/train-*.parquet
    preferences/all_pairs/{train,test}-*.parquet    (publish.all_pairs)
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
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storage.schemas import SCHEMAS
from storage.tables import remove_files, write_bytes, write_table_chunks, write_text
from tasks.assemble import frames, pair_rules
from tasks.assemble.binarize import PairStats, choose, drop_truthful_qa
from tasks.assemble.card import render_card
from tasks.assemble.config import PublishConfig
from tasks.assemble.join import dataset_from, join, long_from, long_rows
from tasks.assemble.plots import render_all
from tasks.assemble.report import publish_artifacts, render_report
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


def write_parts(root: str, folder: str, prefix: str, table: pa.Table, schema_name: str,
                shard_rows: int) -> list[OutputFile]:
    """`{folder}/{prefix}-00000-of-0000N.parquet`; no file for zero rows, since `datasets`
    cannot load an empty Parquet split (the card then leaves that split out)."""
    return write_parts_built(root, folder, prefix, table.num_rows, lambda lo, hi: table.slice(lo, hi - lo),
                             schema_name, shard_rows, shard_rows)


def write_parts_built(root: str, folder: str, prefix: str, total: int, build: Callable[[int, int], pa.Table],
                      schema_name: str, shard_rows: int, chunk_rows: int) -> list[OutputFile]:
    """As `write_parts`, for a table of `total` rows that `build(lo, hi)` makes a slice at a
    time: at most `chunk_rows` rows of it are in memory while a part file streams out."""
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


def publish(instructions: pa.Table, completions: pa.Table, ratings: pa.Table, *, output: str, config: dict,
            publish_cfg: PublishConfig, seed: int, truthful_sources: set[str] = frozenset(),
            truthful_questions: set[str] = frozenset(), position_bias: pd.DataFrame | None = None,
            notes: list[str] | None = None, audit: str | None = None) -> PublishResult:
    root = output.rstrip("/")
    n = publish_cfg.shard_rows
    joined = join(instructions, completions, ratings)
    del completions, ratings  # the join keeps what the outputs need (freed here if the caller let go)
    # Every output streams out a slice at a time (CHUNK_ROWS): at the original's scale the
    # long table has 1.3 million rows and the pair files hold a few hundred thousand texts.
    files = write_parts_built(root, "dataset", "train", instructions.num_rows,
                              lambda lo, hi: dataset_from(joined, lo, hi), "dataset", n, CHUNK_ROWS)
    slim: list[pa.Table] = []  # what the statistics need of the long table

    def long_part(lo: int, hi: int) -> pa.Table:
        table = long_from(joined, lo, hi)
        slim.append(table.select([*LONG_COLUMNS, "judge_model"]))
        return table

    files += write_parts_built(root, "dataset_long", "train", long_rows(joined), long_part, "ratings_long", n, n)
    long = pa.concat_tables(slim) if slim else SCHEMAS["ratings_long"].empty_table()
    comps = frames.completion_frame(joined)
    pair_stats_obj = PairStats()
    prompts = frames.prompts(joined, comps, publish_cfg.score, pair_stats_obj)
    if publish_cfg.drop_truthful_qa:
        prompts = drop_truthful_qa(prompts, set(truthful_sources), set(truthful_questions), pair_stats_obj)
    pairs = choose(prompts, seed, publish_cfg.test_rows, pair_stats_obj, with_all_pairs=publish_cfg.all_pairs)
    del prompts

    def pair_files(folder: str, prefix: str, picks: list, argilla: bool = False) -> list[OutputFile]:
        make = frames.argilla_table if argilla else frames.h4_table
        schema_name = "preferences_argilla" if argilla else "preferences_h4"
        return write_parts_built(root, folder, prefix, len(picks), lambda lo, hi: make(joined, picks[lo:hi]),
                                 schema_name, n, CHUNK_ROWS)

    files += pair_files("preferences/h4", "train_prefs", pairs.h4_train)
    files += pair_files("preferences/h4", "test_prefs", pairs.h4_test)
    files += pair_files("preferences/argilla", "train", pairs.argilla, argilla=True)
    if publish_cfg.all_pairs:
        files += pair_files("preferences/all_pairs", "train", pairs.all_train)
        files += pair_files("preferences/all_pairs", "test", pairs.all_test)
    else:
        remove_files(f"{root}/preferences/all_pairs/*.parquet")

    rule_counts = {}  # extra pair sets by rule (tasks.assemble.pair_rules)
    policy = pair_rules.policy_of(config)
    keep = (lambda ps: drop_truthful_qa(ps, set(truthful_sources), set(truthful_questions), PairStats())) \
        if publish_cfg.drop_truthful_qa else (lambda ps: ps)
    for rs, picks, counts in pair_rules.build_sets(joined, comps, publish_cfg.pair_rules, seed, policy, keep):
        files += write_parts_built(root, f"preferences/{rs.name}", "train", len(picks),
                                   lambda lo, hi, p=picks, r=rs: pair_rules.table(joined, p[lo:hi], r, policy),
                                   "preferences_rules", n, CHUNK_ROWS)
        rule_counts.update({f"{rs.name}_{k}": v for k, v in counts.items()})

    stats = run_stats(instructions, joined.comps, long, comps)
    pair_stats = {**pairs.stats.as_dict(), **rule_counts}
    plots = render_all(stats) if publish_cfg.plots else {}
    for name, png in plots.items():
        write_bytes(f"{root}/report/{name}", png)
        files.append(OutputFile(f"report/{name}", "png", 0))
    name = config.get("name", "ultrafeedback")
    report_md = render_report(name, stats, pair_stats, list(plots), position_bias)
    write_text(f"{root}/report/report.md", report_md)
    judges = sorted(j for j in pc.unique(long["judge_model"]).to_pylist() if j)
    card = render_card(config, stats, pair_stats, judges, position_bias, files=[f.path for f in files],
                       notes=notes, audit=audit)
    write_text(f"{root}/README.md", card)
    files += [OutputFile("report/report.md", "markdown", 0), OutputFile("README.md", "markdown", 0)]
    # The UI cannot show the PNGs, so the artifact carries the tables and says where the plots are.
    artifact_md = render_report(name, stats, pair_stats, [], position_bias) + f"\nPlots: `{root}/report/`\n"
    artifacts = publish_artifacts(name, stats, pair_stats, artifact_md, position_bias)
    return PublishResult(files, pair_stats, stats, artifacts)
