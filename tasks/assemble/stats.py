"""Summary tables of a run: what the dataset card, the quality report and the Prefect
artifacts show.

Inputs: the stage tables (INSTRUCTIONS, COMPLETIONS), the long ratings table
("ratings_long") and one row per completion with its scores
(tasks.assemble.frames.completion_frame). Output: `RunStats`, a set of small
pandas DataFrames, each with plain column names so they render as Markdown and as Prefect
table artifacts alike. Per-row work is vectorized: the long table has a row per
completion and aspect (1.3 million at the original's scale).

Judge tokens and cost are counted once per judge call: the rows of one call share a
request_id and each carries the whole call's usage (re-asks included).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from storage.schemas import ASPECTS, CRITIQUE

RATING_VALUES = ["1", "2", "3", "4", "5", "N/A", "no rating"]


@dataclass
class RunStats:
    sources: pd.DataFrame
    models: pd.DataFrame
    principles: pd.DataFrame
    ratings: pd.DataFrame  # aspect x rating value counts
    ratings_by_model: pd.DataFrame  # model, aspect, value, count
    correlation: pd.DataFrame  # aspect x aspect
    parse: pd.DataFrame
    cost: pd.DataFrame
    totals: dict = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"sources": self.sources, "models": self.models, "principles": self.principles,
                "ratings": self.ratings, "correlation": self.correlation, "parse": self.parse, "cost": self.cost}


def _value_text(r: float) -> str:
    return str(int(r)) if float(r).is_integer() else f"{r:g}"


def rating_values(long: pd.DataFrame) -> pd.Series:
    """Per row: "N/A", "no rating" or the rating as text ("4")."""
    rating = long["rating"].astype("float64")
    texts = {v: _value_text(v) for v in pd.unique(rating.dropna())}
    values = rating.map(texts).astype(object)
    values[rating.isna()] = "no rating"
    values[long["rating_na"].fillna(False).astype(bool).to_numpy()] = "N/A"
    return values


def rating_counts(long: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    aspects = long[long["aspect"].isin(ASPECTS)].copy()
    if aspects.empty:
        empty = pd.DataFrame(columns=["aspect", *RATING_VALUES])
        return empty, pd.DataFrame(columns=["model", "aspect", "value", "count"])
    aspects["value"] = rating_values(aspects)
    by_model = aspects.groupby(["model", "aspect", "value"]).size().reset_index(name="count")
    table = aspects.groupby(["aspect", "value"]).size().unstack(fill_value=0)
    table = table.reindex(index=list(ASPECTS), columns=RATING_VALUES, fill_value=0).fillna(0).astype(int)
    return table.reset_index(), by_model


def parse_table(long: pd.DataFrame) -> pd.DataFrame:
    """Rows per aspect and status; failure_rate = (unparsed + failed + missing) / rated,
    where rated leaves out completions that failed to generate (never sent to the judge)."""
    statuses = ["ok", "na", "unparsed", "failed", "missing", "no_response"]
    cols = ["aspect", *statuses, "total", "failure_rate"]
    if long.empty:
        return pd.DataFrame(columns=cols)
    counts = long.groupby(["aspect", "parse_status"]).size().unstack(fill_value=0)
    counts = counts.reindex(index=[a for a in (*ASPECTS, CRITIQUE)], columns=statuses, fill_value=0).fillna(0)
    counts = counts.astype(int)
    counts["total"] = counts.sum(axis=1)
    bad = counts["unparsed"] + counts["failed"] + counts["missing"]
    rated = counts["total"] - counts["no_response"]
    counts["failure_rate"] = (bad / rated.where(rated > 0)).round(4)
    return counts.reset_index().rename(columns={"index": "aspect"})[cols]


def cost_table(completions: pa.Table, long: pd.DataFrame) -> pd.DataFrame:
    comp = completions.select(["prompt_tokens", "completion_tokens", "latency_s", "error"]).to_pandas()
    rows = [{
        "stage": "generate", "calls": len(comp), "failed": int(comp["error"].notna().sum()),
        "prompt_tokens": int(comp["prompt_tokens"].fillna(0).sum()),
        "completion_tokens": int(comp["completion_tokens"].fillna(0).sum()),
        "latency_s": round(float(comp["latency_s"].fillna(0).sum()), 2), "usd": None,
    }]
    calls = long.dropna(subset=["request_id"]).drop_duplicates("request_id")
    priced = calls["cost_usd"].notna()
    rows.append({
        "stage": "rate", "calls": len(calls),
        "failed": int((calls["parse_status"] == "failed").sum()),
        "prompt_tokens": int(calls["judge_prompt_tokens"].fillna(0).sum()),
        "completion_tokens": int(calls["judge_completion_tokens"].fillna(0).sum()),
        "latency_s": None,
        # Unknown (no price for the judge model) is not zero.
        "usd": round(float(calls.loc[priced, "cost_usd"].sum()), 6) if priced.any() else None,
    })
    return pd.DataFrame(rows)


def model_table(comps: pd.DataFrame, completions: pa.Table) -> pd.DataFrame:
    gen = completions.select(["model", "completion_tokens", "error"]).to_pandas()
    base = gen.groupby("model").agg(completions=("model", "size"), failed=("error", lambda s: int(s.notna().sum())),
                                    mean_response_tokens=("completion_tokens", "mean"))
    means = comps.groupby("model")[["fine_grained", "overall", *ASPECTS]].mean()
    table = base.join(means, how="left").sort_values("fine_grained", ascending=False, na_position="last")
    return table.round(3).reset_index()


def correlation_table(comps: pd.DataFrame) -> pd.DataFrame:
    cols = [*ASPECTS, "overall"]
    usable = comps[cols].dropna(how="all")
    corr = usable.corr(method="pearson", min_periods=3) if len(usable) >= 3 else pd.DataFrame(index=cols, columns=cols)
    return corr.reindex(index=cols, columns=cols).astype(float).round(3).reset_index(names="aspect")


LONG_COLUMNS = ["aspect", "model", "rating", "rating_na", "parse_status", "request_id", "cost_usd",
                "judge_prompt_tokens", "judge_completion_tokens"]


def run_stats(instructions: pa.Table, completions: pa.Table, long_table: pa.Table, comps: pd.DataFrame) -> RunStats:
    """`comps`: one row per completion with its scores (see the module docstring)."""
    long = long_table.select(LONG_COLUMNS).to_pandas()
    ins = instructions.select(["source", "source_format"]).to_pandas()
    sources = ins.groupby(["source", "source_format"]).size().reset_index(name="instructions")
    per_source = comps.groupby("source").size().rename("completions")
    sources = sources.join(per_source, on="source").fillna({"completions": 0})
    sources["completions"] = sources["completions"].astype(int)
    principles = comps.groupby("principle").size().reset_index(name="completions")
    ratings, by_model = rating_counts(long)
    totals = {"instructions": len(ins), "completions": len(comps),
              "completions_with_response": int(comps["has_response"].sum()) if len(comps) else 0,
              "ratings": int(long["aspect"].isin(ASPECTS).sum()) if len(long) else 0,
              "critiques": int((long["aspect"] == CRITIQUE).sum()) if len(long) else 0}
    return RunStats(sources=sources, models=model_table(comps, completions), principles=principles,
                    ratings=ratings, ratings_by_model=by_model, correlation=correlation_table(comps),
                    parse=parse_table(long), cost=cost_table(completions, long), totals=totals)
