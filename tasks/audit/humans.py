"""Human-labelled sets: load them, draw a seeded sample, turn rows into judge calls.

Inputs: a `HumanSet` (format helpsteer | pandalm | table, a path, a sample size) and a seed.
Outputs: `HumanItem`s and the `AuditCall`s that ask the judge about them (probe "human").

Scales. HelpSteer rates 0-4; the judge rates 1-5, so a HelpSteer rating h is compared as
h + 1 (the same five steps, shifted). HelpSteer helpfulness -> the judge's helpfulness,
HelpSteer correctness -> truthfulness (its "inclusion of all pertinent facts without
errors" is the nearest of the four aspects). A `table` file's pointwise label on
[lowest, highest] is mapped linearly onto 1-5. Pairwise sets (PandaLM, or a table with a
`response_b` column) carry a preference: 1 = the first response is better, 2 = the second,
0 = tie; the judge rates both responses (in a seeded order) and prefers the higher mean
of the pairwise aspects. PandaLM keeps each annotator's vote and gpt-3.5-turbo's published
verdict (bundled beside the test set) so the audit can put both next to the judge's.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from storage.keys import stable_hash
from tasks.audit.calls import AuditCall, Text
from tasks.audit.config import BUILTIN_PATHS, PANDALM_GPT35, HumanSet
from tasks.errors import InputError

HELPSTEER_ASPECTS = {"helpfulness": "helpfulness", "correctness": "truthfulness"}
_PAIR_LABELS = {"1": 1, "a": 1, "response_a": 1, "2": 2, "b": 2, "response_b": 2, "0": 0, "tie": 0}


@dataclass
class HumanItem:
    item_id: str
    prompt: str
    responses: list[str]  # one (pointwise) or two (pairwise)
    labels: dict[str, float]  # pointwise: aspect -> rating on 1-5
    preference: int | None = None  # pairwise: human majority 1 | 2 | 0
    votes: list[int] | None = None  # pairwise: each annotator's vote
    baseline: str | None = None  # pairwise: another judge's published verdict "1" | "2" | "0" | "garbage"

    @property
    def pairwise(self) -> bool:
        return len(self.responses) == 2


def _text(v) -> str:
    return "True" if v is True else "False" if v is False else "" if v is None else str(v)


def _majority(votes: list[int]) -> int:
    counts = {v: votes.count(v) for v in set(votes)}
    best = max(counts.values())
    tops = [v for v, c in counts.items() if c == best]
    return tops[0] if len(tops) == 1 else 0  # no majority: counted as a tie


def load_helpsteer(path: str) -> list[HumanItem]:
    items = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if line.strip():
                r = json.loads(line)
                labels = {a: float(r[k]) + 1.0 for k, a in HELPSTEER_ASPECTS.items()}
                items.append(HumanItem(f"row{i}", r["prompt"], [r["response"]], labels))
    return items


def load_pandalm(path: str) -> list[HumanItem]:
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    gpt = {}
    beside = Path(path).with_name(PANDALM_GPT35.name.replace("testset-v1.json", Path(path).name))
    if beside.exists():  # PandaLM's layout: gpt-3.5-turbo-<test set file> next to the test set
        gpt = {g["idx"]: {"1": "1", "2": "2", "Tie": "0"}.get(g["gpt_result"], "garbage")
               for g in json.loads(beside.read_text(encoding="utf-8"))}
    items = []
    for r in rows:
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        votes = [int(r[f"annotator{k}"]) for k in (1, 2, 3)]
        items.append(HumanItem(f"idx{r['idx']}", prompt, [_text(r["response1"]), _text(r["response2"])], {},
                               _majority(votes), votes, gpt.get(r["idx"])))
    return items


def _read_table(path: str) -> pd.DataFrame:
    low = path.lower()
    if low.endswith(".csv"):
        return pd.read_csv(path)
    if low.endswith((".jsonl", ".ndjson")):
        return pd.read_json(path, lines=True)
    if low.endswith(".json"):
        return pd.read_json(path)
    if low.endswith(".parquet"):
        return pd.read_parquet(path)
    raise InputError(f"{path}: expected .csv, .jsonl, .json or .parquet")


def load_table(hs: HumanSet) -> list[HumanItem]:
    df = _read_table(hs.path)
    missing = [c for c in ("prompt", "response", "label") if c not in df.columns]
    if missing:
        raise InputError(f"{hs.path}: columns {missing} missing (need prompt, response[, response_b], label)")
    lo, hi = hs.scale
    items = []
    for i, r in enumerate(df.to_dict(orient="records")):
        if "response_b" in df.columns:
            label = _PAIR_LABELS.get(str(r["label"]).strip().lower().removesuffix(".0"))
            if label is None:
                raise InputError(f"{hs.path}: row {i}: label {r['label']!r} is not 1 / 2 / 0 (a / b / tie)")
            items.append(HumanItem(f"row{i}", _text(r["prompt"]), [_text(r["response"]), _text(r["response_b"])],
                                   {}, label, [label]))
        else:
            value = float(r["label"])
            if not lo <= value <= hi:
                raise InputError(f"{hs.path}: row {i}: label {value} outside scale {list(hs.scale)}")
            items.append(HumanItem(f"row{i}", _text(r["prompt"]), [_text(r["response"])],
                                   {hs.aspect: 1.0 + 4.0 * (value - lo) / (hi - lo)}))
    return items


def load(hs: HumanSet) -> list[HumanItem]:
    if not Path(hs.path).exists():
        raise InputError(f"audit.human_sets ({hs.name}): file not found: {hs.path}")
    return {"helpsteer": load_helpsteer, "pandalm": load_pandalm}.get(hs.format, lambda _: load_table(hs))(hs.path)


def sample(items: list[HumanItem], n: int, seed: int) -> list[HumanItem]:
    picked = random.Random(seed).sample(range(len(items)), min(n, len(items)))
    return [items[i] for i in sorted(picked)]


def calls_for(hs: HumanSet, items: list[HumanItem], seed: int) -> list[AuditCall]:
    """Pointwise: one call per (row, labelled aspect). Pairwise: one call per (row, aspect),
    the two responses in a seeded order so neither side always sits first."""
    out = []
    for it in items:
        inst = {"instruction": it.prompt, "correct_answers": [], "incorrect_answers": []}
        if not it.pairwise:
            for aspect, label in it.labels.items():
                out.append(AuditCall("human", hs.name, it.item_id, aspect, 0, inst,
                                     [Text(0, "response", it.responses[0], label)]))
            continue
        flip = int(stable_hash(seed, hs.name, it.item_id), 16) % 2 == 1
        texts = [Text(0, "response_a", it.responses[0]), Text(1, "response_b", it.responses[1])]
        for aspect in hs.pairwise_aspects:
            out.append(AuditCall("human", hs.name, it.item_id, aspect, int(flip), inst,
                                 texts[::-1] if flip else texts, it.votes, it.baseline))
            out[-1].texts = [Text(t.completion_index, t.model, t.response, float(it.preference)) for t in out[-1].texts]
    return out


@lru_cache(maxsize=1)
def oracle_labels() -> tuple[dict, dict]:
    """The bundled human labels as the scripted `oracle` judge reads them (tests and demos of
    the audit): (pointwise: (aspect, text) -> rating on 1-5, pairwise: (text, text) -> the
    preferred text, None for a tie)."""
    point, pair = {}, {}
    for it in load(HumanSet(name="helpsteer", format="helpsteer", path=str(BUILTIN_PATHS["helpsteer"]))):
        for aspect, label in it.labels.items():
            point[(aspect, it.responses[0])] = int(label)
    for it in load(HumanSet(name="pandalm", format="pandalm", path=str(BUILTIN_PATHS["pandalm"]))):
        a, b = it.responses
        winner = {1: a, 2: b}.get(it.preference)
        pair[(a, b)] = pair[(b, a)] = winner
    return point, pair
