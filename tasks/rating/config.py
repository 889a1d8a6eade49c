"""Rating stage configuration: judge endpoints, sampling, limits, re-asks and prices.

Inputs: the `rating` section of the run config. Outputs: validated pydantic models; every
error names the field (`rating.endpoints.0.api_key_env: ...`).

A secret's value never appears here: an endpoint names the environment variable that holds
its key (`api_key_env`), and `JudgeEndpoint.api_key()` reads it only when a client is built.
The embedded default judge is the local CPU vLLM server in structured mode; its ratings are
well-formed but carry no judgement worth training on (a sub-billion-parameter model).
"""
from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.backends.batch_settings import BatchSettings
from tasks.backends.engine_settings import EngineSettings
from tasks.backends.request_settings import RetrySettings
from tasks.backends.shared_limit import SharedLimit
from tasks.rating.protocol import ASPECTS

Kind = Literal["openai", "azure", "openai_compatible", "local_vllm", "scripted", "anthropic"]
Mode = Literal["realtime", "batch"]
AnswerMode = Literal["text", "structured"]
Aspect = Literal["instruction_following", "honesty", "truthfulness", "helpfulness"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# No default key for openai_compatible: an OpenAI key must never travel to another host unasked.
_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "azure": "AZURE_OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_DEFAULT_URL_ENV = {"openai": "OPENAI_BASE_URL", "azure": "AZURE_OPENAI_ENDPOINT", "anthropic": "ANTHROPIC_BASE_URL"}


class Price(BaseModel):
    """US dollars per one million tokens, realtime (list) and through the provider's Batch API."""

    model_config = ConfigDict(extra="forbid")
    input_per_1m: float = Field(ge=0, description="USD per 1M prompt (input) tokens")
    output_per_1m: float = Field(ge=0, description="USD per 1M completion (output) tokens")
    batch_discount: float = Field(0.5, gt=0, le=1, description="Batch price as a fraction of the list price (OpenAI "
                                  "and Anthropic: 0.5) where batch_input/output_per_1m are not given")
    batch_input_per_1m: float | None = Field(None, ge=0, description="USD per 1M input tokens in batch mode")
    batch_output_per_1m: float | None = Field(None, ge=0, description="USD per 1M output tokens in batch mode")

    def for_mode(self, mode: str) -> "Price":
        """The price that applies in `mode` (realtime: this one; batch: the batch price)."""
        if mode != "batch":
            return self
        return Price(input_per_1m=self.input_per_1m * self.batch_discount if self.batch_input_per_1m is None
                     else self.batch_input_per_1m,
                     output_per_1m=self.output_per_1m * self.batch_discount if self.batch_output_per_1m is None
                     else self.batch_output_per_1m, batch_discount=1.0)


# List prices per 1M tokens as published on openai.com/api/pricing (2024); check them
# before trusting a cost figure, and override `rating.prices` for your contract.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4": Price(input_per_1m=30.0, output_per_1m=60.0),
    "gpt-4-turbo": Price(input_per_1m=10.0, output_per_1m=30.0),
    "gpt-4o": Price(input_per_1m=2.5, output_per_1m=10.0),
    "gpt-4o-mini": Price(input_per_1m=0.15, output_per_1m=0.6),
    # anthropic.com/pricing (2024): Message Batches are also 50% of these.
    "claude-3-5-sonnet-20241022": Price(input_per_1m=3.0, output_per_1m=15.0),
    "claude-3-5-haiku-20241022": Price(input_per_1m=0.8, output_per_1m=4.0),
}


