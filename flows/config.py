"""The run configuration: one pydantic model that is also the Prefect flow's parameters.

Inputs: a YAML file (paths inside it are relative to the file), `key=value` overrides
(`sources.0.quota=20`, `generation.k=2`, values parsed as YAML), or a dict from the
Prefect UI form. Output: a validated `RunConfig`. Every error names the field
(`sources.1.quota: ...`) and nothing runs before validation passes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.assemble.config import PublishConfig
from tasks.audit.config import AuditConfig
from tasks.generation.config import GenerationConfig
from tasks.rating.config import RatingConfig
from tasks.sources.config import SamplingConfig, SourceConfig

Stage = Literal["sample", "generate", "rate", "assemble"]
STAGES: tuple[str, ...] = get_args(Stage)  # pipeline order


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field."""


def checked_stages(stages, field: str = "stages") -> list[str]:
    """The asked-for stages in pipeline order; ConfigError naming `field` for an unknown one."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"{field}: unknown {unknown}; choose from {list(STAGES)}")
    return [s for s in STAGES if s in stages]


class RunConfig(BaseModel):
    """Everything one run needs. Shown as the flow's parameter form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("ultrafeedback", description="Run name, recorded in the manifest and dataset card")
    output: str = Field("runs/demo", description="Output root: a local folder or an fsspec URL (s3://, gs://, memory://)")
    seed: int = Field(42, description="Seed of every random draw (sampling, models, principles, splits)")
    shard_size: int = Field(64, ge=1, le=100_000, description="Instructions per shard")
    sources: list[SourceConfig] = Field(min_length=1)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    rating: RatingConfig = Field(default_factory=RatingConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig, description="Judge audit after the rate stage (off by default)")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique, repeated: {dup}")
        return sources

    @model_validator(mode="after")
    def _paths_exist(self) -> "RunConfig":
        for i, src in enumerate(self.sources):
            for j, path in enumerate(src.all_paths()):
                if "://" not in path and not Path(path).exists():
                    raise ValueError(f"sources.{i} ({src.name}): file not found: {path}")
        return self

    @model_validator(mode="after")
    def _audit_names(self) -> "RunConfig":
        a, endpoints = self.audit, [e.name for e in self.rating.endpoints]
        if a.second_judge is not None and a.second_judge not in endpoints:
            raise ValueError(f"audit.second_judge: {a.second_judge!r} names no endpoint of rating.endpoints {endpoints}")
        if a.second_judge is not None and a.second_judge == self.rating.judge:
            raise ValueError("audit.second_judge: names the judge itself; pick another endpoint")
        if a.self_model is not None and a.self_model not in {m.name for m in self.generation.models}:
            raise ValueError(f"audit.self_model: {a.self_model!r} is not a pool entry (generation.models)")
        return self


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        lines.append(f"{loc}: {err['msg']}")
    return "invalid run configuration:\n  " + "\n  ".join(lines)


def _resolve_paths(raw: dict, base: Path) -> dict:
    """Make source and evaluation paths relative to the config file absolute."""
    def fix(p: str) -> str:
        return p if ("://" in p or os.path.isabs(p)) else str((base / p).resolve())

    def fix_any(v):
        return [fix(x) for x in v] if isinstance(v, list) else fix(v) if isinstance(v, str) else v

    for src in raw.get("sources") or []:
        if isinstance(src, dict):
            for key in ("path", "task_path"):
                if key in src:
                    src[key] = fix_any(src[key])
    decon = (raw.get("sampling") or {}).get("decontamination") or {}
    for ev in decon.get("eval_files") or []:
        if isinstance(ev, dict) and "path" in ev:
            ev["path"] = fix(ev["path"])
    publish = raw.get("publish")
    if isinstance(publish, dict) and isinstance(publish.get("truthfulqa_file"), str):
        publish["truthfulqa_file"] = fix(publish["truthfulqa_file"])
    if isinstance(raw.get("output"), str):
        raw["output"] = fix(raw["output"])
    return raw


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `a.b.0.c=value` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"--set {key}: no list item {part!r}") from None
        else:
            node = node.setdefault(part, [] if nxt.isdigit() else {})
    last = parts[-1]
    parsed = yaml.safe_load(value) if value.strip() else ""
    if isinstance(node, list):
        try:
            node[int(last)] = parsed
        except (ValueError, IndexError):
            raise ConfigError(f"--set {key}: no list item {last!r}") from None
    else:
        node[last] = parsed


def read_config(path: Path, overrides: list[str] | None = None, output: str | None = None) -> dict:
    """A config file as data: parsed, overridden, paths made absolute (not yet validated)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for assignment in overrides or []:
        apply_override(raw, assignment)
    if output:
        raw["output"] = output
    return _resolve_paths(raw, path.resolve().parent)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                output: str | None = None) -> RunConfig:
    """Load, override and validate; raises ConfigError naming the field."""
    path = Path(path) if path else default_config_path()
    return validate_config(read_config(path, overrides, output), origin=str(path))


def validate_config(raw: dict | RunConfig, origin: str = "parameters") -> RunConfig:
    if isinstance(raw, RunConfig):
        return raw
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_format_error(exc)}") from None


def default_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
