"""Turn the assembled dataset into preference pairs.

Inputs: rows of the "dataset" schema (see tasks.assemble.join), the score to rank by, a
seed, and what counts as TruthfulQA. Outputs: row dicts for three pair datasets plus a
`PairStats` of everything left out and why:
- H4 style (schema "preferences_h4"): chosen = the best-scored completion, rejected = a
  seeded random one of the others (ties can occur, as in HuggingFaceH4's release);
  a seeded train/test split by prompt. Messages follow TRL's conversational preference
  format: prompt = [user turn], chosen/rejected = [assistant turn].
- Argilla-clean style (schema "preferences_argilla"): rejected drawn only among
  completions scored strictly lower, so ties never occur; prompts with no such completion
  are dropped and counted.
- All pairs (schema "preferences_h4"): every (better, worse) pair with a strict score
  difference, split with the same test prompts as H4 so no test prompt leaks into train.

A completion enters the pairs only with a non-empty response and a score; the rest stay in
the full dataset with nulls. Each prompt's draws use their own RNG seeded from (seed,
prompt_id), so a prompt's pair does not change when other prompts come or go.

`binarize` takes dataset row dicts and returns row dicts. At full scale the publisher
instead builds `Prompt`s whose candidates point (`ref`) at rows of the completions table
and materializes the pairs as Arrow tables (tasks.assemble.frames); both go through the
same `choose`, so they pick the same pairs.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable

from tasks.assemble.config import ASPECT_SCORES

TRUTHFUL_QA = "truthful_qa"


@dataclass(frozen=True)
class Candidate:
    index: int
    model: str
    response: str
    score: float
    ref: int = -1  # row of this completion in the caller's table (columnar publishing)


@dataclass
class Prompt:
    source: str
    prompt_id: str
    prompt: str
    candidates: list[Candidate]


@dataclass
class PairStats:
    prompts: int = 0
    completions: int = 0
    dropped_truthful_qa_source: int = 0
    dropped_truthful_qa_question: int = 0
    completions_without_response: int = 0
    completions_without_score: int = 0
    prompts_with_fewer_than_two: int = 0
    h4_pairs: int = 0
    h4_ties: int = 0
    h4_train: int = 0
    h4_test: int = 0
    argilla_pairs: int = 0
    argilla_ties_dropped: int = 0
    all_pairs: int = 0
    all_pairs_train: int = 0
    all_pairs_test: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "notes"}


def normalize_question(text: str) -> str:
    """Equality key for the TruthfulQA check: case and whitespace do not count."""
    return " ".join(text.split()).casefold()


def completion_score(completion: dict, score: str) -> float | None:
    """The completion's score under the configured setting; None when it has none."""
    if score == "overall":
        return completion["overall_score"]
    if score == "fine_grained":
        return completion["fine-grained_score"]
    if score not in ASPECT_SCORES:
        raise ValueError(f"publish.score: unknown score {score!r}")
    rating = ((completion.get("annotations") or {}).get(score) or {}).get("Rating")
    try:
        return float(rating) if rating not in (None, "N/A") else None
    except ValueError:
        return None


def collect(rows: list[dict], score: str, stats: PairStats) -> list[Prompt]:
    """Scored candidates of every prompt; unusable completions are counted, not kept."""
    prompts = []
    for row in rows:
        cands = []
        for i, comp in enumerate(row["completions"]):
            stats.completions += 1
            value = completion_score(comp, score)
            if not (comp.get("response") or "").strip():
                stats.completions_without_response += 1
            elif value is None:
                stats.completions_without_score += 1
            else:
                cands.append(Candidate(i, comp["model"], comp["response"], float(value)))
        prompts.append(Prompt(row["source"], row["prompt_id"], row["instruction"], cands))
    stats.prompts = len(prompts)
    return prompts


def drop_truthful_qa(prompts: list[Prompt], sources: set[str], questions: set[str], stats: PairStats) -> list[Prompt]:
    """Remove TruthfulQA prompts: by source name, then by equality with a TruthfulQA question."""
    keys = {normalize_question(q) for q in questions}
    kept = []
    for p in prompts:
        if p.source in sources or p.source == TRUTHFUL_QA:
            stats.dropped_truthful_qa_source += 1
        elif normalize_question(p.prompt) in keys:
            stats.dropped_truthful_qa_question += 1
        else:
            kept.append(p)
    return kept


