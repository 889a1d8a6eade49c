"""Fixtures of the audit tests: a run built from real answers, rated by a planted judge.

The run's instructions and completions are HelpSteer's own prompts and responses (the
bundled sample, data/human_labels/helpsteer): the prompts that have four responses, each
response credited to one of four pool models in order. The first model plays the judge's
own model; its answers carry its name as the scripted generator writes it (`[name] ...`),
which is how the planted self-preferring judge recognises them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from storage.keys import prompt_id
from storage.schemas import to_table
from tasks.audit.config import BUILTIN_PATHS, AuditConfig
from tasks.backends.journal import Journal
from tasks.rating.config import JudgeEndpoint, RatingConfig
from tasks.rating.scripted_faults import FaultyJudge
from tasks.rating.stage import rate_shard

MODELS = ["judge-model", "model-b", "model-c", "model-d"]
SELF = MODELS[0]
MARKER = f"[{SELF}]"
ASPECTS = ["helpfulness", "instruction_following"]


def helpsteer_tables() -> tuple[pa.Table, pa.Table]:
    groups: dict[str, list[str]] = {}
    with open(BUILTIN_PATHS["helpsteer"], encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            groups.setdefault(r["prompt"], []).append(r["response"])
    ins, comps = [], []
    for row, (prompt, responses) in enumerate(groups.items()):
        if len(responses) != 4:
            continue
        pid = prompt_id(prompt)
        ins.append({"prompt_id": pid, "source": "helpsteer", "source_format": "jsonl", "instruction": prompt,
                    "correct_answers": [], "incorrect_answers": [], "reference_answer": None, "false_premise": None,
                    "task": None, "source_file": "nvidia_HelpSteer_sample.jsonl", "source_row": row})
        for i, (model, text) in enumerate(zip(MODELS, responses)):
            comps.append({"prompt_id": pid, "completion_index": i, "model": model, "principle": "helpfulness",
                          "system_prompt": "", "response": f"{MARKER} {text}" if model == SELF else text,
                          "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.0,
                          "backend": "helpsteer", "request_id": f"gen-{pid[:8]}-{i}", "error": None})
    return to_table(ins, "instructions"), to_table(comps, "completions")


def rating_config(mode: str = "structured", **script) -> RatingConfig:
    eps = [JudgeEndpoint(name="judge", kind="scripted", model=SELF, answer_mode=mode, script=script or {}),
           JudgeEndpoint(name="second", kind="scripted", model="second-judge", answer_mode=mode,
                         script={"fault": "fair"})]
    return RatingConfig(endpoints=eps, judge="judge", aspects=ASPECTS, critique=False)


@pytest.fixture(scope="session")
def run_tables():
    return helpsteer_tables()


def rated(run_tables, tmp_path: Path, fault: str, mode: str = "structured", **opts):
    """(instructions, completions, ratings, RatingConfig) rated by the planted judge."""
    ins, comps = run_tables
    script = {"fault": fault, **opts}
    cfg = rating_config(mode, **script)
    table, _ = rate_shard(ins, comps, cfg, 7, FaultyJudge(**script), Journal(tmp_path / f"rate-{fault}.jsonl"))
    return ins, comps, table, cfg


def audit_config(**kw) -> AuditConfig:
    return AuditConfig(enabled=True, sample=kw.pop("sample", 60), bootstrap=kw.pop("bootstrap", 400), **kw)
