"""Judge audit configuration (the `audit` section of the run config); off by default.

Inputs: the `audit` mapping. Output: a validated `AuditConfig`; errors name the field
(`audit.human_sets.0.format: ...`). Which endpoint is the second judge is checked against
`rating.endpoints` by the run config, which knows both sections.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.rating.protocol import ASPECTS

Aspect = Literal["instruction_following", "honesty", "truthfulness", "helpfulness"]
HumanFormat = Literal["helpsteer", "pandalm", "table"]

# The human sets the project ships (data/human_labels/, see data/README.md).
HUMAN_DIR = Path(__file__).resolve().parents[2] / "data" / "human_labels"
BUILTIN_PATHS = {
    "helpsteer": HUMAN_DIR / "helpsteer" / "nvidia_HelpSteer_sample.jsonl",
    "pandalm": HUMAN_DIR / "pandalm" / "testset-v1.json",
}
PANDALM_GPT35 = HUMAN_DIR / "pandalm" / "gpt-3.5-turbo-testset-v1.json"


class HumanSet(BaseModel):
    """A human-labelled set the judge rates. `table`: a CSV/JSONL/Parquet file with columns
    prompt, response[, response_b], label (pairwise when response_b is present)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_\-]+$", description="Label of the set in the card and the shard ids")
    format: HumanFormat = Field(description="helpsteer (pointwise 0-4) | pandalm (pairwise, 3 annotators) | table")
    path: str | None = Field(None, description="The file; default for helpsteer and pandalm: the bundled sample")
    sample: int = Field(100, ge=1, le=100_000, description="Rows drawn (seeded) from the set")
    aspect: Aspect = Field("helpfulness", description="table, pointwise: the aspect the label measures")
    scale: tuple[float, float] = Field((1.0, 5.0), description="table, pointwise: the label's (lowest, highest) "
                                       "value; mapped linearly onto the judge's 1-5")
    pairwise_aspects: list[Aspect] = Field(default_factory=lambda: ["helpfulness"], min_length=1,
                                           description="pairwise: aspects rated; the preference is the higher mean")

    @model_validator(mode="after")
    def _path(self) -> "HumanSet":
        if self.path is None:
            if self.format == "table":
                raise ValueError("path: required for format table")
            self.path = str(BUILTIN_PATHS[self.format])
        if self.scale[1] <= self.scale[0]:
            raise ValueError("scale: highest must exceed lowest")
        return self


class AuditConfig(BaseModel):
    """What the judge audit measures, on how much, at what price."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Run the judge audit after the rate stage")
    sample: int = Field(50, ge=1, le=100_000, description="Instructions (seeded draw) in the position, "
                        "verbosity, self-preference and second-judge probes")
    seed: int | None = Field(None, description="Seed of the sample and the bootstrap; empty = the run's seed")
    aspects: list[Aspect] | None = Field(None, description="Aspects audited; empty = the rate stage's")
    position: bool = Field(True, description="Re-ask each sampled aspect call under rotated orders of its texts")
    rotations: int | None = Field(None, ge=1, description="Extra orders per call (rotations of the rate stage's "
                                  "order); empty = all, so every text is shown once at every position")
    second_judge: str | None = Field(None, description="Endpoint (rating.endpoints) that rates the same sample")
    self_model: str | None = Field(None, description="Pool entry that is the judge's own model; empty = the entry "
                                   "whose name or model equals the judge's model, if any")
    human_sets: list[HumanSet] = Field(default_factory=list, description="Human-labelled sets the judge rates")
    bootstrap: int = Field(2000, ge=100, le=100_000, description="Bootstrap resamples (over instructions or rows)")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Interval level")
    disagreements: int = Field(10, ge=0, le=1000, description="Largest judge/second-judge disagreements listed")

    def audited(self, rated: list[str]) -> list[str]:
        return [a for a in (self.aspects or rated) if a in rated and a in ASPECTS]
