"""The operations spec (`deployments/ops.yaml`): work pools, concurrency limits, deployments.

Inputs: a YAML file. Output: a validated `OpsSpec`; every error names the field
(`deployments.2.work_pool: ...`). Nothing here talks to a server.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.config import STAGES, ConfigError, Stage

SPEC = Path(__file__).resolve().parent / "ops.yaml"
NAME = r"^[a-z0-9][a-z0-9\-]*$"


class PoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["process"] = Field("process", description="Worker type; process runs flows as local subprocesses")
    description: str = Field("", description="Shown in the UI")
    concurrency_limit: int | None = Field(None, ge=1, description="Flow runs at once in this pool (None: unlimited)")
    env: dict[str, str] = Field(default_factory=dict, description="Environment of every flow run in the pool")


class LimitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(ge=1, description="Slots of this global concurrency limit")
    slot_decay_per_second: float = Field(0.0, ge=0, description="Slots returned per second; > 0 makes it a rate "
                                         "limit usable with prefect.concurrency rate_limit")


class DeploymentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME, description="Deployment name (the flow name is prefixed in the UI)")
    flow: Literal["ultrafeedback", "backfill"] = Field(description="Which flow this deploys")
    stages: list[Stage] | None = Field(
        None, description="ultrafeedback only: the stages this deployment runs (default: all)")
    work_pool: str = Field(description="Work pool whose workers run it; must be listed under work_pools")
    cron: str | None = Field(None, description="Cron schedule (None: run on demand only)")
    timezone: str = Field("UTC", description="Timezone of the cron schedule")
    paused: bool = Field(False, description="Register with the schedule paused")
    description: str = Field("", description="Shown in the UI")
    tags: list[str] = Field(default_factory=list, description="Tags of the deployment and its runs")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from prefect.client.schemas.schedules import CronSchedule

            try:
                CronSchedule(cron=v)
            except ValidationError:
                raise ValueError(f"invalid cron expression {v!r}") from None
        return v

    @model_validator(mode="after")
    def _stages(self) -> "DeploymentSpec":
        if self.flow == "backfill" and self.stages is not None:
            raise ValueError("stages: the backfill flow takes its stages as a run parameter, not here")
        if self.stages is not None and not self.stages:
            raise ValueError("stages: empty; leave it out to run all stages")
        return self

    def run_stages(self) -> list[str]:
        return [s for s in STAGES if s in (self.stages or STAGES)]


class OpsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="Run config whose values become the deployments' parameters")
    work_pools: dict[str, PoolSpec] = Field(min_length=1)
    concurrency_limits: dict[str, LimitSpec] = Field(default_factory=dict)
    deployments: list[DeploymentSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> "OpsSpec":
        for i, d in enumerate(self.deployments):
            if d.work_pool not in self.work_pools:
                raise ValueError(f"deployments.{i}.work_pool: {d.work_pool!r} is not under work_pools "
                                 f"({sorted(self.work_pools)})")
        names = [(d.flow, d.name) for d in self.deployments]
        dup = sorted({f"{f}/{n}" for f, n in names if names.count((f, n)) > 1})
        if dup:
            raise ValueError(f"deployments: repeated {dup}")
        return self


def load_spec(path: str | Path | None = None) -> OpsSpec:
    """Read and validate; `config` becomes an absolute path (relative to the spec file)."""
    path = Path(path or SPEC)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"spec file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(raw, dict) and isinstance(raw.get("config"), str):
        raw["config"] = str((path.resolve().parent / raw["config"]).resolve())
    try:
        return OpsSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: invalid operations spec:\n  " + "\n  ".join(lines)) from None
