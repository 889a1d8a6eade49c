"""Assemble/publish configuration (the `publish` section of the run config).

Inputs: the `publish` mapping of the run config. Output: a validated `PublishConfig`;
every error names the field (`publish.pairs.h4.score: ...`).

Each pair set has its own rule, score and layout, so H4-faithful and Argilla-faithful
pairs come from one run. A rule is a name in tasks.assemble.binarize.RULES (more rules can
be registered there, e.g. by tasks.assemble.pair_rules).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Score = Literal["overall", "fine_grained", "instruction_following", "honesty", "truthfulness", "helpfulness"]
Layout = Literal["h4", "argilla", "trl"]
Rule = Literal["tulu3", "delta"]


class PairRuleSet(BaseModel):
    """One extra pair set, written to preferences/<name>/train-*.parquet."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_\-]+$", description="Folder and card name of the set")
    rule: Rule = Field(description="tulu3 (mean of aspects, rejected strictly lower) | delta (stronger vs weaker model)")
    min_margin: float = Field(0.0, ge=0, le=4, description="tulu3: least mean difference between chosen and rejected")
    stronger: str | None = Field(None, description="delta: pool entry whose answers are chosen")
    weaker: str | None = Field(None, description="delta: pool entry whose answers are rejected")
    on_policy: bool = Field(False, description="Keep only pairs with the policy entry (generation.models[].policy) on "
                            "exactly one side; the side is recorded")

    @model_validator(mode="after")
    def _rule_fields(self) -> "PairRuleSet":
        if self.rule == "delta":
            if not self.stronger or not self.weaker:
                raise ValueError("stronger and weaker: required for rule delta")
            if self.stronger == self.weaker:
                raise ValueError("stronger and weaker: must name two different models")
        elif self.stronger or self.weaker:
            raise ValueError("stronger / weaker: only for rule delta")
        return self

    @property
    def needs_judge(self) -> bool:
        return self.rule != "delta"


# Splits each layout writes (H4's six; Argilla's one; TRL train/test).
LAYOUT_SPLITS: dict[str, tuple[str, ...]] = {
    "h4": ("train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen"),
    "argilla": ("train",),
    "trl": ("train", "test"),
}
LAYOUT_SCHEMA = {"h4": "preferences_h4", "argilla": "preferences_argilla", "trl": "preferences_trl"}


class PairSet(BaseModel):
    """One published pair set: which completions pair up (rule), ranked by what (score),
    written how (layout: its columns and splits)."""

    model_config = ConfigDict(extra="forbid")

    rule: str = Field(description="best_vs_random (H4: best vs a random other, ties kept), best_vs_lower "
                      "(Argilla: best vs a random strictly lower one, ties dropped), all_pairs (every strictly "
                      "ordered pair), or a rule registered in tasks.assemble.binarize.RULES")
    score: Score = Field(description="Score that ranks the completions: overall (the critique's 1-10), fine_grained "
                         "(mean of the aspect ratings that are not N/A) or one aspect's rating")
    layout: Layout = Field(description="h4 (HuggingFaceH4/ultrafeedback_binarized columns and six splits), argilla "
                           "(argilla/ultrafeedback-binarized-preferences-cleaned columns, train only) or trl "
                           "(TRL's explicit-prompt conversational format, train/test)")

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, rule: str) -> str:
        from tasks.assemble.binarize import known_rules

        if rule not in known_rules():
            raise ValueError(f"unknown rule {rule!r}; known: {sorted(known_rules())}")
        return rule


def default_pairs() -> dict[str, PairSet]:
    return {
        "h4": PairSet(rule="best_vs_random", score="overall", layout="h4"),
        "argilla": PairSet(rule="best_vs_lower", score="fine_grained", layout="argilla"),
        "trl": PairSet(rule="best_vs_random", score="fine_grained", layout="trl"),
        "all_pairs": PairSet(rule="all_pairs", score="fine_grained", layout="trl"),
    }


class PublishConfig(BaseModel):
    """How the dataset, the preference pairs, the card and the report are made."""

    model_config = ConfigDict(extra="forbid")

    pairs: dict[str, PairSet] = Field(
        default_factory=default_pairs,
        description="Pair sets by name (written to preferences/<name>/); each has its own rule, score and layout. "
                    "Default: h4 (overall_score, as HuggingFaceH4), argilla (mean aspect rating, as Argilla), trl "
                    "and all_pairs (mean aspect rating, TRL layout)")
    seed: int | None = Field(None, description="Seed of the rejected-completion draw and the train/test split; "
                             "empty = the run's seed")
    test_size: int = Field(2000, ge=0, description="Prompts in the test splits (2,000 in H4's release)")
    max_test_fraction: float = Field(
        0.2, gt=0, le=1, description="Upper bound on the test split as a fraction of the prompts, so a small "
        "run still has a train split")
    drop_truthful_qa: bool = Field(
        True, description="Leave out of the pairs the truthful_qa source and prompts equal to a TruthfulQA question")
    truthfulqa_file: str | None = Field(
        None, description="TruthfulQA CSV (column Question) whose questions are removed from the pairs even when "
        "the run did not sample TruthfulQA")
    shard_rows: int = Field(50_000, ge=1, description="Rows per output Parquet file")
    plots: bool = Field(True, description="Render the quality report's PNG plots")
    pair_rules: list[PairRuleSet] = Field(default_factory=list, description="Extra pair sets by rule (tulu3, delta; "
                                          "optionally on-policy), each in preferences/<name>/")

    @field_validator("pair_rules")
    @classmethod
    def _unique_sets(cls, v: list[PairRuleSet]) -> list[PairRuleSet]:
        names = [s.name for s in v]
        clash = sorted({n for n in names if names.count(n) > 1} | (set(default_pairs()) & set(names)))
        if clash:
            raise ValueError(f"pair set names repeated or taken by the built-in sets: {clash}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_position_bias(cls, raw):
        """Assemble sends no judge request: the position-bias re-rating is the judge audit's
        position probe now, run after the rate stage on its own shards."""
        if isinstance(raw, dict) and {"position_bias", "position_bias_sample"} & set(raw):
            raise ValueError("publish.position_bias: removed; assemble sends no judge request. Set audit.enabled: "
                             "true (the judge audit's position probe re-rates a sample with the order reversed)")
        return raw

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, raw):
        """Configs written before pair sets had their own score: `score` ranked every set and
        `all_pairs: false` left that set out. They map onto `pairs` (h4 keeps overall_score,
        its release's score)."""
        if not isinstance(raw, dict) or not ({"score", "all_pairs"} & set(raw)):
            return raw
        raw = dict(raw)
        score, keep_all = raw.pop("score", None), raw.pop("all_pairs", True)
        if "pairs" not in raw:
            pairs = {n: ps.model_dump() for n, ps in default_pairs().items()}
            for name in ("argilla", "trl", "all_pairs"):
                pairs[name]["score"] = score or pairs[name]["score"]
            if not keep_all:
                pairs.pop("all_pairs")
            raw["pairs"] = pairs
        return raw

    @field_validator("pairs")
    @classmethod
    def _names(cls, pairs: dict[str, PairSet]) -> dict[str, PairSet]:
        import re

        bad = [n for n in pairs if not re.fullmatch(r"[a-z0-9_]+", n)]
        if bad:
            raise ValueError(f"pair set names are folder names (a-z, 0-9, _), got {bad}")
        return pairs

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
