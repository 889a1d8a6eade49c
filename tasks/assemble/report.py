"""The quality report: report/report.md embedding the PNG plots, and the same tables as
Prefect artifacts.

Inputs: `RunStats`, pair statistics, optional position-bias results, plot file names.
Outputs: Markdown text (`render_report`), and `publish_report_artifacts`, which creates table and
markdown artifacts on the current Prefect flow or task run and does nothing (returns [])
when called outside one, so the pure pipeline and its tests run without Prefect.
"""
from __future__ import annotations

import logging

import pandas as pd

from storage.keys import artifact_key
from tasks.assemble.stats import RunStats
from tasks.markdown import kv, records, table

log = logging.getLogger("ultrafeedback.assemble")

CAPTIONS = {
    "leaderboard.png": ("Mean score per model", "The paper's leaderboard view: mean fine-grained and overall "
                        "score of each model's completions."),
    "rating_distribution.png": ("Rating distribution per model and aspect", "Share of each rating; N/A in grey, "
                                "completions without a readable rating in black."),
    "correlation.png": ("Aspect-to-aspect correlation", "Pearson correlation of the ratings of the same completion; "
                        "– where fewer than 3 completions have both ratings or one of them never varies."),
    "parse_failures.png": ("Parse failures", "Share of judge answers per aspect that gave no usable rating."),
    "cost.png": ("Tokens and cost per stage", "Generation runs on local engines and is not priced."),
}


def render_report(name: str, stats: RunStats, pair_stats: dict, plots: list[str]) -> str:
    parts = [f"# Quality report: {name}\n", kv(stats.totals), ""]
    for file in plots:
        title, caption = CAPTIONS.get(file, (file, ""))
        parts += [f"## {title}\n", f"![{title}]({file})\n", f"{caption}\n"]
    parts += ["## Leaderboard\n", table(stats.models), "\n## Ratings per aspect\n", table(stats.ratings),
              "\n## Parse status per aspect\n", table(stats.parse), "\n## Cost per stage\n", table(stats.cost),
              "\n## Sources\n", table(stats.sources), "\n## Principles\n", table(stats.principles),
              "\n## Preference pairs\n", kv(pair_stats)]
    return "\n".join(parts) + "\n"


def _in_prefect_run() -> bool:
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:
        return False
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def publish_report_artifacts(name: str, stats: RunStats, pair_stats: dict, report_md: str) -> list[str]:
    """Create the report's tables as Prefect artifacts; [] outside a flow or task run."""
    if not _in_prefect_run():
        return []
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    tables = {
        "leaderboard": (stats.models, "Mean score per model"),
        "rating-distribution": (stats.ratings, "Count of each rating per aspect"),
        "parse-failures": (stats.parse, "Judge answers per aspect by parse status"),
        "cost": (stats.cost, "Tokens and cost per stage"),
        "sources": (stats.sources, "Instructions and completions per source"),
        "pairs": (pd.DataFrame([pair_stats]), "Preference pairs made and left out"),
    }
    created = []
    for key, (df, description) in tables.items():
        full_key = artifact_key(name, key)
        try:
            create_table_artifact(table=records(df), key=full_key, description=f"{name}: {description}")
            created.append(full_key)
        except Exception as exc:  # an artifact is a view; the files on disk are the result
            log.warning("could not create artifact %s: %s", full_key, exc)
    try:
        report_key = artifact_key(name, "quality-report")
        create_markdown_artifact(markdown=report_md, key=report_key, description=f"{name}: quality report")
        created.append(report_key)
    except Exception as exc:
        log.warning("could not create the report artifact: %s", exc)
    return created