class JudgeEndpoint(BaseModel):
    """One place a judge can be asked: its protocol flavour, model, limits and answer mode."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_\-]+$", description="Label of this endpoint; `rating.judge` picks one by name")
    kind: Kind = Field(description="openai | azure | openai_compatible | local_vllm | scripted")
    model: str = Field(min_length=1, description="Model name sent in each request (Azure: the deployment is used instead)")
    base_url: str | None = Field(None, description="API base URL, e.g. http://127.0.0.1:8000/v1; None: read base_url_env, "
                                 "else the SDK default (local_vllm: the pipeline's own engine server)")
    base_url_env: str | None = Field(None, description="Env var holding the base URL (default OPENAI_BASE_URL for openai, "
                                     "AZURE_OPENAI_ENDPOINT for azure)")
    api_key_env: str | None = Field(None, description="NAME of the env var holding the API key, never the key "
                                    "(default: OPENAI_API_KEY for openai, AZURE_OPENAI_API_KEY for azure, none "
                                    "otherwise)")
    api_version: str | None = Field(None, description="Azure OpenAI API version, e.g. 2024-10-21")
    deployment: str | None = Field(None, description="Azure OpenAI deployment name")
    answer_mode: AnswerMode = Field("structured", description="text: UltraFeedback text format; structured: JSON schema "
                                    "through response_format")
    rpm: int | None = Field(None, ge=1, description="Requests per minute allowed (None: unlimited or learned from headers)")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute allowed (None: unlimited or learned from headers)")
    max_concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight at most (cut on 429s, then recovered); "
                                 "default 64 for openai and azure")
    learn_limits: bool = Field(True, description="Adopt x-ratelimit-limit-requests/-tokens headers when the server sends them")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds")
    max_rate_limit_wait_s: float = Field(600.0, ge=0, description="Longest total wait on 429s for one request before "
                                         "RateLimitedError hands the shard back to the orchestrator")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Per-request retries of transient faults "
                                 "and the circuit breaker")
    limit_group: str | None = Field(None, description="Endpoints (judges, pool entries) that share one rate limit name "
                                    "the same group and share one limiter; default: base URL + model")
    shared_limit: SharedLimit | None = Field(
        None, description="A rate limit shared with every other process that names it (same API key), checked before "
                          "each send; see docs/operations.md")
    # kind local_vllm without base_url: the stage launches this engine itself.
    engine_model: str = Field("{models_dir}/SmolLM2-135M-Instruct", description="local_vllm: model folder the launched "
                              "engine serves (`{models_dir}` expands); served under `model`")
    max_model_len: int | None = Field(8192, ge=256, description="local_vllm: engine context length (the aspect prompt "
                                      "holds all completions of an instruction)")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="local_vllm: how the engine is launched")
    script: dict = Field(default_factory=dict, description="scripted: options of a scripted judge with a planted "
                         "fault (tasks.rating.scripted_faults; tests and demos of the judge audit)")
    mode: Mode = Field("realtime", description="realtime: one HTTP request per call; batch: the provider's Batch API "
                       "(OpenAI/Azure /v1/files + /v1/batches, Anthropic Message Batches) at the batch price")
    batch: BatchSettings = Field(default_factory=BatchSettings, description="mode batch: file limits, polling, resubmits")

    @field_validator("api_key_env", "base_url_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError("expected the NAME of an environment variable (letters, digits, _), not a value")
        return v

    @model_validator(mode="after")
    def _kind_rules(self) -> "JudgeEndpoint":
        if self.kind == "azure":
            if not self.deployment:
                raise ValueError("deployment: required for kind azure")
            if not self.api_version:
                raise ValueError("api_version: required for kind azure")
        if self.mode == "batch" and self.kind not in ("openai", "azure", "openai_compatible", "anthropic"):
            raise ValueError(f"mode: batch needs a provider Batch API (kind openai, azure, openai_compatible or "
                             f"anthropic), not kind {self.kind}")
        if self.kind == "openai_compatible" and not (self.base_url or self.base_url_env):
            raise ValueError("base_url: required for kind openai_compatible (or set base_url_env)")
        # Written out so the run's manifest says which variables were read.
        self.api_key_env = self.api_key_env or _DEFAULT_KEY_ENV.get(self.kind)
        self.base_url_env = self.base_url_env or _DEFAULT_URL_ENV.get(self.kind)
        # Hosted GPT-4-class judges answer in 10-30 s: at 200k TPM the limit is only reached
        # with about rate x latency (~60) requests in flight; the limiter still paces them.
        if "max_concurrency" not in self.model_fields_set and self.kind in ("openai", "azure", "anthropic"):
            self.max_concurrency = 64
        return self

    @property
    def key_env(self) -> str | None:
        return self.api_key_env

    @property
    def url_env(self) -> str | None:
        return self.base_url_env

    @property
    def request_model(self) -> str:
        """The model name that goes into request bodies and request ids."""
        return self.deployment if self.kind == "azure" and self.deployment else self.model

    def api_key(self) -> str | None:
        """The key from the environment, read at call time; never stored or logged."""
        return os.environ.get(self.key_env) if self.key_env else None

    @property
    def launches_engine(self) -> bool:
        """True when the stage must start (and stop) a local vLLM engine for this judge."""
        return self.kind == "local_vllm" and not self.base_url and not (self.url_env and os.environ.get(self.url_env))

    def resolved_base_url(self) -> str | None:
        if self.base_url:
            return self.base_url
        return os.environ.get(self.url_env) if self.url_env else None


def _default_endpoints() -> list[JudgeEndpoint]:
    return [JudgeEndpoint(name="local", kind="local_vllm", model="local-judge", answer_mode="structured",
                          max_concurrency=4, timeout_s=600.0)]


class RatingConfig(BaseModel):
    """What the rate stage asks, of whom, how often, and what it costs."""

    model_config = ConfigDict(extra="forbid")

    endpoints: list[JudgeEndpoint] = Field(default_factory=_default_endpoints, min_length=1,
                                           description="Judge endpoints this config knows; `judge` picks the one used")
    judge: str = Field("local", description="Name of the endpoint that rates this run")
    aspects: list[Aspect] = Field(default_factory=lambda: list(ASPECTS),
                                  description="Aspects rated 1-5, one call per (instruction, aspect)")
    critique: bool = Field(True, description="Also ask one critique (feedback + overall score 1-10) per completion")
    temperature: float = Field(0.0, ge=0, le=2, description="Judge sampling temperature (original: 0)")
    top_p: float = Field(0.6, gt=0, le=1, description="Judge nucleus sampling (original: 0.6)")
    max_tokens: int = Field(1024, ge=64, le=32768, description="Answer cap of an aspect call (original 500 truncated answers)")
    critique_max_tokens: int = Field(1024, ge=64, le=32768, description="Answer cap of a critique call (original: 1024)")
    reasks: int = Field(1, ge=0, le=5, description="Corrective re-asks of an answer that does not parse; then it is "
                        "kept as data with a null rating")
    shuffle: bool = Field(True, description="Shuffle completions per (instruction, aspect) with a seeded permutation")
    prices: dict[str, Price] = Field(default_factory=lambda: dict(DEFAULT_PRICES),
                                     description="USD per 1M input/output tokens, by judge model; unknown models cost null")
    journal_dir: str | None = Field(None, description="Local folder for request journals when the output root is remote "
                                    "(fsspec URL); default <output>/journal/rate")

    @field_validator("aspects")
    @classmethod
    def _unique_aspects(cls, v: list[str]) -> list[str]:
        dup = sorted({a for a in v if v.count(a) > 1})
        if dup:
            raise ValueError(f"aspects repeated: {dup}")
        return v

    @field_validator("endpoints")
    @classmethod
    def _unique_endpoints(cls, v: list[JudgeEndpoint]) -> list[JudgeEndpoint]:
        names = [e.name for e in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"endpoint names repeated: {dup}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "RatingConfig":
        if self.judge not in {e.name for e in self.endpoints}:
            raise ValueError(f"judge: {self.judge!r} names no endpoint (have {[e.name for e in self.endpoints]})")
        if not self.aspects and not self.critique:
            raise ValueError("aspects: empty and critique off, nothing to rate")
        return self

    @property
    def endpoint(self) -> JudgeEndpoint:
        """The endpoint that rates this run."""
        return next(e for e in self.endpoints if e.name == self.judge)

    def price(self, model: str, mode: str = "realtime") -> Price | None:
        """The price of `model` in `mode` (batch: the provider's batch price), None if unpriced."""
        price = self.prices.get(model)
        return price.for_mode(mode) if price is not None else None
