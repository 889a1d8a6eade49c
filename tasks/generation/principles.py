"""Principles: the per-source distribution and the system-prompt pools.

Inputs: `system_prompts.yaml` beside this module (our own prompt texts) and, optionally,
an override table from `generation.principles`. Outputs: `PRINCIPLE_TABLE` (source row -> principle
-> share), `system_prompts()` (principle -> list of prompts), `table_row(source_format)`.

The default table is the original code's behaviour (reference, section 2). Sources read
from generic jsonl/csv/parquet files use the "generic" row, which equals ShareGPT's.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

PRINCIPLES = ("helpfulness", "honesty", "truthfulness", "harmlessness", "verbalized_calibration")

_CHAT = {"helpfulness": 0.60, "truthfulness": 0.20, "honesty": 0.18, "verbalized_calibration": 0.02}
_QA = {"truthfulness": 0.50, "honesty": 0.45, "verbalized_calibration": 0.05}

PRINCIPLE_TABLE: dict[str, dict[str, float]] = {
    "evol_instruct": {"helpfulness": 1.0},
    "sharegpt": dict(_CHAT),
    "ultrachat": dict(_CHAT),
    "flan": {"helpfulness": 0.80, "verbalized_calibration": 0.20},
    "truthful_qa": dict(_QA),
    "false_qa": dict(_QA),
    "generic": dict(_CHAT),
}

GENERIC_FORMATS = ("jsonl", "csv", "parquet")


def table_row(source_format: str) -> str:
    """The row of the principle table that a source format uses."""
    return "generic" if source_format in GENERIC_FORMATS else source_format


def validate_table(table: dict[str, dict[str, float]]) -> None:
    """Raise ValueError naming the row or principle that cannot be drawn from."""
    pools = system_prompts()
    for row, shares in table.items():
        if not shares:
            raise ValueError(f"principles.{row}: empty distribution")
        for principle, weight in shares.items():
            if principle not in pools:
                raise ValueError(f"principles.{row}.{principle}: unknown principle, known: {sorted(pools)}")
            if weight < 0:
                raise ValueError(f"principles.{row}.{principle}: negative weight {weight}")
        if sum(shares.values()) <= 0:
            raise ValueError(f"principles.{row}: weights sum to zero")


def effective_table(override: dict[str, dict[str, float]] | None) -> dict[str, dict[str, float]]:
    """The default table with the configured rows replaced."""
    return {**PRINCIPLE_TABLE, **(override or {})}


@lru_cache(maxsize=1)
def system_prompts() -> dict[str, tuple[str, ...]]:
    """Principle -> its pool of system prompts (read once from the packaged YAML)."""
    text = resources.files("tasks.generation").joinpath("system_prompts.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    pools = {name: tuple(str(p).strip() for p in prompts) for name, prompts in raw.items()}
    unknown = sorted(set(pools) - set(PRINCIPLES))
    if unknown:
        raise ValueError(f"system_prompts.yaml: unknown principles {unknown}")
    return pools
