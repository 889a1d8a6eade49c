"""The config a run started with, kept beside its shards.

Input: the shard store of a run and its `RunConfig`. Output: `{root}/run_config.json`,
written before any stage runs, and read back by `recorded_config`, so a backfill can
finish a run even when its process died before the manifest was written (an older run
without the file falls back to the config in its manifest).
"""
from __future__ import annotations

from flows.config import RunConfig, validate_config
from storage.shards import ShardStore
from tasks.errors import InputError

CONFIG_FILE = "run_config.json"


def _path(store: ShardStore) -> str:
    return f"{store.base.rstrip('/')}/{CONFIG_FILE}"


def record_config(store: ShardStore, cfg: RunConfig) -> None:
    store.write_json(_path(store), cfg.model_dump(mode="json"))


def recorded_config(store: ShardStore) -> RunConfig:
    """The run's config; InputError when the root holds no run."""
    path = _path(store)
    raw = store.read_json(path) if store.fs.exists(path) else (store.read_manifest() or {}).get("config")
    if not raw:
        raise InputError(f"output: {store.root} holds no run (no {CONFIG_FILE} or manifest.json)")
    return validate_config(raw, origin=f"{store.root}/{CONFIG_FILE}")
