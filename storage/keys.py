"""Deterministic ids and cache keys.

prompt_id = sha256 of the instruction text (the H4 convention); request ids derive from
it; cache keys combine input content hashes, the stage's config and the code version.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from functools import lru_cache
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from storage.schemas import SCHEMA_VERSION


def prompt_id(instruction: str) -> str:
    return hashlib.sha256(instruction.encode("utf-8")).hexdigest()


def _plain(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Short sha256 of JSON-able parts (pydantic models allowed)."""
    blob = json.dumps([_plain(p) for p in parts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


@lru_cache(maxsize=None)
def code_version(*modules: ModuleType) -> str:
    """Hash of the source of the modules that compute a stage (the task source part of a key)."""
    src = "".join(inspect.getsource(m) for m in modules)
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def shard_key(stage: str, inputs: list[str], config: Any, code: str) -> str:
    """Cache key of one shard: its stage, input content hashes, stage config and code."""
    return stable_hash(stage, SCHEMA_VERSION, inputs, config, code, length=32)
