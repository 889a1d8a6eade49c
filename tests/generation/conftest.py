"""Fixtures of the generation tests: instruction shards in a store, scripted pools."""
from __future__ import annotations

import pytest

from storage.keys import prompt_id
from storage.schemas import to_table
from storage.shards import ShardStore
from tasks.generation.config import GenerationConfig

SOURCES = ["truthful_qa", "sharegpt", "evol_instruct", "flan", "ultrachat"]


def instruction_rows(n: int, source: str = "sharegpt", start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        text = f"Question {i} from {source}: explain item {i} in one sentence."
        rows.append({"prompt_id": prompt_id(text), "source": source, "source_format": source, "instruction": text,
                     "correct_answers": [], "incorrect_answers": [], "reference_answer": None,
                     "false_premise": None, "task": None, "source_file": f"{source}.json", "source_row": i})
    return rows


def write_instruction_shards(store: ShardStore, per_shard: int = 3, shards: int = 3):
    refs = []
    for s in range(shards):
        rows = instruction_rows(per_shard, SOURCES[s % len(SOURCES)], start=s * per_shard)
        refs.append(store.write_shard("sample", f"s-{s:05d}", to_table(rows, "instructions"), "instructions", f"k{s}"))
    return refs


def scripted_pool(n: int = 4, k: int = 2, **script) -> GenerationConfig:
    models = [{"name": f"m{i}", "serve": "scripted", "script": dict(script)} for i in range(n)]
    return GenerationConfig.model_validate({"k": k, "models": models})


@pytest.fixture
def store(tmp_path) -> ShardStore:
    return ShardStore(str(tmp_path / "run"))