def _rng(seed: int, kind: str, prompt_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{kind}:{prompt_id}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def _best(cands: list[Candidate], rng: random.Random) -> Candidate:
    top = max(c.score for c in cands)
    return rng.choice([c for c in cands if c.score == top])


def user_turn(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def assistant_turn(response: str) -> list[dict]:
    return [{"role": "assistant", "content": response}]


def _h4_row(p: Prompt, chosen: Candidate, rejected: Candidate) -> dict:
    # TRL's explicit-prompt conversational format: the trainer renders prompt + chosen.
    return {
        "prompt": user_turn(p.prompt),
        "prompt_id": p.prompt_id,
        "chosen": assistant_turn(chosen.response),
        "rejected": assistant_turn(rejected.response),
        "messages": user_turn(p.prompt) + assistant_turn(chosen.response),
        "score_chosen": chosen.score,
        "score_rejected": rejected.score,
    }


def pick_test_prompts(prompt_ids: list[str], test_rows: int, seed: int) -> set[str]:
    """Seeded choice of the test prompts; independent of input order."""
    ordered = sorted(set(prompt_ids))
    random.Random(seed).shuffle(ordered)
    return set(ordered[:test_rows])


Pick = tuple[Prompt, Candidate, Candidate]  # prompt, chosen, rejected


def h4_pairs(prompts: list[Prompt], seed: int, stats: PairStats) -> list[Pick]:
    picks = []
    for p in prompts:
        if len(p.candidates) < 2:
            stats.prompts_with_fewer_than_two += 1
            continue
        rng = _rng(seed, "h4", p.prompt_id)
        chosen = _best(p.candidates, rng)
        rejected = rng.choice([c for c in p.candidates if c.index != chosen.index])
        stats.h4_ties += chosen.score == rejected.score
        picks.append((p, chosen, rejected))
    stats.h4_pairs = len(picks)
    return picks


def argilla_pairs(prompts: list[Prompt], seed: int, stats: PairStats) -> list[Pick]:
    picks = []
    for p in prompts:
        if len(p.candidates) < 2:
            continue
        rng = _rng(seed, "argilla", p.prompt_id)
        chosen = _best(p.candidates, rng)
        lower = [c for c in p.candidates if c.score < chosen.score]
        if not lower:
            stats.argilla_ties_dropped += 1
            continue
        picks.append((p, chosen, rng.choice(lower)))
    stats.argilla_pairs = len(picks)
    return picks


def all_pairs(prompts: list[Prompt], stats: PairStats) -> list[Pick]:
    picks = []
    for p in prompts:
        ranked = sorted(p.candidates, key=lambda c: (-c.score, c.index))
        for i, better in enumerate(ranked):
            for worse in ranked[i + 1:]:
                if better.score > worse.score:
                    picks.append((p, better, worse))
    stats.all_pairs = len(picks)
    return picks


@dataclass
class Choice:
    """The pairs of one run as picks, before they become rows or tables."""

    h4_train: list[Pick]
    h4_test: list[Pick]
    argilla: list[Pick]
    all_train: list[Pick]
    all_test: list[Pick]
    stats: PairStats


def choose(prompts: list[Prompt], seed: int, test_rows: Callable[[int], int], stats: PairStats,
           with_all_pairs: bool = True) -> Choice:
    """H4, Argilla-clean and all pairs of collected (and filtered) prompts, split by prompt."""
    h4 = h4_pairs(prompts, seed, stats)
    test_ids = pick_test_prompts([p.prompt_id for p, _, _ in h4], test_rows(len(h4)), seed)
    h4_train = [x for x in h4 if x[0].prompt_id not in test_ids]
    h4_test = [x for x in h4 if x[0].prompt_id in test_ids]
    stats.h4_train, stats.h4_test = len(h4_train), len(h4_test)
    argilla = argilla_pairs(prompts, seed, stats)
    every = all_pairs(prompts, stats) if with_all_pairs else []
    all_train = [x for x in every if x[0].prompt_id not in test_ids]
    all_test = [x for x in every if x[0].prompt_id in test_ids]
    stats.all_pairs_train, stats.all_pairs_test = len(all_train), len(all_test)
    return Choice(h4_train, h4_test, argilla, all_train, all_test, stats)


def _argilla_row(p: Prompt, chosen: Candidate, rejected: Candidate) -> dict:
    return {
        "source": p.source,
        "prompt": user_turn(p.prompt),
        "prompt_id": p.prompt_id,
        "chosen": assistant_turn(chosen.response),
        "chosen-rating": chosen.score,
        "chosen-model": chosen.model,
        "rejected": assistant_turn(rejected.response),
        "rejected-rating": rejected.score,
        "rejected-model": rejected.model,
    }


@dataclass
class Pairs:
    h4_train: list[dict]
    h4_test: list[dict]
    argilla: list[dict]
    all_train: list[dict]
    all_test: list[dict]
    stats: PairStats


def binarize(rows: list[dict], score: str, seed: int, test_rows: Callable[[int], int],
             truthful_sources: set[str] = frozenset(),
             truthful_questions: set[str] = frozenset(), drop_truthful: bool = True,
             with_all_pairs: bool = True) -> Pairs:
    """All pair datasets of one run. `test_rows(n)` gives the test prompts for n pair prompts."""
    stats = PairStats()
    prompts = collect(rows, score, stats)
    if drop_truthful:
        prompts = drop_truthful_qa(prompts, set(truthful_sources), set(truthful_questions), stats)
    c = choose(prompts, seed, test_rows, stats, with_all_pairs)
    h4 = [_h4_row(*x) for x in c.h4_train], [_h4_row(*x) for x in c.h4_test]
    every = [_h4_row(*x) for x in c.all_train], [_h4_row(*x) for x in c.all_test]
    return Pairs(*h4, [_argilla_row(*x) for x in c.argilla], *every, stats)
