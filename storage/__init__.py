"""Parquet schemas and the shard store (local folders and fsspec URLs)."""
from storage.schemas import SCHEMA_VERSION, SCHEMAS, SchemaError, to_table, validate_table
from storage.shards import ShardRef, ShardStore, table_hash

__all__ = ["SCHEMA_VERSION", "SCHEMAS", "SchemaError", "ShardRef", "ShardStore", "table_hash", "to_table", "validate_table"]
