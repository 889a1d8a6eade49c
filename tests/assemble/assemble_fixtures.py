"""Build stage tables (INSTRUCTIONS, COMPLETIONS, RATINGS) for the assemble tests.

Prompt texts come from the bundled real source samples; completions and ratings are
written by the tests so every binarization case can be stated exactly.

`build(prompts, plan)`: plan[i][j] describes completion j of prompt i as a dict:
  aspect -> 1..5 | "N/A" | None (unparsed) ; "critique" -> 1..10 | None ;
  an aspect absent from the dict has no rating row at all ("missing");
  "response" -> text or None (failed generation); "model" -> name.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa

from storage.keys import prompt_id
from storage.schemas import to_table

DATA = Path(__file__).resolve().parents[2] / "data" / "sources"
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
MODELS = ("llama-2-7b-chat", "vicuna-33b", "mpt-30b-chat", "falcon-40b-instruct")


def truthfulqa_rows(n: int) -> list[dict]:
    with open(DATA / "truthfulqa" / "TruthfulQA.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:n]
    return [{"source": "truthful_qa", "source_format": "truthful_qa", "instruction": r["Question"],
             "correct_answers": [a.strip() for a in r["Correct Answers"].split(";")],
             "incorrect_answers": [a.strip() for a in r["Incorrect Answers"].split(";")]} for r in rows]


def truthfulqa_questions() -> list[str]:
    with open(DATA / "truthfulqa" / "TruthfulQA.csv", newline="", encoding="utf-8") as fh:
        return [r["Question"] for r in csv.DictReader(fh)]


def evol_rows(n: int) -> list[dict]:
    out = []
    with open(DATA / "evol_instruct" / "WizardLM_testset.jsonl", encoding="utf-8") as fh:
        for line in fh:
            out.append({"source": "evol_instruct", "source_format": "evol_instruct",
                        "instruction": json.loads(line)["Instruction"], "correct_answers": [], "incorrect_answers": []})
            if len(out) == n:
                break
    return out


def ultrachat_rows(n: int) -> list[dict]:
    data = json.loads((DATA / "ultrachat" / "ultra_eval.json").read_text(encoding="utf-8"))[:n]
    return [{"source": "ultrachat", "source_format": "ultrachat", "instruction": d["data"],
             "correct_answers": [], "incorrect_answers": []} for d in data]


def instruction_records(prompts: list[dict]) -> list[dict]:
    return [{
        "prompt_id": prompt_id(p["instruction"]), "source": p["source"], "source_format": p["source_format"],
        "instruction": p["instruction"], "correct_answers": p["correct_answers"],
        "incorrect_answers": p["incorrect_answers"], "reference_answer": None, "false_premise": None,
        "task": None, "source_file": f"{p['source']}.data", "source_row": i,
    } for i, p in enumerate(prompts)]


def _rating_row(pid: str, j: int, model: str, aspect: str, value, call: str) -> dict:
    na = value == "N/A"
    status = "na" if na else ("unparsed" if value is None else "ok")
    return {
        "prompt_id": pid, "completion_index": j, "model": model, "aspect": aspect,
        "rating": None if (na or value is None) else float(value), "rating_na": na,
        "types": ["1"] if aspect in ("truthfulness", "helpfulness") and status == "ok" else None,
        "rationale": f"{aspect} rationale for completion {j}" if status != "unparsed" else None,
        "rationale_for_rating": f"why {value}" if aspect in ("truthfulness", "helpfulness") else None,
        "raw_text": f"Rating: {value}", "parse_status": status,
        "parse_reason": "no rating line" if status == "unparsed" else None,
        "permutation": [0, 1, 2, 3], "judge_model": "gpt-4", "prompt_tokens": 900, "completion_tokens": 300,
        "cost_usd": 0.045, "request_id": call,
    }


def build(prompts: list[dict], plan: list[list[dict]]) -> tuple[pa.Table, pa.Table, pa.Table]:
    ins = instruction_records(prompts)
    comps, rates = [], []
    for rec, row_plan in zip(ins, plan):
        pid = rec["prompt_id"]
        for j, spec in enumerate(row_plan):
            model = spec.get("model", MODELS[j % len(MODELS)])
            response = spec.get("response", f"Answer {j} by {model} to: {rec['instruction'][:40]}")
            comps.append({
                "prompt_id": pid, "completion_index": j, "model": model, "principle": spec.get("principle", "helpfulness"),
                "system_prompt": "Be helpful.", "response": response,
                "finish_reason": "stop" if response is not None else None,
                "prompt_tokens": 50, "completion_tokens": 120 if response is not None else None,
                "latency_s": 1.5, "backend": "scripted", "request_id": f"gen-{pid[:8]}-{j}",
                "error": None if response is not None else "engine died",
            })
            for aspect in (*ASPECTS, "critique"):
                if aspect in spec:
                    call = f"rate-{pid[:8]}-{aspect}" if aspect != "critique" else f"crit-{pid[:8]}-{j}"
                    rates.append(_rating_row(pid, j, model, aspect, spec[aspect], call))
    return to_table(ins, "instructions"), to_table(comps, "completions"), to_table(rates, "ratings")


def full(scores: list[float], critique: int | None = 7) -> list[dict]:
    """Completions with every aspect rated `score` (one per completion) and a critique."""
    return [{**{a: s for a in ASPECTS}, "critique": critique} for s in scores]


POOL = ("llama-2-7b-chat", "vicuna-33b", "mpt-30b-chat", "falcon-40b-instruct", "alpaca-7b", "wizardlm-13b")


def realistic(seed: int = 1, n_evol: int = 20, n_ultrachat: int = 15, n_tqa: int = 10):
    """A run-shaped set of tables: 4 of 6 models per prompt, model quality graded by pool
    position, ~10% N/A honesty, ~3% unreadable ratings, one failed generation per 50."""
    import random

    rng = random.Random(seed)
    prompts = evol_rows(n_evol) + ultrachat_rows(n_ultrachat) + truthfulqa_rows(n_tqa)
    plan = []
    for _ in prompts:
        row = []
        for m in rng.sample(POOL, 4):
            q = POOL.index(m)
            spec = {"model": m, "principle": rng.choice(["helpfulness", "honesty", "truthfulness"])}
            if rng.random() < 0.02:
                spec["response"] = None
                row.append(spec)
                continue
            for a in ASPECTS:
                r = rng.random()
                spec[a] = "N/A" if (a == "honesty" and r < 0.1) else (
                    None if r > 0.97 else max(1, min(5, round(rng.gauss(4.5 - q * 0.5, 1)))))
            spec["critique"] = max(1, min(10, round(rng.gauss(8 - q, 1.5))))
            row.append(spec)
        plan.append(row)
    return build(prompts, plan)
