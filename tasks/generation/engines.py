"""From pool entries to running backends.

Inputs: the generation config's pool and a log folder. Outputs: `EngineGroup`s (pool
entries that can share one engine) and `open_backend(group, log_dir)`, a Backend for it,
built by the factory `BACKENDS` registers for the group's serve mode.

Entries that differ only in sampling settings share one engine: a demo pool that lists
the same small model under four sampling settings starts vLLM once, with every entry's
name registered as a served-model name. Other modes get one backend per entry. An entry
with `replicas: N` (vllm_server) gets N servers behind one ReplicatedBackend.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from storage.keys import stable_hash
from tasks.backends.engine_settings import EngineSettings
from tasks.errors import InputError
from tasks.generation.config import GenerationConfig, ModelEntry, resolve_model

VLLM_MODES = ("vllm_server", "vllm_batch")


@dataclass(frozen=True)
class EngineGroup:
    engine_id: str
    entries: tuple[ModelEntry, ...]

    @property
    def serve(self) -> str:
        return self.entries[0].serve

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]


def _engine_identity(entry: ModelEntry) -> str:
    if entry.serve not in VLLM_MODES:
        return f"{entry.serve}:{entry.name}"
    same = entry.model_dump(include={"serve", "model", "tensor_parallel_size", "replicas", "dtype", "max_model_len",
                                     "chat_template", "engine"})
    return f"{entry.serve}:{stable_hash(same, resolve_model(entry.model))}"


def engine_groups(cfg: GenerationConfig) -> list[EngineGroup]:
    """Pool entries grouped by the engine they can share, in pool order."""
    groups: dict[str, list[ModelEntry]] = {}
    for entry in cfg.models:
        groups.setdefault(_engine_identity(entry), []).append(entry)
    out = []
    for entries in groups.values():
        engine_id = entries[0].name if len(entries) == 1 else f"{entries[0].name}+{len(entries) - 1}"
        out.append(EngineGroup(engine_id, tuple(entries)))
    return out


def api_key(entry: ModelEntry, field: str) -> str | None:
    if not entry.api_key_env:
        return None
    value = os.environ.get(entry.api_key_env)
    if not value:
        raise InputError(f"{field}.api_key_env: environment variable {entry.api_key_env} is not set")
    return value


def _batch_backend(first, engine_id: str, output_root: str, field: str):
    """serve openai + mode batch: the provider's Batch API behind a request journal, so a
    rerun pays only for requests that never got an answer (generation has no other record)."""
    from tasks.backends.batch_state import state_path
    from tasks.backends.journal import Journal, JournaledBackend, journal_path
    from tasks.backends.openai_batch import batch_backend, openai_client

    journal = Journal(journal_path(output_root, engine_id, stage="generate"))
    client = openai_client("openai_compatible", first.base_url, api_key(first, field), timeout_s=first.request_timeout_s)
    inner = batch_backend(client, first.name, first.batch, state_path(journal.path))
    return JournaledBackend(inner, journal)


def _scripted(group: EngineGroup, log_dir: str, field: str, output_root: str | None):
    from tasks.backends.scripted import ScriptedBackend

    return ScriptedBackend(group.engine_id, **group.entries[0].script)


def _openai(group: EngineGroup, log_dir: str, field: str, output_root: str | None):
    first = group.entries[0]
    if first.mode == "batch":
        return _batch_backend(first, group.engine_id, output_root or log_dir, field)
    from tasks.backends.openai_http import OpenAIHTTPBackend

    gate = None
    if first.shared_limit is not None:
        from tasks.backends.shared_limit import open_gate

        gate = open_gate(first.shared_limit)
    return OpenAIHTTPBackend(first.name, first.base_url, api_key(first, field), key_env=first.api_key_env,
                             model=first.model, rpm=first.rpm, tpm=first.tpm, max_concurrency=first.concurrency,
                             learn_limits=first.learn_limits, policy=_policy(first), limit_key=first.limit_group,
                             shared_gate=gate)


def _policy(first: ModelEntry):
    return first.retry.policy(first.request_timeout_s, first.max_rate_limit_wait_s)


def _engine_args(group: EngineGroup, log_dir: str) -> dict:
    """The vLLM arguments every entry of the group shares (one engine serves all their names)."""
    first = group.entries[0]
    return dict(
        name=group.engine_id, python=first.engine.interpreter(), model=resolve_model(first.model),
        served_names=list(dict.fromkeys(e.request_model for e in group.entries)), log_dir=first.engine.log_dir or log_dir,
        tensor_parallel_size=first.tensor_parallel_size, dtype=first.dtype, max_model_len=first.max_model_len,
        chat_template=resolve_model(first.chat_template) if first.chat_template else None,
        enforce_eager=first.engine.enforce_eager, extra_args=first.engine.extra_args, env=first.engine.env,
        stop_timeout_s=first.engine.stop_timeout_s,
    )


def _server_args(group: EngineGroup, log_dir: str) -> dict:
    first = group.entries[0]
    return dict(_engine_args(group, log_dir), startup_timeout_s=first.engine.startup_timeout_s,
                concurrency=max(e.concurrency for e in group.entries), request_timeout_s=first.request_timeout_s,
                policy=_policy(first))


def planned_engine(engine: EngineSettings, replicas: int, gpu_ids, pin: bool) -> EngineSettings:
    """The engine settings with a GPU plan's replicas as `--data-parallel-size` and, with
    `pin`, its GPUs as CUDA_VISIBLE_DEVICES (what the config sets itself wins)."""
    args, env = list(engine.extra_args), dict(engine.env)
    if replicas > 1 and "--data-parallel-size" not in args:
        args += ["--data-parallel-size", str(replicas)]
    if pin and gpu_ids and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
    return engine.model_copy(update={"extra_args": args, "env": env})


def with_engine(group: EngineGroup, engine: EngineSettings) -> EngineGroup:
    return EngineGroup(group.engine_id, tuple(e.model_copy(update={"engine": engine}) for e in group.entries))


def launch_server(group: EngineGroup, log_dir: str, name: str, gpu_ids, replicas: int, pin: bool):
    """One launched vLLM server (not yet started) of a vllm_server group on planned GPUs."""
    from tasks.backends.vllm_server import VLLMServerBackend

    planned = with_engine(group, planned_engine(group.entries[0].engine, replicas, gpu_ids, pin))
    return VLLMServerBackend(**dict(_server_args(planned, log_dir), name=name))


def _vllm_server(group: EngineGroup, log_dir: str, field: str, output_root: str | None):
    from tasks.backends.vllm_server import VLLMServerBackend

    first = group.entries[0]
    server = _server_args(group, log_dir)
    if first.replicas == 1:
        return VLLMServerBackend(**server)
    from tasks.backends.replicas import ReplicatedBackend

    return ReplicatedBackend(group.engine_id, [VLLMServerBackend(**dict(server, name=f"{group.engine_id}-r{i}"))
                                               for i in range(first.replicas)])


def _vllm_batch(group: EngineGroup, log_dir: str, field: str, output_root: str | None):
    from tasks.backends.vllm_batch import VLLMBatchBackend

    first = group.entries[0]
    return VLLMBatchBackend(**_engine_args(group, log_dir), run_timeout_s=first.engine.run_timeout_s,
                            runner=first.engine.batch_runner)


# serve mode -> factory(group, log_dir, field, output_root); a new serve mode is one entry here.
BACKENDS: dict[str, Callable] = {
    "scripted": _scripted,
    "openai": _openai,
    "vllm_server": _vllm_server,
    "vllm_batch": _vllm_batch,
}


def open_backend(group: EngineGroup, log_dir: str, field: str = "generation.models", output_root: str | None = None):
    """A Backend (not yet entered) for the group (`output_root`: where batch mode journals)."""
    return BACKENDS[group.serve](group, log_dir, field, output_root)
