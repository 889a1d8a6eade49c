"""Configuration of the instruction sources and of the sampling stage.

Inputs: the `sources` and `sampling` sections of the run config. Outputs: validated
pydantic models; errors name the field.
"""
from __future__ import annotations

import glob
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Format = Literal[
    "truthful_qa", "false_qa", "flan", "sharegpt", "ultrachat", "evol_instruct", "jsonl", "csv", "parquet",
]


class SourceConfig(BaseModel):
    """One instruction source: its files, format and how many rows to draw."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]+$", description="Source label written to the dataset (e.g. truthful_qa)")
    format: Format
    path: Union[str, list[str]] = Field(description="File, glob or list of files (local or fsspec URL)")
    quota: Union[int, Literal["all"]] = Field("all", description="Rows to draw, or 'all'")
    instruction_column: str | None = Field(None, description="Instruction column for jsonl/csv/parquet")
    id_column: str | None = Field(None, description="Optional id column for jsonl/csv/parquet")
    # FLAN per-task stratified part (the chain-of-thought files in `path` use `quota`).
    task_path: Union[str, list[str], None] = Field(
        None, description="FLAN per-task files: TSV (one task per file) or jsonl/csv/parquet with task,inputs,targets")
    per_task: int | None = Field(None, ge=1, description="FLAN: rows drawn from each task of task_path")
    expected_rows: int | None = Field(
        None, ge=0, exclude=True,  # not part of any cache key: the sample stage never reads it
        description="For `ultrafeedback plan` only: rows this source is expected to yield where the "
        "count depends on its files (quota 'all', per_task); the sample stage ignores it")

    @model_validator(mode="after")
    def _check(self) -> "SourceConfig":
        if isinstance(self.quota, int) and self.quota < 0:
            raise ValueError("quota must be >= 0 or 'all'")
        if self.format in ("jsonl", "csv", "parquet") and not self.instruction_column:
            raise ValueError(f"format {self.format} needs instruction_column")
        if (self.task_path is None) != (self.per_task is None):
            raise ValueError("task_path and per_task go together")
        if self.task_path is not None and self.format != "flan":
            raise ValueError("task_path/per_task are only for format flan")
        return self

    @staticmethod
    def _expand(spec: Union[str, list[str], None]) -> list[str]:
        if spec is None:
            return []
        out: list[str] = []
        for item in [spec] if isinstance(spec, str) else spec:
            hits = sorted(glob.glob(item)) if ("*" in item and "://" not in item) else [item]
            out.extend(hits or [item])
        return out

    def files(self) -> list[str]:
        return self._expand(self.path)

    def task_files(self) -> list[str]:
        return self._expand(self.task_path)

    def all_paths(self) -> list[str]:
        return self.files() + self.task_files()

    @property
    def principle_source(self) -> str:
        """Which row of the reference's principle table applies to this source."""
        return self.format if self.format not in ("jsonl", "csv", "parquet") else "generic"


class EvalFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    format: Literal["jsonl", "csv", "parquet", "truthful_qa", "text"] = "jsonl"
    column: str | None = Field(None, description="Text column (jsonl/csv/parquet)")


class Decontamination(BaseModel):
    model_config = ConfigDict(extra="forbid")
    truthful_qa_exact: bool = Field(True, description="Drop prompts of other sources equal to a TruthfulQA question")
    ngram: int = Field(13, ge=3, le=64, description="n of the n-gram overlap check")
    eval_files: list[EvalFile] = Field(default_factory=list, description="Evaluation sets to decontaminate against")


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_chars: int = Field(1, ge=1, description="Shorter (after stripping) instructions are dropped")
    max_chars: int = Field(8000, ge=1, description="Longer instructions are dropped (counted)")
    dedup: bool = Field(True, description="Drop duplicates on a normalized-text hash, within and across sources")
    given_prompt_filter: bool = Field(True, description="Drop Evol-Instruct rows that refer to a missing 'given prompt'")
    decontamination: Decontamination = Field(default_factory=Decontamination)
