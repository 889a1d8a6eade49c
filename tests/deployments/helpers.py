"""Helpers of the operations tests: the scripted config, published tables, shard mtimes."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from flows.config import load_config
from tests.paths import SCRIPTED_CONFIG

SCRIPTED = SCRIPTED_CONFIG


def scripted(out: str | Path, *overrides: str):
    return load_config(SCRIPTED, list(overrides), output=str(out))


def published_tables(out: str | Path) -> dict:
    """Every published Parquet table of a run (dataset, long table, pairs) by relative path."""
    out = Path(out)
    files = sorted(p for d in ("dataset", "dataset_long", "preferences") for p in (out / d).rglob("*.parquet"))
    return {str(p.relative_to(out)): pq.read_table(p) for p in files}


def shard_mtimes(out: str | Path, stage: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (Path(out) / stage).glob("*.parquet")}


def expected_requests(cfg, rows: int) -> dict[str, int]:
    """Requests one instruction shard of `rows` rows costs: k completions; one judge call per
    aspect plus one critique per completion."""
    k = cfg.generation.k
    return {"generate": rows * k, "rate": rows * (len(cfg.rating.aspects) + (k if cfg.rating.critique else 0))}
