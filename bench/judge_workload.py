"""The judge goodput benchmark's workload: real instructions, sized completions, our requests.

Inputs: the bundled instruction samples (UltraChat's evaluation set and the WizardLM test
set under data/sources), a count. Outputs: `instructions` (instruction + four completions,
for clients that render their own UltraFeedback prompts) and `requests` (the exact chat
bodies our rate stage sends: four aspect calls per instruction holding all four completions,
and one critique call per completion, text mode).

Completions are deterministic filler sized like UltraFeedback's (60 to 400 words), since the
benchmark measures how close a client gets to the server's limits, not what a judge says.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from tasks.backends.base import make_request
from tasks.rating import prompts
from tasks.rating.protocol import ASPECTS
from tests.servers.scripted import scripted_words

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "data" / "sources"
SYSTEM = "You are a helpful, honest assistant. Answer accurately and say when you are unsure."
LENGTHS = (60, 150, 250, 400)  # words per completion; one of each per instruction, in a seeded order


def load_instructions(n: int) -> list[str]:
    ultrachat = [r["data"].strip() for r in json.loads((SOURCES / "ultrachat" / "ultra_eval.json").read_text())]
    evol = [json.loads(line)["Instruction"].strip()
            for line in (SOURCES / "evol_instruct" / "WizardLM_testset.jsonl").read_text().splitlines() if line.strip()]
    mixed = [x for pair in zip(ultrachat, evol) for x in pair]
    if n > len(mixed):
        raise SystemExit(f"--instructions {n}: only {len(mixed)} bundled instructions")
    return mixed[:n]


def build(n: int, seed: int = 42, mode: str = "text", max_tokens: int = 1024) -> tuple[list[dict], list[dict]]:
    """(instructions with their completions, request records) for n instructions."""
    rng = random.Random(seed)
    rows, requests = [], []
    for i, instruction in enumerate(load_instructions(n)):
        lengths = list(LENGTHS)
        rng.shuffle(lengths)
        gens = [f"{scripted_words(f'{i}-{k}', w)}." for k, w in enumerate(lengths)]
        rows.append({"instruction": instruction, "generations": gens})
        for aspect in ASPECTS:
            user = prompts.aspect_user_message(aspect, instruction, gens, mode)
            body = prompts.request_body("judge", user, aspect, len(gens), mode, temperature=0.0, top_p=0.6,
                                        max_tokens=max_tokens)
            requests.append(make_request(prompts.request_id(body), body))
        for gen in gens:
            user = prompts.critique_user_message(instruction, gen, SYSTEM, mode)
            body = prompts.request_body("judge", user, "critique", 1, mode, temperature=0.0, top_p=0.6,
                                        max_tokens=max_tokens)
            requests.append(make_request(prompts.request_id(body), body))
    return rows, requests


def write(folder: Path, rows: list[dict], requests: list[dict]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    inst, reqs = folder / "instructions.jsonl", folder / "requests.jsonl"
    inst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reqs.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return inst, reqs
