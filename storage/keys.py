"""Deterministic ids and cache keys.

prompt_id = sha256 of the instruction text (the H4 convention); request ids derive from
it; cache keys combine input content hashes, the stage's config and the code version;
Prefect artifact keys are named after the run.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import re
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
def code_version(*modules: ModuleType | str) -> str:
    """Hash of the source of the modules that compute a stage (the task source part of a key).

    A module may be given by its dotted name: its file is then read without importing it, so
    a key does not cost the import of what only a later task needs (the audit's scipy and
    scikit-learn, matplotlib for the plots: about 2 s of CPU at every start of the flow).
    The hash is the same either way.
    """
    src = "".join(_source(m) for m in modules)
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def _source(module: ModuleType | str) -> str:
    if isinstance(module, ModuleType):
        return inspect.getsource(module)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ModuleNotFoundError(f"no Python source for module {module!r}")
    with open(spec.origin, encoding="utf-8") as fh:  # what inspect.getsource returns for a module
        return fh.read()


def artifact_key(run_name: str, suffix: str) -> str:
    """`<run-name-slug>-<suffix>`, the one naming rule for every Prefect artifact of a run:
    keys allow lowercase letters, digits and dashes, and naming them after the run keeps two
    runs on one Prefect server apart."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-") or "ultrafeedback"
    return f"{slug}-{suffix}"


def shard_key(stage: str, inputs: list[str], config: Any, code: str) -> str:
    """Cache key of one shard: its stage, input content hashes, stage config and code."""
    return stable_hash(stage, SCHEMA_VERSION, inputs, config, code, length=32)
