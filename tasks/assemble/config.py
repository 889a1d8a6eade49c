"""Assemble/publish configuration (the `publish` section of the run config).

Inputs: the `publish` mapping of the run config. Output: a validated `PublishConfig`;
every error names the field (`publish.score: ...`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.assemble.pair_rules import PairRuleSet

ASPECT_SCORES = ("instruction_following", "honesty", "truthfulness", "helpfulness")
Score = Literal["overall", "fine_grained", "instruction_following", "honesty", "truthfulness", "helpfulness"]


class PublishConfig(BaseModel):
    """How the dataset, the preference pairs, the card and the report are made."""

    model_config = ConfigDict(extra="forbid")

    score: Score = Field(
        "fine_grained",
        description="Score that ranks completions for the pairs: overall (the critique's 1-10), "
        "fine_grained (mean of the aspect ratings that are not N/A) or one aspect's rating",
    )
    seed: int | None = Field(None, description="Seed of the rejected-completion draw and the train/test split; "
                             "empty = the run's seed")
    test_size: int = Field(2000, ge=0, description="Prompts in the H4 and all-pairs test split (2,000 in the original)")
    max_test_fraction: float = Field(
        0.2, gt=0, le=1, description="Upper bound on the test split as a fraction of the prompts, so a small "
        "run still has a train split")
    all_pairs: bool = Field(True, description="Also write every (better, worse) completion pair of each prompt")
    drop_truthful_qa: bool = Field(
        True, description="Leave out of the pairs the truthful_qa source and prompts equal to a TruthfulQA question")
    truthfulqa_file: str | None = Field(
        None, description="TruthfulQA CSV (column Question) whose questions are removed from the pairs even when "
        "the run did not sample TruthfulQA")
    shard_rows: int = Field(50_000, ge=1, description="Rows per output Parquet file")
    plots: bool = Field(True, description="Render the quality report's PNG plots")
    position_bias: bool = Field(False, description="Re-rate a sample with the completion order reversed")
    position_bias_sample: int = Field(50, ge=1, le=100_000, description="Prompts in the position-bias sample")
    pair_rules: list[PairRuleSet] = Field(default_factory=list, description="Extra pair sets by rule (tulu3, delta; "
                                          "optionally on-policy), each in preferences/<name>/")

    @field_validator("pair_rules")
    @classmethod
    def _unique_sets(cls, v: list[PairRuleSet]) -> list[PairRuleSet]:
        names = [s.name for s in v]
        clash = sorted({n for n in names if names.count(n) > 1} | ({"h4", "argilla", "all_pairs"} & set(names)))
        if clash:
            raise ValueError(f"pair set names repeated or taken by the built-in sets: {clash}")
        return v

    @field_validator("truthfulqa_file")
    @classmethod
    def _csv(cls, path: str | None) -> str | None:
        if path is not None and not path.strip():
            return None
        if path is not None and not path.lower().endswith(".csv"):
            raise ValueError(f"expected a .csv file (TruthfulQA.csv layout), got {path!r}")
        return path

    @property
    def judge_free(self) -> bool:
        """Every configured extra pair set asks no judge (delta): assemble may run without ratings."""
        return bool(self.pair_rules) and not any(r.needs_judge for r in self.pair_rules)

    def test_rows(self, prompts: int) -> int:
        """Prompts in the test split: test_size, capped by max_test_fraction of the prompts."""
        return min(self.test_size, int(prompts * self.max_test_fraction))
