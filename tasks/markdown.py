"""Small Markdown helpers shared by the dataset card, the quality report and the judge audit's report.

Inputs: pandas DataFrames and plain values. Outputs: Markdown text. No third-party
table renderer is needed (pandas' own needs `tabulate`).
"""
from __future__ import annotations

import math

import pandas as pd


def cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(df: pd.DataFrame, max_rows: int = 60) -> str:
    """A GitHub-flavoured Markdown table; longer frames are cut with a note."""
    if df is None or df.empty:
        return "_(no rows)_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in df.head(max_rows).itertuples(index=False):
        lines.append("| " + " | ".join(cell(v.item() if hasattr(v, "item") else v) for v in rec) + " |")
    if len(df) > max_rows:
        lines.append(f"\n_{len(df) - max_rows} more rows not shown._")
    return "\n".join(lines)


def kv(pairs: dict) -> str:
    return table(pd.DataFrame({"what": list(pairs), "value": list(pairs.values())}))


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-safe row dicts (NaN -> None, numpy scalars -> Python)."""
    out = []
    for rec in df.to_dict(orient="records"):
        row = {}
        for k, v in rec.items():
            v = v.item() if hasattr(v, "item") else v
            row[str(k)] = None if isinstance(v, float) and math.isnan(v) else v
        out.append(row)
    return out
